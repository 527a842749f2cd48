package main

// Multi-process tests: real agents, each a subprocess of the binary built in
// TestMain, on loopback addresses 127.77.x.y with temp data dirs. Agents run
// with engine.type none (control plane only). Skipped with -short.

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "orchestrate-test-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "orchestrate")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// waitFor polls cond until it returns nil or timeout passes; it returns how
// long that took.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		<-tick.C
	}
}

// consistently checks that cond holds for the whole window.
func consistently(t *testing.T, window time.Duration, what string, cond func() error) {
	t.Helper()
	end := time.Now().Add(window)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(end) {
		if err := cond(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		<-tick.C
	}
}

type agent struct {
	t       *testing.T
	name    string
	ip      string
	dir     string
	cfgPath string
	sock    string
	logPath string
	env     []string // extra environment, e.g. ORCHESTRATE_ overrides
	cmd     *exec.Cmd
	exited  chan struct{}
	err     error
}

type testCluster struct {
	t      *testing.T
	dir    string
	secret string
	agents []*agent
}

// newTestCluster writes configs for n agents on 127.77.<net>.1..n, all
// joining the first, and starts none.
func newTestCluster(t *testing.T, net, n, expect int) *testCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	tc := &testCluster{t: t, dir: t.TempDir()}
	tc.secret = filepath.Join(tc.dir, "cluster.key")
	if out, err := exec.Command(binary, "keygen", tc.secret).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v: %s", err, out)
	}
	for i := 1; i <= n; i++ {
		tc.agents = append(tc.agents, tc.addAgent(fmt.Sprintf("a%d", i), fmt.Sprintf("127.77.%d.%d", net, i),
			fmt.Sprintf("127.77.%d.1:17946", net), expect, tc.secret))
	}
	t.Cleanup(func() {
		for _, a := range tc.agents {
			a.stop(syscall.SIGKILL)
		}
		if t.Failed() {
			for _, a := range tc.agents {
				a.dumpLog()
			}
		}
	})
	return tc
}

func (tc *testCluster) addAgent(name, ip, seed string, expect int, secret string) *agent {
	a := &agent{t: tc.t, name: name, ip: ip, dir: filepath.Join(tc.dir, name)}
	if err := os.MkdirAll(a.dir, 0o700); err != nil {
		tc.t.Fatal(err)
	}
	a.cfgPath, a.sock, a.logPath = filepath.Join(a.dir, "orchestrate.yaml"), filepath.Join(a.dir, "agent.sock"), filepath.Join(a.dir, "agent.log")
	cfg := fmt.Sprintf(`node:
  name: %s
  data_dir: %s
  labels: {zone: z%s}
cluster:
  bind: %s:17946
  join: [%q]
  bootstrap_expect: %d
  secret_file: %s
api:
  bind: %s:17948
  socket: %s
engine:
  type: none
`, name, filepath.Join(a.dir, "data"), name, ip, seed, expect, secret, ip, a.sock)
	if err := os.WriteFile(a.cfgPath, []byte(cfg), 0o600); err != nil {
		tc.t.Fatal(err)
	}
	return a
}

func (tc *testCluster) startAll() {
	for _, a := range tc.agents {
		a.start()
	}
}

func (a *agent) start() {
	a.t.Helper()
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		a.t.Fatal(err)
	}
	a.cmd = exec.Command(binary, "agent", "--config", a.cfgPath)
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	a.cmd.Env = append(os.Environ(), a.env...)
	if err := a.cmd.Start(); err != nil {
		logf.Close()
		a.t.Fatal(err)
	}
	a.exited = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		a.err = cmd.Wait()
		logf.Close()
		close(done)
	}(a.cmd, a.exited)
}

func (a *agent) running() bool {
	if a.exited == nil {
		return false
	}
	select {
	case <-a.exited:
		return false
	default:
		return true
	}
}

// stop signals the agent and waits for it to exit (SIGKILL after 10 s).
func (a *agent) stop(sig syscall.Signal) {
	if !a.running() {
		return
	}
	_ = a.cmd.Process.Signal(sig)
	select {
	case <-a.exited:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.exited
	}
}

func (a *agent) dumpLog() {
	b, _ := os.ReadFile(a.logPath)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	a.t.Logf("--- %s log (tail) ---\n%s", a.name, strings.Join(lines, "\n"))
}

func (a *agent) client() *cluster.Client {
	c, err := cluster.NewClient(a.sock, nil)
	if err != nil {
		a.t.Fatal(err)
	}
	return c
}

func ctx2s() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 2*time.Second)
}

func (a *agent) members() (map[string]cluster.Member, error) {
	ctx, cancel := ctx2s()
	defer cancel()
	ms, err := a.client().Members(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]cluster.Member{}
	for _, m := range ms {
		out[m.Name] = m
	}
	return out, nil
}

func (a *agent) events() ([]cluster.Event, error) {
	ctx, cancel := ctx2s()
	defer cancel()
	var evs []cluster.Event
	return evs, a.client().Do(ctx, http.MethodGet, "/v1/events", nil, &evs)
}

func (a *agent) hasEvent(id string) error {
	evs, err := a.events()
	if err != nil {
		return err
	}
	for _, e := range evs {
		if e.ID == id {
			return nil
		}
	}
	return fmt.Errorf("%s has no event %s (has %d)", a.name, id, len(evs))
}

func (a *agent) appendEvent(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return a.client().Apply(ctx, cluster.AppendEventType, cluster.AppendEventRequest{
		Event: cluster.Event{ID: id, Kind: "test", Host: a.name, At: time.Now().UTC()},
	})
}

// agreedLeader returns the leader every running agent reports, or an error.
func (tc *testCluster) agreedLeader() (string, error) {
	leader := ""
	for _, a := range tc.agents {
		if !a.running() {
			continue
		}
		ctx, cancel := ctx2s()
		st, err := a.client().Status(ctx)
		cancel()
		if err != nil {
			return "", err
		}
		if st.Leader == "" {
			return "", fmt.Errorf("%s knows no leader", a.name)
		}
		if leader != "" && st.Leader != leader {
			return "", fmt.Errorf("%s says %s, another says %s", a.name, st.Leader, leader)
		}
		leader = st.Leader
	}
	return leader, nil
}

func (tc *testCluster) agent(name string) *agent {
	for _, a := range tc.agents {
		if a.name == name {
			return a
		}
	}
	tc.t.Fatalf("no agent %s", name)
	return nil
}

// allSee checks that every running agent sees name with the status.
func (tc *testCluster) allSee(name, status string) error {
	for _, a := range tc.agents {
		if !a.running() || a.name == name {
			continue
		}
		ms, err := a.members()
		if err != nil {
			return err
		}
		if ms[name].Status != status {
			return fmt.Errorf("%s sees %s as %q", a.name, name, ms[name].Status)
		}
	}
	return nil
}

// formed waits until every running agent sees n alive members and they all
// agree on a leader.
func (tc *testCluster) formed(n int, timeout time.Duration) (string, time.Duration) {
	var leader string
	d := waitFor(tc.t, timeout, "the cluster to form", func() error {
		for _, a := range tc.agents {
			if !a.running() {
				continue
			}
			ms, err := a.members()
			if err != nil {
				return err
			}
			alive := 0
			for _, m := range ms {
				if m.Status == cluster.StatusAlive && m.Role != cluster.RoleNone {
					alive++
				}
			}
			if alive != n {
				return fmt.Errorf("%s sees %d alive raft members", a.name, alive)
			}
		}
		var err error
		leader, err = tc.agreedLeader()
		return err
	})
	return leader, d
}

func vmRSS(pid int) string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

func runCLI(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func TestThreeAgentsFailoverAndRejoin(t *testing.T) {
	tc := newTestCluster(t, 3, 3, 3)
	tc.startAll()
	leader, took := tc.formed(3, 20*time.Second)
	t.Logf("3 agents formed a cluster with leader %s in %s", leader, took)
	if fi, err := os.Stat(tc.agents[0].sock); err != nil {
		t.Errorf("API socket: %v", err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Errorf("API socket mode: %v", fi.Mode())
	}

	// members -o json: the CLI contract.
	out, errOut, code := runCLI(t, nil, "members", "-o", "json", "--agent", tc.agents[1].sock)
	if code != 0 {
		t.Fatalf("members exit %d: %s", code, errOut)
	}
	var raw []map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil || len(raw) != 3 {
		t.Fatalf("members -o json: %v: %s", err, out)
	}
	roles := map[string]int{}
	for _, m := range raw {
		for _, k := range []string{"name", "addr", "status", "role", "cordoned", "containers"} {
			if _, ok := m[k]; !ok {
				t.Errorf("members -o json lacks %q: %v", k, m)
			}
		}
		roles[m["role"].(string)]++
	}
	if roles[cluster.RoleLeader] != 1 || roles[cluster.RoleVoter] != 2 {
		t.Errorf("roles = %v", roles)
	}
	// ps fans out; control-plane-only agents have no containers.
	out, errOut, code = runCLI(t, nil, "ps", "-o", "json", "--agent", tc.agents[0].sock)
	if code != 0 || strings.TrimSpace(out) != "[]" || errOut != "" {
		t.Fatalf("ps -o json: exit %d, %q, %q", code, out, errOut)
	}
	// Remote CLI over https with the secret (env), table output.
	out, errOut, code = runCLI(t, []string{"ORCHESTRATE_AGENT=https://" + tc.agents[2].ip + ":17948", "ORCHESTRATE_SECRET_FILE=" + tc.secret}, "members")
	if code != 0 || !strings.Contains(out, "leader") || strings.Count(out, "alive") != 3 {
		t.Fatalf("members over https: exit %d: %s %s", code, out, errOut)
	}

	// Forwarding: a write sent to a follower is applied by the leader.
	var follower *agent
	for _, a := range tc.agents {
		if a.name != leader {
			follower = a
		}
	}
	if err := follower.appendEvent("before-failover"); err != nil {
		t.Fatalf("write through follower %s: %v", follower.name, err)
	}
	waitFor(t, 5*time.Second, "the leader to hold the forwarded write", func() error { return tc.agent(leader).hasEvent("before-failover") })

	// Kill the leader: a new leader within 5 s, with the state intact.
	old := tc.agent(leader)
	old.stop(syscall.SIGKILL)
	killed := time.Now()
	var newLeader string
	waitFor(t, 5*time.Second, "a new leader", func() error {
		l, err := tc.agreedLeader()
		if err == nil && l == leader {
			err = fmt.Errorf("still reports the dead leader %s", l)
		}
		newLeader = l
		return err
	})
	failover := time.Since(killed)
	t.Logf("MEASURE leader failover: %s -> %s in %s", leader, newLeader, failover)
	// The write was committed under the old leader; the new one holds it
	// in its log and applies it once it commits an entry of its own term
	// (raft's rule), a moment after the election.
	waitFor(t, 5*time.Second, "the new leader to hold the write committed before the failover (state lost?)",
		func() error { return tc.agent(newLeader).hasEvent("before-failover") })
	if err := follower.appendEvent("after-failover"); err != nil {
		t.Fatalf("write after failover: %v", err)
	}
	waitFor(t, 10*time.Second, "the killed leader marked dead", func() error { return tc.allSee(old.name, cluster.StatusDead) })
	t.Logf("MEASURE dead detection (old leader): %s after SIGKILL", time.Since(killed))

	// Restart it with the same data dir: it rejoins with its state.
	old.start()
	waitFor(t, 15*time.Second, "the old leader to rejoin", func() error {
		if err := tc.allSee(old.name, cluster.StatusAlive); err != nil {
			return err
		}
		return old.hasEvent("after-failover")
	})
	if err := old.hasEvent("before-failover"); err != nil {
		t.Fatal(err)
	}

	// Kill a non-leader: every agent marks it dead within 10 s.
	leader, _ = tc.formed(3, 15*time.Second)
	var victim *agent
	for _, a := range tc.agents {
		if a.name != leader {
			victim = a
		}
	}
	victim.stop(syscall.SIGKILL)
	killed = time.Now()
	var suspected time.Duration
	waitFor(t, 10*time.Second, "the killed follower marked dead everywhere", func() error {
		if suspected == 0 && tc.allSee(victim.name, cluster.StatusSuspect) == nil {
			suspected = time.Since(killed)
		}
		return tc.allSee(victim.name, cluster.StatusDead)
	})
	t.Logf("MEASURE dead detection (follower %s): %s after SIGKILL (all saw suspect after %s; 0 = not observed)", victim.name, time.Since(killed), suspected)
	if err := tc.agent(leader).appendEvent("while-dead"); err != nil {
		t.Fatal(err)
	}
	victim.start()
	waitFor(t, 15*time.Second, "the follower to rejoin with its state", func() error {
		if err := tc.allSee(victim.name, cluster.StatusAlive); err != nil {
			return err
		}
		return victim.hasEvent("while-dead")
	})
	ms, err := victim.members()
	if err != nil {
		t.Fatal(err)
	}
	if r := ms[victim.name].Role; r != cluster.RoleVoter && r != cluster.RoleLeader {
		t.Errorf("rejoined %s has role %s", victim.name, r)
	}

	for _, a := range tc.agents {
		t.Logf("MEASURE idle agent RSS %s: %s", a.name, vmRSS(a.cmd.Process.Pid))
	}

	// A graceful stop is seen as "left".
	victim.stop(syscall.SIGTERM)
	if victim.err != nil {
		t.Errorf("agent exit after SIGTERM: %v", victim.err)
	}
	waitFor(t, 5*time.Second, "the stopped agent seen as left", func() error { return tc.allSee(victim.name, cluster.StatusLeft) })
}

func TestFiveAgentsOneLeader(t *testing.T) {
	tc := newTestCluster(t, 5, 5, 5)
	for _, a := range tc.agents { // env overrides the file
		a.env = []string{"ORCHESTRATE_CLUSTER_DEAD_REMOVE_AFTER=2s"}
	}
	tc.startAll()
	leader, took := tc.formed(5, 25*time.Second)
	t.Logf("5 agents formed a cluster with leader %s in %s", leader, took)
	ms, err := tc.agents[4].members()
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]int{}
	for _, m := range ms {
		roles[m.Role]++
	}
	if roles[cluster.RoleLeader] != 1 || roles[cluster.RoleVoter] != 2 || roles[cluster.RoleNonvoter] != 2 {
		t.Errorf("roles = %v, want 1 leader, 2 voters, 2 non-voters (max_voters 3)", roles)
	}
	ctx, cancel := ctx2s()
	defer cancel()
	res, err := tc.agents[2].client().PS(ctx)
	if err != nil || len(res.Errors) != 0 || len(res.Containers) != 0 {
		t.Errorf("ps fan-out: %+v, %v", res, err)
	}

	// A voter that stays dead for dead_remove_after leaves raft and the
	// member list, and a non-voter is promoted in its place.
	var victim *agent
	for _, m := range ms {
		if m.Role == cluster.RoleVoter {
			victim = tc.agent(m.Name)
			break
		}
	}
	victim.stop(syscall.SIGKILL)
	took = waitFor(t, 15*time.Second, "the dead voter removed and a non-voter promoted", func() error {
		ms, err := tc.agent(leader).members()
		if err != nil {
			return err
		}
		if _, ok := ms[victim.name]; ok {
			return fmt.Errorf("%s still listed as %s/%s", victim.name, ms[victim.name].Status, ms[victim.name].Role)
		}
		roles := map[string]int{}
		for _, m := range ms {
			roles[m.Role]++
		}
		if roles[cluster.RoleLeader] != 1 || roles[cluster.RoleVoter] != 2 || roles[cluster.RoleNonvoter] != 1 {
			return fmt.Errorf("roles %v", roles)
		}
		return nil
	})
	t.Logf("dead voter %s removed and replaced %s after SIGKILL", victim.name, took)
}

func TestWrongSecret(t *testing.T) {
	tc := newTestCluster(t, 7, 2, 2)
	otherSecret := filepath.Join(tc.dir, "other.key")
	if _, errOut, code := runCLI(t, nil, "keygen", otherSecret); code != 0 {
		t.Fatal(errOut)
	}
	intruder := tc.addAgent("intruder", "127.77.7.9", "127.77.7.1:17946", 1, otherSecret)
	tc.agents = append(tc.agents, intruder)
	tc.agents[0].start()
	tc.agents[1].start()
	tc.formed(2, 20*time.Second)
	intruder.start()
	consistently(t, 3*time.Second, "the intruder must not join", func() error {
		for _, a := range tc.agents[:2] {
			ms, err := a.members()
			if err != nil {
				return err
			}
			if _, ok := ms["intruder"]; ok || len(ms) != 2 {
				return fmt.Errorf("%s sees %d members", a.name, len(ms))
			}
		}
		ms, err := intruder.members()
		if err != nil {
			return nil // still starting
		}
		if len(ms) > 1 {
			return fmt.Errorf("intruder sees %d members", len(ms))
		}
		return nil
	})

	// API: a client with the wrong secret cannot verify the agent...
	wrong, err := cluster.NewClient("https://127.77.7.1:17948", []byte("wrong-secret-wrong-secret"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := ctx2s()
	defer cancel()
	if _, err := wrong.Members(ctx); err == nil {
		t.Fatal("members with the wrong secret succeeded")
	}
	// ...and even skipping verification, a wrong or missing token gets 401
	// and nothing else.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for name, token := range map[string]string{"none": "", "wrong": cluster.APIToken([]byte("wrong-secret-wrong-secret"))} {
		for _, path := range []string{"/v1/members", "/v1/ps", "/v1/events", "/v1/nonexistent"} {
			req, _ := http.NewRequest(http.MethodGet, "https://127.77.7.1:17948"+path, nil)
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized || strings.Contains(string(body), "a1") {
				t.Errorf("token %s %s: %d %s", name, path, resp.StatusCode, body)
			}
		}
	}
	req, _ := http.NewRequest(http.MethodPost, "https://127.77.7.1:17948/v1/apply", strings.NewReader("\x06{}"))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unauthenticated apply: %d", resp.StatusCode)
	}
	// The right secret works over the same path.
	right, err := os.ReadFile(tc.secret)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := cluster.NewClient("https://127.77.7.1:17948", []byte(strings.TrimSpace(string(right))))
	if err != nil {
		t.Fatal(err)
	}
	if ms, err := rc.Members(ctx); err != nil || len(ms) != 2 {
		t.Fatalf("members with the right secret: %d, %v", len(ms), err)
	}
}

func TestBadConfigExitsTwo(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	noSecret := write("nosecret.yaml", "node: {name: x, data_dir: "+dir+"/d}\ncluster: {bind: 127.77.9.1:17946}\nengine: {type: none}\n")
	missing := write("missing.yaml", "node: {name: x, data_dir: "+dir+"/d}\ncluster: {bind: 127.77.9.1:17946, secret_file: "+dir+"/nope.key}\nengine: {type: none}\n")
	typo := write("typo.yaml", "node: {name: x}\ncluster: {bootstrap_expct: 3, secret_file: /k}\n")
	badDur := write("baddur.yaml", "node: {name: x}\ncluster: {bind: 127.77.9.1:17946, probe_interval: fast, secret_file: /k}\n")
	tests := []struct {
		name string
		args []string
		env  []string
		code int
		want string
	}{
		{"agent without secret", []string{"agent", "--config", noSecret}, nil, 2, "cluster.secret_file"},
		{"agent with missing secret file", []string{"agent", "--config", missing}, nil, 2, "no cluster secret"},
		{"agent with a typo", []string{"agent", "--config", typo}, nil, 2, `unknown key "cluster.bootstrap_expct"`},
		{"agent with a bad flag value", []string{"agent", "--config", noSecret, "--cluster-probe-interval", "soon"}, nil, 2, `"soon" is not a duration`},
		{"env overrides file", []string{"config", "validate", badDur}, []string{"ORCHESTRATE_CLUSTER_PROBE_INTERVAL=1s"}, 2, "no cluster secret"},
		{"validate bad duration", []string{"config", "validate", badDur}, nil, 2, `cluster.probe_interval: "fast" is not a duration`},
		{"unknown flag", []string{"members", "--bogus"}, nil, 2, "unknown flag"},
		{"too many args", []string{"keygen", "a", "b"}, nil, 2, "accepts at most 1 arg"},
		{"no agent", []string{"members", "--agent", filepath.Join(dir, "none.sock")}, nil, 1, "none.sock"},
		{"version", []string{"version"}, nil, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, code := runCLI(t, tt.env, tt.args...)
			if code != tt.code || !strings.Contains(errOut, tt.want) {
				t.Errorf("exit %d (want %d), stderr %q (want %q)", code, tt.code, errOut, tt.want)
			}
		})
	}
	// keygen writes 0600 and refuses to overwrite.
	key := filepath.Join(dir, "k")
	if _, errOut, code := runCLI(t, nil, "keygen", key); code != 0 {
		t.Fatal(errOut)
	}
	if fi, err := os.Stat(key); err != nil {
		t.Fatalf("secret file: %v", err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode: %v", fi.Mode())
	}
	if _, _, code := runCLI(t, nil, "keygen", key); code != 1 {
		t.Errorf("keygen overwrote: exit %d", code)
	}
	good := write("good.yaml", "node: {name: x, data_dir: "+dir+"/d}\ncluster: {bind: 127.77.9.1:17946, secret_file: "+key+"}\nengine: {type: none}\n")
	if out, errOut, code := runCLI(t, nil, "config", "validate", good); code != 0 || !strings.Contains(out, "ok") {
		t.Errorf("validate good: %d %s %s", code, out, errOut)
	}
	_ = strconv.Itoa
}
