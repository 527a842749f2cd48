// Package vmtest drives scripts/vm.sh from Go tests: Debian 12 guests under
// QEMU for what simulated hosts cannot show (a real reboot, systemd starting
// the agent, a kernel that tracks dirty pages, Debian's own CRIU).
//
// A Set is one `vm.sh up N`; t.Cleanup runs `vm.sh down`, also when the test
// fails, and vm.sh itself takes the set down once the test binary is gone,
// however it ended (a -timeout panic or Ctrl-C runs no t.Cleanup). Tests
// run only when asked: ORCHESTRATE_VM_TESTS=all runs every VM test,
// ORCHESTRATE_VM_TESTS=reboot (or ORCHESTRATE_REQUIRE_HOSTS=1, as in `make
// test`) the reboot test alone. Guests run under emulation, so every step is
// slow: the tests keep to what needs a real host.
package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// Level is how many VM tests to run: "all", "reboot" or "" (none).
func Level() string {
	if l := os.Getenv("ORCHESTRATE_VM_TESTS"); l != "" {
		return l
	}
	if os.Getenv("ORCHESTRATE_REQUIRE_HOSTS") == "1" {
		return "reboot"
	}
	return ""
}

// Require skips the test unless the VM tests at level (or all of them) were asked for.
func Require(t testing.TB, level string) {
	t.Helper()
	if l := Level(); l != "all" && l != level {
		t.Skipf("VM test: set ORCHESTRATE_VM_TESTS=%s (make vm-test runs all)", level)
	}
	if os.Geteuid() != 0 {
		t.Fatal("VM tests need root (namespaces, taps)")
	}
}

func script() string { return simhost.Root() + "/scripts/vm.sh" }

// NetnsPath is the network namespace from which the guests are reached.
func NetnsPath() string { return "/run/netns/ovm" + simhost.Tag() }

// Set is a set of running guests, vm1..vmN.
type Set struct {
	N    int
	t    testing.TB
	Boot time.Duration // how long `vm.sh up` took (image cached)
}

// Up boots n guests with the agent config extra appended to each, and
// tears them down at cleanup.
func Up(t testing.TB, n int, configAppend string) *Set {
	t.Helper()
	// A set left behind by a killed run of this tag goes first.
	_ = exec.Command(script(), "down").Run()
	start := time.Now()
	img := exec.Command(script(), "image")
	img.Stderr = &logWriter{t: t, prefix: "vm.sh image: "}
	if out, err := img.Output(); err != nil {
		t.Fatalf("vm.sh image: %v\n%s", err, out)
	}
	t.Logf("guest image ready after %s", time.Since(start).Round(time.Second))
	start = time.Now()
	cmd := exec.Command(script(), "up", fmt.Sprint(n))
	// The set goes down when this process ends, also when t.Cleanup never
	// runs (killed by -timeout or Ctrl-C): vm.sh watches this pid.
	cmd.Env = append(os.Environ(), "VM_CONFIG_APPEND="+configAppend, fmt.Sprintf("VM_OWNER_PID=%d", os.Getpid()))
	out, err := cmd.CombinedOutput()
	t.Cleanup(func() {
		if t.Failed() {
			for i := 1; i <= n; i++ {
				c, _ := exec.Command(script(), "console", fmt.Sprint(i)).Output()
				t.Logf("vm%d console (tail):\n%s", i, tail(string(c), 40))
			}
		}
		if out, err := exec.Command(script(), "down").CombinedOutput(); err != nil {
			t.Logf("vm.sh down: %v\n%s", err, out)
		}
	})
	if err != nil {
		t.Fatalf("vm.sh up %d: %v\n%s", n, err, out)
	}
	s := &Set{N: n, t: t, Boot: time.Since(start)}
	t.Logf("%d guest(s) booted and answering ssh in %s", n, s.Boot.Round(time.Second))
	return s
}

// IP is guest i's address.
func IP(i int) string { return fmt.Sprintf("10.99.0.%d", 10+i) }

// SSH runs a shell line on guest i and returns its combined output.
func (s *Set) SSH(i int, line string) (string, error) {
	return s.SSHTimeout(i, line, 10*time.Minute)
}

// SSHTimeout is SSH with a time limit.
func (s *Set) SSHTimeout(i int, line string, d time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	out, err := exec.CommandContext(ctx, script(), "ssh", fmt.Sprint(i), line).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("vm%d: %s: %w\n%s", i, line, err, out)
	}
	return string(out), nil
}

// MustSSH is SSH that fails the test on error.
func (s *Set) MustSSH(i int, line string) string {
	s.t.Helper()
	out, err := s.SSH(i, line)
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

// Push copies a file to guest i.
func (s *Set) Push(i int, src, dst string) {
	s.t.Helper()
	if out, err := exec.Command(script(), "push", fmt.Sprint(i), src, dst).CombinedOutput(); err != nil {
		s.t.Fatalf("push %s to vm%d:%s: %v\n%s", src, i, dst, err, out)
	}
}

// WaitSSH waits until guest i answers ssh again (after a reboot).
func (s *Set) WaitSSH(i int, d time.Duration) {
	s.t.Helper()
	if out, err := exec.Command(script(), "wait-ssh", fmt.Sprint(i), fmt.Sprint(int(d.Seconds()))).CombinedOutput(); err != nil {
		s.t.Fatalf("vm%d: %v\n%s", i, err, out)
	}
}

// Shape limits every guest's link to rate ("100mbit"; "off" removes it).
func (s *Set) Shape(rate string) {
	s.t.Helper()
	if out, err := exec.Command(script(), "shape", rate).CombinedOutput(); err != nil {
		s.t.Fatalf("shape %s: %v\n%s", rate, err, out)
	}
}

// Eventually polls cond every interval until it returns nil or d passes.
func (s *Set) Eventually(d, interval time.Duration, what string, cond func() error) {
	s.t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(interval)
	}
}

// Member is one line of `orchestrate members -o json`.
type Member struct {
	Name     string `json:"name"`
	Status   string `json:"status"`
	Role     string `json:"role"`
	Cordoned bool   `json:"cordoned"`
}

// Members asks guest i's agent for the cluster's members.
func (s *Set) Members(i int) ([]Member, error) {
	out, err := s.SSHTimeout(i, "orchestrate members -o json", 2*time.Minute)
	if err != nil {
		return nil, err
	}
	var ms []Member
	if err := json.Unmarshal([]byte(out), &ms); err != nil {
		return nil, fmt.Errorf("members: %w: %s", err, out)
	}
	return ms, nil
}

// Report is what the workload says about itself.
type Report = simhost.Report

// Probe asks the workload listening on guest i's port, from the guests'
// namespace, on a connection closed before it returns (an open one would
// pin the workload to guest i's address).
func Probe(i, port int) (Report, error) {
	var rep Report
	conn, err := simhost.DialInNetns(NetnsPath(), fmt.Sprintf("%s:%d", IP(i), port), 2*time.Second)
	if err != nil {
		return rep, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("\n")); err != nil {
		return rep, err
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return rep, err
	}
	return rep, json.Unmarshal(bytes.TrimSpace(line), &rep)
}

type logWriter struct {
	t      testing.TB
	prefix string
}

func (w *logWriter) Write(p []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.t.Log(w.prefix + l)
	}
	return len(p), nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
