package main

// Tests of `orchestrate ui` and of the monitoring docs against one real
// agent (engine none) on a loopback address: the console over https with
// the cluster secret never shows the agent's token, refuses cross-origin
// actions, and every metric docs/grafana-dashboard.json and
// docs/prometheus-rules.yaml name is in the agent's /metrics.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/edgemigrate/orchestrate/cluster"
)

func TestUIAndMonitoringAgainstAgent(t *testing.T) {
	tc := newTestCluster(t, 41, 1, 1)
	tc.startAll()
	tc.formed(1, 30*time.Second)
	a := tc.agents[0]
	t.Run("docs name only metrics the agent exports", func(t *testing.T) { testMonitoringDocs(t, a) })
	t.Run("console never shows the token and refuses other origins", func(t *testing.T) { testConsole(t, tc, a) })
}

// repoFile reads a file of the repository (tests run in cmd/orchestrate).
func repoFile(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var metricName = regexp.MustCompile(`\b(orchestrate_[a-z_]+)\b`)

func testMonitoringDocs(t *testing.T, a *agent) {
	// The agent's /metrics, over its socket.
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", a.sock)
	}}}
	resp, err := hc.Get("http://agent/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	exported := map[string]bool{}
	for _, l := range strings.Split(string(body), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		exported[strings.FieldsFunc(l, func(r rune) bool { return r == '{' || r == ' ' })[0]] = true
	}

	// The dashboard: well formed, every panel on the datasource variable.
	var dash struct {
		UID        string `json:"uid"`
		Title      string `json:"title"`
		Schema     int    `json:"schemaVersion"`
		Templating struct {
			List []struct{ Name, Type, Query string } `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int    `json:"id"`
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource *struct{ Type, UID string }
			GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
			Targets    []struct {
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(repoFile(t, "docs/grafana-dashboard.json"), &dash); err != nil {
		t.Fatalf("docs/grafana-dashboard.json: %v", err)
	}
	if dash.UID == "" || dash.Title == "" || dash.Schema < 36 || len(dash.Templating.List) != 1 ||
		dash.Templating.List[0].Type != "datasource" || dash.Templating.List[0].Query != "prometheus" {
		t.Errorf("dashboard header: uid %q title %q schema %d templating %+v", dash.UID, dash.Title, dash.Schema, dash.Templating.List)
	}
	dsRef := "${" + dash.Templating.List[0].Name + "}"
	named := map[string][]string{} // metric -> where
	ids := map[int]bool{}
	var exprs []string
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 || p.GridPos.H <= 0 {
			t.Errorf("panel %q: gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != dsRef || len(p.Targets) == 0 {
			t.Errorf("panel %q: datasource %+v, %d targets", p.Title, p.Datasource, len(p.Targets))
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.Expr == "" || refs[tg.RefID] {
				t.Errorf("panel %q: empty expr or repeated refId %q", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			exprs = append(exprs, tg.Expr)
			for _, m := range metricName.FindAllString(tg.Expr, -1) {
				named[m] = append(named[m], "dashboard panel "+p.Title)
			}
		}
	}
	// What the issue asks the dashboard to cover.
	all := strings.Join(exprs, "\n")
	for _, want := range []string{"orchestrate_migrations_total", "orchestrate_migration_downtime_seconds_bucket", "orchestrate_migration_bytes_total",
		"orchestrate_members", "orchestrate_policy_triggers_total"} {
		if !strings.Contains(all, want) {
			t.Errorf("the dashboard does not show %s", want)
		}
	}

	// The rules: well formed, each alert labelled and explained.
	var rules struct {
		Groups []struct {
			Name  string
			Rules []struct {
				Alert       string
				Expr        string
				For         string
				Labels      map[string]string
				Annotations map[string]string
			}
		}
	}
	if err := yaml.Unmarshal(repoFile(t, "docs/prometheus-rules.yaml"), &rules); err != nil {
		t.Fatalf("docs/prometheus-rules.yaml: %v", err)
	}
	alerts := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts[r.Alert] = true
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("rule %+v lacks an alert name, expr, severity, summary or description", r)
			}
			for _, m := range metricName.FindAllString(r.Expr, -1) {
				named[m] = append(named[m], "alert "+r.Alert)
			}
		}
	}
	for _, want := range []string{"OrchestrateMigrationRolledBack", "OrchestrateMemberDead", "OrchestrateNoLeader", "OrchestrateEvacuationDeadlineMissed"} {
		if !alerts[want] {
			t.Errorf("no alert %s", want)
		}
	}

	// Every metric named exists in the agent's /metrics.
	var names []string
	for m := range named {
		names = append(names, m)
	}
	sort.Strings(names)
	for _, m := range names {
		if !exported[m] {
			t.Errorf("%s (named by %s) is not in the agent's /metrics", m, strings.Join(named[m], ", "))
		}
	}
	t.Logf("%d metrics named by the dashboard and the rules: %s", len(names), strings.Join(names, " "))

	// promtool checks the rules' syntax and runs their unit tests.
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("ORCHESTRATE_REQUIRE_HOSTS") == "1" {
			t.Fatal("promtool is not installed (scripts/install-test-tools.sh)")
		}
		t.Skip("promtool is not installed (scripts/install-test-tools.sh)")
	}
	for _, args := range [][]string{{"check", "rules", "prometheus-rules.yaml"}, {"test", "rules", "prometheus-rules.test.yaml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = filepath.Join("..", "..", "docs")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// uiProcess is a running `orchestrate ui`.
type uiProcess struct {
	cmd    *exec.Cmd
	url    string
	mu     sync.Mutex
	output bytes.Buffer // stdout and stderr
	done   chan struct{}
}

func (u *uiProcess) Write(p []byte) (int, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.output.Write(p)
}

func (u *uiProcess) text() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.output.String()
}

// startUI runs `orchestrate ui` and waits for the URL it prints.
func startUI(t *testing.T, args ...string) *uiProcess {
	t.Helper()
	u := &uiProcess{cmd: exec.Command(binary, append([]string{"ui"}, args...)...), done: make(chan struct{})}
	u.cmd.Stdout, u.cmd.Stderr = u, u
	if err := u.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = u.cmd.Wait(); close(u.done) }()
	t.Cleanup(func() {
		_ = u.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-u.done:
		case <-time.After(10 * time.Second):
			_ = u.cmd.Process.Kill()
			<-u.done
		}
	})
	re := regexp.MustCompile(`http://\S+/\?key=[0-9a-f]+`)
	waitFor(t, 15*time.Second, "the console's URL", func() error {
		select {
		case <-u.done:
			t.Fatalf("orchestrate ui exited: %s", u.text())
		default:
		}
		if u.url = re.FindString(u.text()); u.url == "" {
			return fmt.Errorf("output so far: %q", u.text())
		}
		return nil
	})
	return u
}

func testConsole(t *testing.T, tc *testCluster, a *agent) {
	secret, err := cluster.LoadSecret(tc.secret)
	if err != nil {
		t.Fatal(err)
	}
	token := cluster.APIToken(secret)
	agentURL := "https://" + a.ip + ":17948"

	// Refusals before anything listens: a public address, a wrong secret.
	if _, errOut, code := runCLI(t, nil, "ui", "--agent", agentURL, "--secret-file", tc.secret, "--listen", "0.0.0.0:0"); code != 2 || !strings.Contains(errOut, "not a loopback address") {
		t.Errorf("ui on 0.0.0.0: exit %d, %q; want 2 naming loopback", code, errOut)
	}
	wrong := filepath.Join(t.TempDir(), "wrong.key")
	if _, errOut, code := runCLI(t, nil, "keygen", wrong); code != 0 {
		t.Fatal(errOut)
	}
	if _, errOut, code := runCLI(t, nil, "ui", "--agent", agentURL, "--secret-file", wrong, "--listen", "127.0.0.1:0"); code != 1 || strings.Contains(errOut, "http://") {
		t.Errorf("ui with the wrong secret: exit %d, %q; want 1 before serving", code, errOut)
	}

	u := startUI(t, "--agent", agentURL, "--secret-file", tc.secret, "--listen", "127.0.0.1:0", "--poll", "200ms")
	pu, _ := url.Parse(u.url)
	base := "http://" + pu.Host
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Timeout: 10 * time.Second}

	var seen []string // every body the console sent
	get := func(path string) string {
		t.Helper()
		resp, err := hc.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s %s", path, resp.Status, b)
		}
		seen = append(seen, fmt.Sprintf("GET %s: %s %s", path, resp.Header, b))
		return string(b)
	}
	resp, err := hc.Get(u.url)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	seen = append(seen, string(page))
	csrf := regexp.MustCompile(`name="csrf-token" content="([0-9a-f]+)"`).FindSubmatch(page)
	if resp.StatusCode != http.StatusOK || csrf == nil {
		t.Fatalf("opening %s: %s\n%s", u.url, resp.Status, page)
	}
	for _, p := range []string{"/hosts", "/containers", "/migrations", "/events", "/downtime", "/snapshots", "/assets/app.js", "/assets/app.css", "/assets/favicon.svg"} {
		get(p)
	}

	// The live feed carries the agent's view.
	view := readView(t, hc, base, func(v map[string]any) bool {
		hosts, _ := v["hosts"].([]any)
		return v["leader"] == "a1" && len(hosts) == 1
	})
	seen = append(seen, view)

	post := func(path, origin, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Orchestrate-CSRF", string(csrf[1]))
		req.Header.Set("Origin", origin)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		seen = append(seen, fmt.Sprintf("POST %s: %s %s", path, resp.Header, b))
		return resp.StatusCode, string(b)
	}
	cordoned := func() bool {
		ms, err := a.members()
		if err != nil {
			t.Fatal(err)
		}
		return ms["a1"].Cordoned
	}
	// Another origin, even with the session cookie and the CSRF token, is
	// refused, and the agent is not touched.
	if code, body := post("/api/cordon", "http://evil.example", `{"host":"a1"}`); code != http.StatusForbidden {
		t.Fatalf("cross-origin cordon: %d %s", code, body)
	}
	if cordoned() {
		t.Fatal("a cross-origin request cordoned the host")
	}
	// The same request from the console's own origin goes through.
	if code, body := post("/api/cordon", base, `{"host":"a1"}`); code != http.StatusOK {
		t.Fatalf("cordon: %d %s", code, body)
	}
	waitFor(t, 5*time.Second, "a1 cordoned", func() error {
		if !cordoned() {
			return fmt.Errorf("not cordoned")
		}
		return nil
	})
	if code, body := post("/api/uncordon", base, `{"host":"a1"}`); code != http.StatusOK {
		t.Fatalf("uncordon: %d %s", code, body)
	}
	// The agent's refusals come back as errors, its results as they are.
	if code, body := post("/api/drain", base, `{"host":"a1","dry_run":true}`); code != http.StatusOK || !strings.Contains(body, `"dry_run":true`) {
		t.Errorf("drain dry run: %d %s", code, body)
	}
	if code, body := post("/api/migrate", base, `{"container":"nothing-like-it"}`); code < 400 || !strings.Contains(body, "error") {
		t.Errorf("migrate of nothing: %d %s", code, body)
	}
	if code, body := post("/api/cordon", base, `{"host":"no-such-host"}`); code != http.StatusNotFound {
		t.Errorf("cordon of an unknown host: %d %s", code, body)
	}

	// Nothing the console sent, nor printed, carries the token or the secret.
	seen = append(seen, u.text())
	for _, s := range seen {
		for name, v := range map[string]string{"the API token": token, "the cluster secret": string(secret)} {
			if strings.Contains(s, v) {
				t.Fatalf("%s appears in:\n%.2000s", name, s)
			}
		}
	}
	t.Logf("checked %d responses and the console's output for the token", len(seen))
}

// readView reads the console's event stream until a view satisfies ok, and
// returns that event's data.
func readView(t *testing.T, hc *http.Client, base string, ok func(map[string]any) bool) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/stream", nil)
	c := *hc
	c.Timeout = 0
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	event := ""
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended before the view: %v", err)
		}
		line = strings.TrimSpace(line)
		if name, found := strings.CutPrefix(line, "event: "); found {
			event = name
			continue
		}
		if data, found := strings.CutPrefix(line, "data: "); found && event == "view" {
			var v map[string]any
			if err := json.Unmarshal([]byte(data), &v); err != nil {
				t.Fatal(err)
			}
			if ok(v) {
				return data
			}
		}
	}
}
