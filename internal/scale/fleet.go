// Package scale runs a fleet of real agents on one machine and measures how
// the cluster behaves as it grows: the scale harness of docs/architecture.md
// ("How far it scales").
//
// A Fleet is N processes of the orchestrate binary, built with the testhooks
// tag (Build), each on its own loopback address 127.0.0.x with its own
// ports, its own data directory, config file, log and unix socket. Agents
// run engine.type fake, an in-memory engine that reports K containers and
// performs real migrations through it (checkpoint, SSH stream, restore), or
// engine.type none (witnesses). There is no Podman and no network namespace:
// only processes, loopback TCP and UDP. RSS, CPU and bytes are those of real
// agents.
//
// The Fleet starts and kills agents; measure.go waits for and times what
// the bench reads from their APIs (TestBenchScale, run by make bench). The
// Fleet owns its processes: Close kills every agent it started, also when a
// test fails half-way.
package scale

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
)

// Tags are the build tags of the harness's binary: make build's, plus
// testhooks for engine.type fake.
const Tags = "remote,exclude_graphdriver_btrfs,exclude_graphdriver_devicemapper,containers_image_openpgp,testhooks"

// Build compiles the orchestrate binary with Tags into dir and returns its
// path. root is the module's root directory.
func Build(root, dir string) (string, error) {
	bin := filepath.Join(dir, "orchestrate")
	cmd := exec.Command("go", "build", "-tags", Tags, "-o", bin, "./cmd/orchestrate")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// Config describes a fleet.
type Config struct {
	// Bin is the orchestrate binary built with Tags.
	Bin string
	// Dir holds the fleet's secret and one directory per agent.
	Dir string
	// N agents, named s001... in start order.
	N int
	// Engine is every agent's engine.type: "fake" (default) or "none";
	// Engines overrides it for some agents, by index.
	Engine  string
	Engines map[int]string
	// Containers is how many containers each fake engine starts with;
	// agent BigHost (an index, when BigContainers > 0) starts with
	// BigContainers instead.
	Containers    int
	BigHost       int
	BigContainers int
	// Voters is cluster.max_voters (default 3); the first Voters agents
	// bootstrap raft together.
	Voters int
	// IPPrefix and FirstIP: agent i listens on IPPrefix + (FirstIP+i)
	// (default 127.0.0. and 10).
	IPPrefix string
	FirstIP  int
	// BasePort: agent i's gossip, raft, API and transfer ports are
	// BasePort+4i .. BasePort+4i+3 (default 30000: below the ephemeral
	// range).
	BasePort int
	// Env is added to every agent's environment (ORCHESTRATE_* overrides).
	Env []string
}

// Agent is one agent process of the fleet.
type Agent struct {
	Name, IP                                    string
	GossipAddr, RaftAddr, APIAddr, TransferAddr string
	Dir, Socket, ConfigFile, LogFile            string
	Engine                                      string

	env    []string
	bin    string
	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	client *cluster.Client
}

// Fleet is the agents of one Config.
type Fleet struct {
	Cfg    Config
	Secret string
	Agents []*Agent
}

// New writes the secret and every agent's config; it starts nothing.
func New(cfg Config) (*Fleet, error) {
	if cfg.Engine == "" {
		cfg.Engine = "fake"
	}
	if cfg.Voters < 1 {
		cfg.Voters = 3
	}
	if cfg.IPPrefix == "" {
		cfg.IPPrefix, cfg.FirstIP = "127.0.0.", 10
	}
	if cfg.BasePort == 0 {
		cfg.BasePort = 30000
	}
	if cfg.N < 1 || cfg.FirstIP+cfg.N > 255 {
		return nil, fmt.Errorf("fleet of %d agents from %s%d: does not fit in one /24", cfg.N, cfg.IPPrefix, cfg.FirstIP)
	}
	f := &Fleet{Cfg: cfg, Secret: filepath.Join(cfg.Dir, "cluster.key")}
	if out, err := exec.Command(cfg.Bin, "keygen", f.Secret).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("keygen: %v: %s", err, out)
	}
	var seeds []string
	for i := range min(cfg.Voters, cfg.N) {
		seeds = append(seeds, fmt.Sprintf("%q", fmt.Sprintf("%s%d:%d", cfg.IPPrefix, cfg.FirstIP+i, cfg.BasePort+4*i)))
	}
	for i := range cfg.N {
		a := &Agent{Name: fmt.Sprintf("s%03d", i+1), IP: fmt.Sprintf("%s%d", cfg.IPPrefix, cfg.FirstIP+i), Engine: cfg.Engine, bin: cfg.Bin}
		if e, ok := cfg.Engines[i]; ok {
			a.Engine = e
		}
		port := cfg.BasePort + 4*i
		a.GossipAddr, a.RaftAddr = fmt.Sprintf("%s:%d", a.IP, port), fmt.Sprintf("%s:%d", a.IP, port+1)
		a.APIAddr, a.TransferAddr = fmt.Sprintf("%s:%d", a.IP, port+2), fmt.Sprintf("%s:%d", a.IP, port+3)
		a.Dir = filepath.Join(cfg.Dir, a.Name)
		a.Socket, a.ConfigFile, a.LogFile = filepath.Join(a.Dir, "agent.sock"), filepath.Join(a.Dir, "agent.yaml"), filepath.Join(a.Dir, "agent.log")
		if err := os.MkdirAll(a.Dir, 0o700); err != nil {
			return nil, err
		}
		k := cfg.Containers
		if cfg.BigContainers > 0 && i == cfg.BigHost {
			k = cfg.BigContainers
		}
		a.env = append([]string{fmt.Sprintf("ORCHESTRATE_FAKE_CONTAINERS=%d", k)}, cfg.Env...)
		yaml := fmt.Sprintf(`node:
  name: %s
  data_dir: %s
cluster:
  bind: %s
  raft_bind: %s
  join: [%s]
  bootstrap_expect: %d
  max_voters: %d
  secret_file: %s
api:
  bind: %s
  socket: %s
engine:
  type: %s
transfer:
  bind: %s
`, a.Name, filepath.Join(a.Dir, "data"), a.GossipAddr, a.RaftAddr, strings.Join(seeds, ", "), min(cfg.Voters, cfg.N), cfg.Voters,
			f.Secret, a.APIAddr, a.Socket, a.Engine, a.TransferAddr)
		if err := os.WriteFile(a.ConfigFile, []byte(yaml), 0o600); err != nil {
			return nil, err
		}
		f.Agents = append(f.Agents, a)
	}
	return f, nil
}

// Start starts the agent's process (again, after Kill or Stop, with the
// same data directory).
func (a *Agent) Start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil {
		return fmt.Errorf("%s already running", a.Name)
	}
	logf, err := os.OpenFile(a.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(a.bin, "agent", "--config", a.ConfigFile)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), a.env...)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", a.Name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	a.cmd, a.done = cmd, done
	return nil
}

// Running reports whether the agent's process runs.
func (a *Agent) Running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return false
	}
	select {
	case <-a.done:
		return false
	default:
		return true
	}
}

// Pid is the process ID (0 when not running).
func (a *Agent) Pid() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return 0
	}
	return a.cmd.Process.Pid
}

// Kill sends SIGKILL (a crash) and waits for the process to end.
func (a *Agent) Kill() { a.signal(syscall.SIGKILL, 0) }

// Stop sends SIGTERM (a graceful leave) and waits, at most 10 s before
// SIGKILL.
func (a *Agent) Stop() { a.signal(syscall.SIGTERM, 10*time.Second) }

func (a *Agent) signal(sig syscall.Signal, grace time.Duration) {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.cmd = nil
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	if grace > 0 {
		select {
		case <-done:
			return
		case <-time.After(grace):
			_ = cmd.Process.Kill()
		}
	}
	<-done
}

// Client is the agent's API over its unix socket.
func (a *Agent) Client() *cluster.Client {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.client == nil {
		cl, err := cluster.NewClient(a.Socket, nil)
		if err != nil {
			panic(err) // a socket path never fails
		}
		a.client = cl
	}
	return a.client
}

// Bootstrap starts the first Voters agents (they bootstrap raft together)
// and waits until they agree on a leader. It returns the leader's name and
// the time from the first start until the agreement.
func (f *Fleet) Bootstrap(ctx context.Context, timeout time.Duration) (string, time.Duration, error) {
	start := time.Now()
	voters := f.Agents[:min(f.Cfg.Voters, len(f.Agents))]
	for _, a := range voters {
		if err := a.Start(); err != nil {
			return "", 0, err
		}
	}
	leader, err := WaitLeader(ctx, voters, "", timeout)
	return leader, time.Since(start), err
}

// StartRest starts every agent not yet running, as fast as it can, and
// returns when the last one was started.
func (f *Fleet) StartRest() (time.Time, error) {
	for _, a := range f.Agents {
		if a.Running() {
			continue
		}
		if err := a.Start(); err != nil {
			return time.Time{}, err
		}
	}
	return time.Now(), nil
}

// Running returns the agents whose process runs.
func (f *Fleet) Running() []*Agent {
	var out []*Agent
	for _, a := range f.Agents {
		if a.Running() {
			out = append(out, a)
		}
	}
	return out
}

// Agent returns the agent with this name.
func (f *Fleet) Agent(name string) (*Agent, error) {
	for _, a := range f.Agents {
		if a.Name == name {
			return a, nil
		}
	}
	return nil, fmt.Errorf("no agent %s", name)
}

// Close kills every agent (SIGKILL: a fleet is thrown away whole).
func (f *Fleet) Close() {
	var wg sync.WaitGroup
	for _, a := range f.Agents {
		wg.Add(1)
		go func() { defer wg.Done(); a.Kill() }()
	}
	wg.Wait()
}

// LogTail returns the last n lines of an agent's log.
func (a *Agent) LogTail(n int) string {
	b, err := os.ReadFile(a.LogFile)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// errTimeout wraps every wait that ran out of time.
var errTimeout = errors.New("timed out")
