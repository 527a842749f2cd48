package simhost

import (
	"bytes"
	"io"
	"net"
	"net/http"

	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// Binary builds bin/orchestrate once per test binary (static, with the
// podman build tags plus testhooks, which compiles in the fault injection
// the failure tests use) and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "orchestrate-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "orchestrate")
		// testhooks: fault injection and pause points (never in `make build`).
		cmd := exec.Command("go", "build", "-tags", "remote,exclude_graphdriver_btrfs,exclude_graphdriver_devicemapper,containers_image_openpgp,testhooks",
			"-o", binPath, "./cmd/orchestrate")
		cmd.Dir = Root()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// Cluster is several simulated hosts, each running an agent.
type Cluster struct {
	t      testing.TB
	Bin    string
	Secret string
	Hosts  []*AgentHost
}

// AgentHost is a simulated host with an agent.
type AgentHost struct {
	*Host
	c      *Cluster
	Config string
	Socket string // the agent's unix socket
	cmd    *exec.Cmd
	done   chan struct{}
	// Env is added to the agent's environment at its next start.
	Env []string
}

// NewCluster starts n hosts with agents that form one cluster, and waits
// until every agent sees every other alive and a leader is elected.
func NewCluster(t testing.TB, n int) *Cluster { return NewClusterWith(t, n, nil) }

// NewClusterWith is NewCluster with extra YAML for host i's agent config
// (e.g. a policy: section); extra runs once the hosts exist, before the
// agents start.
func NewClusterWith(t testing.TB, n int, extra func(i int, h *Host) string) *Cluster {
	t.Helper()
	engines := make([]string, n)
	for i := range engines {
		engines[i] = "podman"
	}
	return newCluster(t, engines, extra)
}

// NewClusterOpts is NewCluster whose hosts are made with o (for example a
// small disk each, which a test can fill).
func NewClusterOpts(t testing.TB, n int, o Options) *Cluster {
	t.Helper()
	engines := make([]string, n)
	for i := range engines {
		engines[i] = "podman"
	}
	return newClusterOpts(t, engines, nil, o)
}

// newCluster starts one host per entry of engines ("podman" or "docker"),
// each with an agent of that engine type, and waits until the cluster formed.
func newCluster(t testing.TB, engines []string, extra func(i int, h *Host) string) *Cluster {
	t.Helper()
	return newClusterOpts(t, engines, extra, Options{})
}

func newClusterOpts(t testing.TB, engines []string, extra func(i int, h *Host) string, o Options) *Cluster {
	t.Helper()
	Require(t)
	n := len(engines)
	c := &Cluster{t: t, Bin: Binary(t)}
	dir := t.TempDir()
	c.Secret = filepath.Join(dir, "cluster.key")
	if out, err := exec.Command(c.Bin, "keygen", c.Secret).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	// Hosts are created in parallel: each takes about half a second.
	hosts := make([]*Host, n)
	socks := make([]string, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []string
	for i := range hosts {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() {
				if r := recover(); r != nil {
					mu.Lock()
					errs = append(errs, fmt.Sprint(r))
					mu.Unlock()
				}
			}()
			h := newHostNoFatal(t, o)
			hosts[i], socks[i] = h, h.Socket
			if engines[i] == "docker" {
				socks[i] = h.StartDocker()
			}
		}(i)
	}
	wg.Wait()
	for _, h := range hosts {
		if h == nil || len(errs) > 0 {
			t.Fatalf("creating hosts: %v", errs)
		}
		h.t = t
	}
	// Every agent lists every host as a seed, as an operator would: an agent
	// that restarts must find the others whichever of them is up.
	var quoted []string
	for _, h := range hosts {
		quoted = append(quoted, fmt.Sprintf("%q", h.IP+":7946"))
	}
	seeds := strings.Join(quoted, ", ")
	for i, h := range hosts {
		ah := &AgentHost{Host: h, c: c, Socket: StateDir(h.Name) + "/agent.sock"}
		ah.Config = StateDir(h.Name) + "/agent.yaml"
		cfg := fmt.Sprintf(`node:
  name: %[1]s
  data_dir: %[9]s/orchestrate
cluster:
  bind: %[2]s:7946
  raft_bind: %[2]s:7947
  join: [%[3]s]
  bootstrap_expect: %[4]d
  secret_file: %[5]s
api:
  bind: %[2]s:7948
  socket: %[6]s
engine:
  type: %[8]s
  socket: %[7]s
transfer:
  bind: %[2]s:7922
log:
  level: debug
`, h.Name, h.IP, seeds, min(n, 3), c.Secret, ah.Socket, socks[i], engines[i], DataDir(h.Name))
		if extra != nil {
			cfg += extra(i, h)
		}
		if err := os.WriteFile(ah.Config, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		c.Hosts = append(c.Hosts, ah)
	}
	for _, h := range c.Hosts {
		h.StartAgent()
	}
	t.Cleanup(func() {
		for _, h := range c.Hosts {
			h.StopAgent(syscall.SIGTERM)
		}
		if t.Failed() {
			for _, h := range c.Hosts {
				b, _ := os.ReadFile(StateDir(h.Name) + "/agent.log")
				t.Logf("--- agent log of %s ---\n%s", h.Name, logDigest(string(b)))
			}
		}
	})
	c.WaitFormed(60 * time.Second)
	return c
}

// newHostNoFatal is New for use off the test goroutine: it panics instead
// of calling t.Fatal.
func newHostNoFatal(t testing.TB, o Options) *Host {
	return NewWith(&panicTB{TB: t}, o)
}

type panicTB struct{ testing.TB }

func (p *panicTB) Fatal(args ...any)                 { panic(fmt.Sprint(args...)) }
func (p *panicTB) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }

// StartAgent starts (or restarts) the host's agent.
func (h *AgentHost) StartAgent() {
	h.c.t.Helper()
	logf, err := os.OpenFile(StateDir(h.Name)+"/agent.log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		h.c.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(script("simhost.sh"), "exec", h.Name, h.c.Bin, "agent", "--config", h.Config)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pause points (internal/pause) are armed by files in the host's state
	// directory.
	cmd.Env = append(os.Environ(), "ORCHESTRATE_TEST_PAUSE_DIR="+PauseDir(h.Name))
	cmd.Env = append(cmd.Env, h.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		h.c.t.Fatal(err)
	}
	_ = os.WriteFile(StateDir(h.Name)+"/agent.pid", []byte(fmt.Sprint(cmd.Process.Pid)), 0o600)
	h.cmd, h.done = cmd, make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(cmd, h.done)
}

// PauseDir is where a test arms the pause points of a host's agent.
func PauseDir(name string) string { return StateDir(name) + "/pause" }

// Exited is closed when the agent process started last has exited.
func (h *AgentHost) Exited() <-chan struct{} { return h.done }

// StopAgent signals the agent (SIGKILL simulates a crash) and waits for it.
func (h *AgentHost) StopAgent(sig syscall.Signal) {
	if h.cmd == nil {
		return
	}
	_ = syscall.Kill(-h.cmd.Process.Pid, sig)
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
		<-h.done
	}
	h.cmd = nil
}

// ListenInNetns listens on addr inside the host's network namespace (for
// fakes that the host's agent must reach, such as a metadata service).
func (h *Host) ListenInNetns(addr string) (net.Listener, error) {
	var l net.Listener
	err := InNetns(NetnsPath(h.Name), func() (err error) {
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// CLI runs the orchestrate CLI against this host's agent.
func (h *AgentHost) CLI(args ...string) (stdout, stderr string, code int) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.c.Bin, append(args, "--agent", h.Socket)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
		e.WriteString(err.Error())
	}
	return o.String(), e.String(), code
}

// JSON runs the CLI with -o json and decodes its output into v.
func (h *AgentHost) JSON(v any, args ...string) error {
	out, errOut, code := h.CLI(append(args, "-o", "json")...)
	if code != 0 {
		return fmt.Errorf("orchestrate %s: exit %d: %s%s", strings.Join(args, " "), code, errOut, out)
	}
	return json.Unmarshal([]byte(out), v)
}

// MemberView is the part of `members -o json` the tests read.
type MemberView struct {
	Name        string `json:"name"`
	Status      string `json:"status"`
	Role        string `json:"role"`
	MemoryTotal int64  `json:"memory_total"`
	CRIUVersion string `json:"criu_version"`
}

// WaitFormed waits until the first host sees every host alive and a leader.
func (c *Cluster) WaitFormed(d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	var last error
	for time.Now().Before(deadline) {
		last = c.formed()
		if last == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.t.Fatalf("cluster did not form within %s: %v", d, last)
}

func (c *Cluster) formed() error {
	for _, h := range c.Hosts {
		var ms []MemberView
		if err := h.JSON(&ms, "members"); err != nil {
			return err
		}
		alive, leaders := 0, 0
		for _, m := range ms {
			// Alive, with its capacity and CRIU version gossiped
			// (placement needs them).
			if m.Status == "alive" && m.MemoryTotal > 0 && m.CRIUVersion != "" {
				alive++
			}
			if m.Role == "leader" {
				leaders++
			}
		}
		if alive != len(c.Hosts) || leaders != 1 {
			return fmt.Errorf("%s sees %d alive of %d, %d leaders", h.Name, alive, len(c.Hosts), leaders)
		}
	}
	return nil
}

// Leader returns the host whose agent leads.
func (c *Cluster) Leader() *AgentHost {
	c.t.Helper()
	for _, h := range c.Hosts {
		if h.cmd == nil {
			continue
		}
		var ms []MemberView
		if err := h.JSON(&ms, "members"); err != nil {
			continue
		}
		for _, m := range ms {
			if m.Role == "leader" {
				for _, x := range c.Hosts {
					if x.Name == m.Name {
						return x
					}
				}
			}
		}
	}
	c.t.Fatal("no leader")
	return nil
}

// Running reports whether a container named name runs on the host.
func (h *Host) Running(name string) bool {
	out, err := h.Run("podman", "ps", "--format", "{{.Names}}")
	if err != nil {
		return false
	}
	for _, n := range strings.Fields(out) {
		if n == name {
			return true
		}
	}
	return false
}

// Exists reports whether a container named name exists (in any state).
func (h *Host) Exists(name string) bool {
	out, err := h.Run("podman", "ps", "-a", "--format", "{{.Names}}")
	if err != nil {
		return false
	}
	for _, n := range strings.Fields(out) {
		if n == name {
			return true
		}
	}
	return false
}

// Metrics scrapes the agent's /metrics over its unix socket.
func (h *AgentHost) Metrics() (string, error) {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", h.Socket)
	}}}
	resp, err := hc.Get("http://agent/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /metrics: %s: %s", resp.Status, b)
	}
	return string(b), err
}

// MetricValue returns the value of the sample whose line starts with name
// (including labels, e.g. `orchestrate_migrations_total{result="done"}`),
// or 0 when absent.
func MetricValue(text, name string) float64 {
	for _, l := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(l, name+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return 0
}

// logDigest is what a failed test shows of an agent's log (which holds
// every process started on the host, one after another): each process's
// lifecycle lines (start, stop, fatal errors, lines not from slog), its
// warnings and errors other than gossip's, up to the last 40 of those,
// then the last 40 lines as they are.
func logDigest(log string) string {
	lines := strings.Split(strings.TrimRight(log, "\n"), "\n")
	var keep []string
	for _, l := range lines[:max(0, len(lines)-40)] {
		switch {
		case !strings.HasPrefix(l, "time="),
			strings.Contains(l, `msg="agent `),
			(strings.Contains(l, "level=ERROR") || strings.Contains(l, "level=WARN")) && !strings.Contains(l, "component=memberlist"):
			keep = append(keep, l)
		}
	}
	if len(keep) > 40 {
		keep = keep[len(keep)-40:]
	}
	out := strings.Join(keep, "\n")
	if out != "" {
		out = "(lifecycle, warnings and errors before the tail)\n" + out + "\n(last lines)\n"
	}
	return out + strings.Join(lines[max(0, len(lines)-40):], "\n")
}
