// Package simhost drives scripts/simhost.sh from Go tests: simulated edge
// hosts, each a network namespace with its own mount namespace and its own
// Podman service. A Host created with New is removed by t.Cleanup, also when
// the test fails; `make test` additionally runs `simhost.sh down-all` before
// and after the suite, so a killed test run leaves nothing behind either.
package simhost

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// WorkloadImage is the tag of the test workload image (cmd/workload).
const WorkloadImage = "localhost/orchestrate-workload:latest"

// Root returns the repository root (where scripts/ lives).
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func script(name string) string { return filepath.Join(Root(), "scripts", name) }

// PodmanCLI is the command line of the podman client inside host name (its
// storage, its configuration), for an engine that runs outside it.
func PodmanCLI(name string) []string { return []string{script("simhost.sh"), "exec", name, "podman"} }

// Tag is OSIM_TAG: it keeps one set of simulated hosts apart from another on
// the same machine (scripts/simhost.sh names its directories and namespaces
// after it), so that two test runs at once do not tear down each other's
// hosts.
func Tag() string { return os.Getenv("OSIM_TAG") }

// StateDir is a host's runtime directory (sockets, logs, pid files).
func StateDir(name string) string { return fmt.Sprintf("/run/osim%s/%s", Tag(), name) }

// DataDir is a host's persistent directory (Podman storage, agent data).
func DataDir(name string) string { return fmt.Sprintf("/var/lib/osim%s/%s", Tag(), name) }

// CRIUConfigDir is, seen from outside the host, the directory the host sees
// as /etc/criu (where runc finds runc.conf).
func CRIUConfigDir(name string) string { return StateDir(name) + "/criu-etc" }

// NetnsPath is the path of a host's network namespace.
func NetnsPath(name string) string { return fmt.Sprintf("/run/netns/osim%s-%s", Tag(), name) }

// Available reports why real hosts cannot be made here, or "" when they can.
func Available() string {
	if os.Geteuid() != 0 {
		return "simulated hosts need root"
	}
	for _, bin := range []string{"podman", "nsenter", "ip", "runc"} {
		if _, err := exec.LookPath(bin); err != nil {
			return bin + " is not installed (run scripts/install-host.sh)"
		}
	}
	if _, err := os.Stat("/etc/orchestrate/containers.conf"); err != nil {
		return "/etc/orchestrate/containers.conf is missing (run scripts/install-host.sh)"
	}
	return ""
}

// Require skips the test when simulated hosts cannot be made, unless
// ORCHESTRATE_REQUIRE_HOSTS=1 (set by `make test`), where it fails instead:
// CI must never pass by skipping the real tests.
func Require(t testing.TB) {
	t.Helper()
	if why := Available(); why != "" {
		if os.Getenv("ORCHESTRATE_REQUIRE_HOSTS") == "1" {
			t.Fatalf("real hosts required: %s", why)
		}
		t.Skip(why)
	}
}

// Host is one simulated host.
type Host struct {
	Name   string
	IP     string
	Socket string // Podman service URI, unix://...
	t      testing.TB
}

// Options change how New makes a host.
type Options struct {
	// DiskMiB, when set, puts the host's storage on a disk of that size
	// (a tmpfs), which a test can fill.
	DiskMiB int
}

// New creates a simulated host with a unique name and a free address,
// loads the workload image into its Podman, and removes it all at cleanup.
func New(t testing.TB) *Host { return NewWith(t, Options{}) }

// NewWith is New with options.
func NewWith(t testing.TB, o Options) *Host {
	t.Helper()
	Require(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "t" + hex.EncodeToString(b)
	cmd := exec.Command(script("simhost.sh"), "up", name)
	if o.DiskMiB > 0 {
		cmd.Env = append(os.Environ(), fmt.Sprintf("OSIM_DISK_MIB=%d", o.DiskMiB))
	}
	out, err := cmd.CombinedOutput()
	h := &Host{Name: name, t: t}
	t.Cleanup(func() {
		if out, err := exec.Command(script("simhost.sh"), "down", name).CombinedOutput(); err != nil {
			t.Logf("simhost down %s: %v\n%s", name, err, out)
		}
	})
	if err != nil {
		t.Fatalf("simhost up %s: %v\n%s", name, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "socket="); ok {
			h.Socket = v
		}
		if v, ok := strings.CutPrefix(line, "ip="); ok {
			h.IP = v
		}
	}
	if h.Socket == "" || h.IP == "" {
		t.Fatalf("simhost up %s: unexpected output:\n%s", name, out)
	}
	h.LoadWorkloadImage()
	return h
}

var (
	imageOnce sync.Once
	imagePath string
	imageErr  error
)

// WorkloadImageArchive builds (once per test binary, cached on disk across
// runs) the workload image archive and returns its path.
func WorkloadImageArchive(t testing.TB) string {
	t.Helper()
	imageOnce.Do(func() {
		out, err := exec.Command(script("build-workload-image.sh")).Output()
		if err != nil {
			imageErr = fmt.Errorf("build-workload-image.sh: %w", err)
			if ee, ok := err.(*exec.ExitError); ok {
				imageErr = fmt.Errorf("%w\n%s", imageErr, ee.Stderr)
			}
			return
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		imagePath = lines[len(lines)-1]
	})
	if imageErr != nil {
		t.Fatal(imageErr)
	}
	return imagePath
}

// LoadWorkloadImage loads the workload image into the host's Podman.
func (h *Host) LoadWorkloadImage() {
	h.t.Helper()
	h.MustRun("podman", "load", "-q", "-i", WorkloadImageArchive(h.t))
}

// Script runs scripts/simhost.sh with args (for example "kill-podman",
// NAME) and returns its combined output.
func Script(args ...string) (string, error) {
	out, err := exec.Command(script("simhost.sh"), args...).CombinedOutput()
	return string(out), err
}

// Command returns a command that runs inside the host.
func (h *Host) Command(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, script("simhost.sh"), append([]string{"exec", h.Name}, args...)...)
}

// Run runs a command inside the host and returns its combined output.
func (h *Host) Run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := h.Command(ctx, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s on %s: %w\n%s", strings.Join(args, " "), h.Name, err, out)
	}
	return string(out), nil
}

// MustRun is Run that fails the test on error.
func (h *Host) MustRun(args ...string) string {
	h.t.Helper()
	out, err := h.Run(args...)
	if err != nil {
		h.t.Fatal(err)
	}
	return out
}

// Workload describes a workload container to start.
type Workload struct {
	Name     string
	MiB      int
	Port     int  // listens on 127.0.0.1:Port inside the host (host network)
	SelfConn bool // holds an established loopback TCP connection
	Labels   map[string]string
	Args     []string // extra workload flags
	// Network is Podman's --network; empty means host (the workload then
	// listens on 127.0.0.1:Port), else it listens on :Port in its own
	// network namespace (probe it with ProbeAt(ContainerIP(name), Port)).
	Network string
}

// RunWorkload starts the workload with host networking and waits until it
// answers. It returns the container ID.
func (h *Host) RunWorkload(w Workload) string {
	h.t.Helper()
	network, listen := "host", fmt.Sprintf("127.0.0.1:%d", w.Port)
	if w.Network != "" && w.Network != "host" {
		network, listen = w.Network, fmt.Sprintf(":%d", w.Port)
	}
	args := []string{"podman", "run", "-d", "--name", w.Name, "--network", network}
	for k, v := range w.Labels {
		args = append(args, "--label", k+"="+v)
	}
	args = append(args, WorkloadImage, "-mib", fmt.Sprint(w.MiB), "-listen", listen)
	if w.SelfConn {
		args = append(args, "-self-conn")
	}
	args = append(args, w.Args...)
	id := strings.TrimSpace(h.MustRun(args...))
	if network == "host" {
		h.WaitReport(w.Port, 30*time.Second)
	} else {
		h.WaitReportAt(h.ContainerIP(w.Name), w.Port, 30*time.Second)
	}
	return id
}

// ContainerIP is the address of a container on a bridge network.
func (h *Host) ContainerIP(name string) string {
	h.t.Helper()
	return strings.TrimSpace(h.MustRun("podman", "inspect", "--format", "{{.NetworkSettings.IPAddress}}", name))
}

// ProbeAt asks the workload listening on ip:port inside the host.
func (h *Host) ProbeAt(ip string, port int) (Report, error) {
	return h.probeAddr(fmt.Sprintf("%s:%d", ip, port), "\n")
}

// WaitReportAt is WaitReport for a workload at ip:port.
func (h *Host) WaitReportAt(ip string, port int, d time.Duration) Report {
	h.t.Helper()
	deadline := time.Now().Add(d)
	for {
		rep, err := h.ProbeAt(ip, port)
		if err == nil {
			return rep
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("workload on %s at %s:%d did not answer within %s: %v", h.Name, ip, port, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Report is what the workload says about itself.
type Report struct {
	Counter  uint64 `json:"counter"`
	Start    string `json:"start"`
	Checksum string `json:"checksum"`
	MaxGapMS int64  `json:"max_gap_ms"`
	MiB      int    `json:"mib"`
	SelfConn bool   `json:"self_conn"`
	// The start-up phase (-startup-work): rounds, their result, and how
	// long the process took from its start to serving.
	WarmRounds int    `json:"warm_rounds"`
	Warm       string `json:"warm"`
	ReadyMS    int64  `json:"ready_ms"`
}

// Probe asks the workload listening on 127.0.0.1:port inside the host.
func (h *Host) Probe(port int) (Report, error) { return h.probe(port, "\n") }

// ProbeReset is Probe that also resets the workload's longest gap.
func (h *Host) ProbeReset(port int) (Report, error) { return h.probe(port, "reset\n") }

func (h *Host) probe(port int, line string) (Report, error) {
	return h.probeAddr(fmt.Sprintf("127.0.0.1:%d", port), line)
}

func (h *Host) probeAddr(addr, line string) (Report, error) {
	var rep Report
	conn, err := DialInNetns(NetnsPath(h.Name), addr, 2*time.Second)
	if err != nil {
		return rep, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte(line)); err != nil {
		return rep, err
	}
	answer, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return rep, err
	}
	return rep, json.Unmarshal(bytes.TrimSpace(answer), &rep)
}

// WaitReport polls the workload until it answers, failing the test after d.
func (h *Host) WaitReport(port int, d time.Duration) Report {
	h.t.Helper()
	deadline := time.Now().Add(d)
	for {
		rep, err := h.Probe(port)
		if err == nil {
			return rep
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("workload on %s:%d did not answer within %s: %v", h.Name, port, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// InNetns runs f on a thread switched into the network namespace at
// nsPath. Sockets f creates stay in that namespace; the thread goes back to
// its own namespace afterwards (or, if that fails, dies with its goroutine).
func InNetns(nsPath string, f func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ch <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(nsPath)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("setns %s: %w", nsPath, err)
			return
		}
		ferr := f()
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- ferr
	}()
	return <-ch
}

// DialInNetns dials addr from inside the network namespace at nsPath.
func DialInNetns(nsPath, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := InNetns(nsPath, func() (err error) {
		d := net.Dialer{Timeout: timeout}
		c, err = d.Dial("tcp", addr)
		return err
	})
	return c, err
}

var portMu sync.Mutex
var nextPort = 20000 + int(time.Now().UnixNano()%5000)

// Port returns a port number not handed out before in this test binary.
func Port() int {
	portMu.Lock()
	defer portMu.Unlock()
	nextPort++
	return nextPort
}
