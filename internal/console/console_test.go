package console

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/migrate"
)

// fakeAgent answers GETs from canned values and records POSTs.
type fakeAgent struct {
	mu    sync.Mutex
	get   map[string]any
	post  map[string]any   // answers to POSTs by path
	errs  map[string]error // path -> error
	calls []call
}

type call struct {
	Path string
	Body string
}

func (f *fakeAgent) Do(_ context.Context, method, path string, in, out any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.errs[path]; err != nil {
		return err
	}
	var v any
	var ok bool
	if method == http.MethodPost {
		b, _ := json.Marshal(in)
		f.calls = append(f.calls, call{path, string(b)})
		v, ok = f.post[path]
	} else {
		v, ok = f.get[path]
	}
	if !ok {
		return fmt.Errorf("%s %s: %w", method, path, cluster.ErrNotFound)
	}
	b, _ := json.Marshal(v)
	return json.Unmarshal(b, out)
}

func (f *fakeAgent) posted() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

func newFake() *fakeAgent {
	return &fakeAgent{
		get: map[string]any{
			"/v1/status":     cluster.Status{Node: "h1", Leader: "h1", Term: "2"},
			"/v1/members":    []cluster.Member{{Name: "h1", Status: "alive", Role: "leader"}, {Name: "h2", Status: "alive", Role: "follower"}},
			"/v1/hosts":      []cluster.Host{},
			"/v1/migrations": []cluster.MigrationRecord{},
			"/v1/events":     []cluster.Event{},
			"/v1/snapshots":  []cluster.SnapshotRecord{},
			"/v1/ps":         cluster.PSResult{Containers: []cluster.PSEntry{{Host: "h1", Name: "w1", ID: "c1", State: "running"}}},
		},
		post: map[string]any{
			"/v1/drain":   migrate.DrainResult{Host: "h1", Moves: []migrate.DrainMove{{Name: "w1", To: "h2", Migration: "m1"}}},
			"/v1/migrate": cluster.MigrationRecord{ID: "m2", From: "h1", To: "h2"},
			"/v1/cordon":  cluster.Host{Name: "h2", Cordoned: true},
		},
		errs: map[string]error{},
	}
}

// startConsole runs a console on a loopback port until the test ends.
func startConsole(t *testing.T, f *fakeAgent, mod func(*Config)) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Agent, cfg.Listen, cfg.Poll = f, "127.0.0.1:0", 50*time.Millisecond
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return s
}

// base is the console's address without the key.
func base(s *Server) string {
	u, _ := url.Parse(s.URL())
	return "http://" + u.Host
}

// session returns a client that opened the printed URL (so it holds the
// session cookie) and the page's CSRF token.
func session(t *testing.T, s *Server) (*http.Client, string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Timeout: 5 * time.Second}
	resp, err := hc.Get(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.RawQuery != "" {
		t.Fatalf("opening %s: %s, landed on %s", s.URL(), resp.Status, resp.Request.URL)
	}
	m := regexp.MustCompile(`name="csrf-token" content="([0-9a-f]+)"`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF token in the page:\n%s", body)
	}
	return hc, string(m[1])
}

func do(t *testing.T, hc *http.Client, method, u string, hdr map[string]string, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, u, strings.NewReader(body))
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestSessionKey(t *testing.T) {
	s := startConsole(t, newFake(), nil)
	plain := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, path := range []string{"/", "/hosts", "/assets/app.js", "/api/stream"} {
		if code, _ := do(t, plain, http.MethodGet, base(s)+path, nil, ""); code != http.StatusUnauthorized {
			t.Errorf("GET %s without a session: %d, want 401", path, code)
		}
	}
	if code, _ := do(t, plain, http.MethodGet, base(s)+"/?key=0123", nil, ""); code != http.StatusUnauthorized {
		t.Errorf("a wrong key: %d, want 401", code)
	}
	req, _ := http.NewRequest(http.MethodGet, base(s)+"/migrations?key="+s.guard.key, nil)
	resp, err := plain.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	c := resp.Cookies()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/migrations" || len(c) != 1 ||
		!c[0].HttpOnly || c[0].SameSite != http.SameSiteStrictMode || c[0].Value != s.guard.key || !strings.HasPrefix(c[0].Name, "orchestrate_console_") {
		t.Fatalf("opening with the key: %s, Location %q, cookies %+v", resp.Status, resp.Header.Get("Location"), c)
	}
	// The key sends the browser back to one of the console's own pages only.
	for from, to := range map[string]string{"/events": "/events", "//evil.example/x": "/", "/assets/app.js": "/", "/nope": "/"} {
		req, _ := http.NewRequest(http.MethodGet, base(s)+from+"?key="+s.guard.key, nil)
		resp, err := plain.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || loc != to {
			t.Errorf("key on %s: %s to %q, want %q", from, resp.Status, loc, to)
		}
	}
	hc, _ := session(t, s)
	for _, path := range []string{"/", "/hosts", "/containers", "/migrations", "/events", "/downtime", "/snapshots", "/assets/app.js", "/assets/app.css", "/assets/favicon.svg"} {
		if code, body := do(t, hc, http.MethodGet, base(s)+path, nil, ""); code != http.StatusOK {
			t.Errorf("GET %s in a session: %d %s", path, code, body)
		}
	}
	if code, _ := do(t, hc, http.MethodGet, base(s)+"/assets/", nil, ""); code != http.StatusNotFound {
		t.Errorf("asset directory listing: %d, want 404", code)
	}
}

func TestHostHeader(t *testing.T) {
	s := startConsole(t, newFake(), func(c *Config) { c.Hosts = []string{"console.example"} })
	// The cookie goes by hand: a cookie jar files it under the Host header.
	hc := &http.Client{Timeout: 5 * time.Second}
	cookie := s.guard.cookie + "=" + s.guard.key
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(base(s), "http://"))
	for host, want := range map[string]int{
		"127.0.0.1:" + port:       http.StatusOK,
		"localhost:" + port:       http.StatusOK,
		"[::1]:" + port:           http.StatusOK,
		"console.example:" + port: http.StatusOK,
		"evil.example:" + port:    http.StatusForbidden, // a DNS-rebinding page
		"evil.example":            http.StatusForbidden,
		"127.0.0.1.evil.example":  http.StatusForbidden,
	} {
		if code, _ := do(t, hc, http.MethodGet, base(s)+"/hosts", map[string]string{"Host": host, "Cookie": cookie}, ""); code != want {
			t.Errorf("Host %q: %d, want %d", host, code, want)
		}
	}
	if s.guard.allowedHost("") || s.guard.allowedHost(":7950") {
		t.Error("an empty Host is allowed")
	}
}

func TestActionsRefuseCrossOrigin(t *testing.T) {
	f := newFake()
	s := startConsole(t, f, nil)
	hc, csrf := session(t, s)
	origin := base(s)
	good := map[string]string{"Content-Type": "application/json", csrfHeader: csrf, "Origin": origin, "Sec-Fetch-Site": "same-origin"}
	with := func(k, v string) map[string]string {
		h := map[string]string{}
		for a, b := range good {
			h[a] = b
		}
		if v == "" {
			delete(h, k)
		} else {
			h[k] = v
		}
		return h
	}
	body := `{"host":"h1"}`
	for _, tc := range []struct {
		name   string
		method string
		hdr    map[string]string
		body   string
		want   int
	}{
		{"cross-site fetch", http.MethodPost, with("Sec-Fetch-Site", "cross-site"), body, http.StatusForbidden},
		{"same-site, other origin", http.MethodPost, with("Sec-Fetch-Site", "same-site"), body, http.StatusForbidden},
		{"foreign Origin, no fetch metadata", http.MethodPost, with("Sec-Fetch-Site", "") /* then: */, body, 0},
		{"no CSRF token", http.MethodPost, with(csrfHeader, ""), body, http.StatusForbidden},
		{"wrong CSRF token", http.MethodPost, with(csrfHeader, strings.Repeat("0", 64)), body, http.StatusForbidden},
		{"a form post", http.MethodPost, with("Content-Type", "application/x-www-form-urlencoded"), "host=h1", http.StatusUnsupportedMediaType},
		{"text/plain", http.MethodPost, with("Content-Type", "text/plain"), body, http.StatusUnsupportedMediaType},
		{"GET", http.MethodGet, good, "", http.StatusMethodNotAllowed},
		{"PUT", http.MethodPut, good, body, http.StatusMethodNotAllowed},
		{"unknown field", http.MethodPost, good, `{"host":"h1","evil":1}`, http.StatusBadRequest},
		{"bad name", http.MethodPost, good, `{"host":"h1 --all"}`, http.StatusBadRequest},
	} {
		hdr := tc.hdr
		want := tc.want
		if want == 0 { // a foreign Origin alone is refused too
			hdr = with("Sec-Fetch-Site", "")
			hdr["Origin"] = "http://evil.example"
			want = http.StatusForbidden
		}
		code, resp := do(t, hc, tc.method, base(s)+"/api/drain", hdr, tc.body)
		if code != want {
			t.Errorf("%s: %d %s, want %d", tc.name, code, resp, want)
		}
	}
	if c := f.posted(); len(c) != 0 {
		t.Fatalf("refused requests reached the agent: %+v", c)
	}

	// The same request, same origin with the token, goes through.
	code, resp := do(t, hc, http.MethodPost, base(s)+"/api/drain", good, `{"host":"h1","deadline_seconds":120,"parallel":3}`)
	if code != http.StatusOK || !strings.Contains(resp, `"migration":"m1"`) {
		t.Fatalf("drain: %d %s", code, resp)
	}
	var req migrate.DrainRequest
	c := f.posted()
	if len(c) != 1 || c[0].Path != "/v1/drain" || json.Unmarshal([]byte(c[0].Body), &req) != nil ||
		req.Host != "h1" || req.Deadline != 2*time.Minute || req.Parallel != 3 || req.DryRun {
		t.Fatalf("the agent got %+v", c)
	}
	// A browser's same-origin request without fetch metadata (older
	// browsers send only Origin) is fine too.
	if code, resp := do(t, hc, http.MethodPost, base(s)+"/api/migrate", with("Sec-Fetch-Site", ""), `{"container":"w1","to":"h2"}`); code != http.StatusOK || !strings.Contains(resp, `"id":"m2"`) {
		t.Fatalf("migrate: %d %s", code, resp)
	}
	if code, resp := do(t, hc, http.MethodPost, base(s)+"/api/cordon", good, `{"host":"h2"}`); code != http.StatusOK {
		t.Fatalf("cordon: %d %s", code, resp)
	}
}

func TestActionErrors(t *testing.T) {
	f := newFake()
	f.errs["/v1/drain"] = fmt.Errorf("POST /v1/drain: %w", cluster.ErrCordoned)
	f.errs["/v1/migrate"] = fmt.Errorf("POST /v1/migrate: %w", cluster.ErrNoLeader)
	f.errs["/v1/uncordon"] = errors.New("connection refused")
	s := startConsole(t, f, nil)
	hc, csrf := session(t, s)
	hdr := map[string]string{"Content-Type": "application/json", csrfHeader: csrf, "Origin": base(s)}
	for _, tc := range []struct {
		path, body string
		want       int
	}{
		{"/api/drain", `{"host":"h1"}`, http.StatusConflict},
		{"/api/migrate", `{"container":"w1"}`, http.StatusServiceUnavailable},
		{"/api/uncordon", `{"host":"h1"}`, http.StatusBadGateway},
	} {
		code, body := do(t, hc, http.MethodPost, base(s)+tc.path, hdr, tc.body)
		var e apiError
		if code != tc.want || json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
			t.Errorf("%s: %d %s, want %d with an error", tc.path, code, body, tc.want)
		}
	}
}

// readEvent reads one server-sent event.
func readEvent(t *testing.T, r *bufio.Reader) (name, data string) {
	t.Helper()
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "" && name != "":
			return name, data
		case strings.HasPrefix(line, "event: "):
			name = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			data = line[len("data: "):]
		}
	}
}

func TestStream(t *testing.T) {
	f := newFake()
	f.errs["/v1/snapshots"] = errors.New("store unreachable")
	s := startConsole(t, f, nil)
	hc, _ := session(t, s)
	resp, err := hc.Get(base(s) + "/api/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	r := bufio.NewReader(resp.Body)
	var v View
	for v.Agent == "" {
		name, data := readEvent(t, r)
		if name == "view" {
			if err := json.Unmarshal([]byte(data), &v); err != nil {
				t.Fatal(err)
			}
		}
	}
	if v.Leader != "h1" || len(v.Hosts) != 2 || len(v.Containers) != 1 || len(v.Problems) != 1 || !strings.Contains(v.Problems[0], "store unreachable") {
		t.Fatalf("first view: %+v", v)
	}
	// Ticks keep coming; a change in the cluster arrives as a new view.
	name, _ := readEvent(t, r)
	if name != "tick" {
		t.Fatalf("after the view: %q, want a tick", name)
	}
	f.mu.Lock()
	f.get["/v1/migrations"] = []cluster.MigrationRecord{rec("m9", "w1", "c1", migrate.Checkpointing, 1, 0, migrate.Planned, migrate.Checkpointing)}
	f.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		name, data := readEvent(t, r)
		if name != "view" {
			continue
		}
		var v2 View
		if err := json.Unmarshal([]byte(data), &v2); err != nil {
			t.Fatal(err)
		}
		if len(v2.Migrations) == 1 && v2.Migrations[0].Phase == migrate.Checkpointing && v2.Containers[0].Moving == "m9" {
			return
		}
	}
	t.Fatal("the new migration never reached the stream")
}

func TestListenLoopbackOnly(t *testing.T) {
	for _, tc := range []struct {
		listen string
		remote bool
		ok     bool
	}{
		{"127.0.0.1:0", false, true},
		{"localhost:0", false, true},
		{"[::1]:0", false, true},
		{"0.0.0.0:0", false, false},
		{":0", false, false},
		{"192.0.2.1:7950", false, false},
		{"0.0.0.0:0", true, true},
		{"nonsense", false, false},
	} {
		cfg := DefaultConfig()
		cfg.Agent, cfg.Listen, cfg.AllowRemote = newFake(), tc.listen, tc.remote
		s, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := s.Listen()
		if ln != nil {
			ln.Close()
		}
		if tc.listen == "[::1]:0" && err != nil && !errors.Is(err, ErrNotLoopback) {
			continue // no IPv6 loopback on this machine
		}
		if (err == nil) != tc.ok {
			t.Errorf("Listen(%q, remote=%v): %v, want ok=%v", tc.listen, tc.remote, err, tc.ok)
		}
		if !tc.ok && tc.listen != "nonsense" && !errors.Is(err, ErrNotLoopback) {
			t.Errorf("Listen(%q): %v, want ErrNotLoopback", tc.listen, err)
		}
		if tc.ok && !strings.Contains(s.URL(), "/?key="+s.guard.key) {
			t.Errorf("URL %q lacks the key", s.URL())
		}
	}
}

func TestSecurityHeaders(t *testing.T) {
	s := startConsole(t, newFake(), nil)
	hc, _ := session(t, s)
	resp, err := hc.Get(base(s) + "/hosts")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for k, want := range map[string]string{"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, d := range []string{"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, d) {
			t.Errorf("CSP %q lacks %q", csp, d)
		}
	}
	if strings.Contains(csp, "unsafe") {
		t.Errorf("CSP allows unsafe sources: %q", csp)
	}
}
