package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// waitPhase polls the migrations until one for name reaches a phase in
// phases, and returns it.
func waitPhase(t *testing.T, h *simhost.AgentHost, name string, d time.Duration, phases ...string) migrationRow {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		var rows []migrationRow
		_ = h.JSON(&rows, "migrations")
		for _, r := range rows {
			if r.Name != name {
				continue
			}
			for _, p := range phases {
				if r.Phase == p {
					return r
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no migration of %s reached %v within %s: %+v", name, phases, d, rows)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitPhaseUnless is waitPhase that also fails as soon as stop says so.
func waitPhaseUnless(t *testing.T, h *simhost.AgentHost, name string, d time.Duration, stop func() (string, bool), phases ...string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		var rows []migrationRow
		_ = h.JSON(&rows, "migrations")
		for _, r := range rows {
			for _, p := range phases {
				if r.Name == name && r.Phase == p {
					return
				}
			}
		}
		if why, ok := stop(); ok {
			t.Fatal(why)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no migration of %s reached %v within %s: %+v", name, phases, d, rows)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Each failure leaves the container running on its source, with its
// memory, and nothing on the target; the record ends RolledBack with the
// cause.
func TestE2ERollback(t *testing.T) {
	c := simhost.NewCluster(t, 3)
	h1, h2 := c.Hosts[0], c.Hosts[1]

	t.Run("TargetPodmanKilledMidTransfer", func(t *testing.T) {
		port := simhost.Port()
		h1.RunWorkload(simhost.Workload{Name: "r1", MiB: 96, Port: port})
		before, _ := h1.Probe(port)
		// A slow link keeps the transfer going long enough to kill the
		// target's Podman service in the middle of it.
		if out, err := hostScript(h1, "shape", "40mbit"); err != nil {
			t.Fatal(out, err)
		}
		defer hostScript(h1, "shape", "off")
		type res struct {
			out, errOut string
			code        int
		}
		done := make(chan res, 1)
		go func() {
			o, e, code := h1.CLI("migrate", "r1", "--to", h2.Name)
			done <- res{o, e, code}
		}()
		// The migrate command must not end before the transfer starts; if
		// it does, its output says why.
		waitPhaseUnless(t, h1, "r1", 30*time.Second, func() (string, bool) {
			select {
			case r := <-done:
				return fmt.Sprintf("migrate ended early: exit %d\n%s%s", r.code, r.out, r.errOut), true
			default:
				return "", false
			}
		}, "Transferring")
		killPodman(t, h2)
		// The rollback first makes sure the target holds no copy, so it
		// waits until the target's engine answers again: bring it back.
		waitPhase(t, h1, "r1", 60*time.Second, "RollingBack", "RolledBack")
		restartPodman(t, h2)
		r := <-done
		if r.code != 1 {
			t.Fatalf("migrate: exit %d, want 1\n%s%s", r.code, r.out, r.errOut)
		}
		t.Logf("migrate output:\n%s%s", r.errOut, r.out)
		continued(t, h1, port, before)
		onlyOn(t, c, "r1", h1)
		row := waitPhase(t, h1, "r1", time.Second, "RolledBack")
		if row.Error == "" {
			t.Fatal("rolled back without a cause")
		}
	})

	t.Run("StreamCorruptedInFlight", func(t *testing.T) {
		port := simhost.Port()
		// Export/import without pre-copy: the fault flips a bit in a stream
		// frame after 4 MB; a pre-copy round would take the corruption
		// instead, and the page path's metadata archive is smaller than
		// that (a page channel carries no such frames: SSH's own MAC
		// guards it, and CRIU's dump fails if the connection dies).
		h1.RunWorkload(simhost.Workload{Name: "r3", MiB: 32, Port: port, Labels: map[string]string{"orchestrate.precopy": "off", "orchestrate.pages": "off"}})
		before, _ := h1.Probe(port)
		// h1's agent flips one bit of the first stream it sends, after
		// hashing, as a bad link would.
		h1.StopAgent(syscall.SIGTERM)
		h1.Env = []string{"ORCHESTRATE_FAULT_CORRUPT_STREAM_AFTER=4000000"}
		h1.StartAgent()
		defer func() {
			h1.StopAgent(syscall.SIGTERM)
			h1.Env = nil
			h1.StartAgent()
			c.WaitFormed(60 * time.Second)
		}()
		c.WaitFormed(60 * time.Second)
		out, errOut, code := h1.CLI("migrate", "r3", "--to", h2.Name)
		if code != 1 {
			t.Fatalf("migrate: exit %d, want 1\n%s%s", code, out, errOut)
		}
		if !strings.Contains(out+errOut, "sha256") && !strings.Contains(out+errOut, "verif") {
			t.Errorf("the cause (verification) is not reported:\n%s%s", out, errOut)
		}
		t.Logf("migrate output:\n%s%s", errOut, out)
		continued(t, h1, port, before)
		onlyOn(t, c, "r3", h1)
	})

	t.Run("TargetDiskFull", func(t *testing.T) {
		port := simhost.Port()
		// Export/import (the page path sends the memory past Podman's
		// TMPDIR; engine/podman's TestPagesDiskFull fills its disk).
		h1.RunWorkload(simhost.Workload{Name: "r2", MiB: 48, Port: port, Labels: map[string]string{"orchestrate.pages": "off"}})
		before, _ := h1.Probe(port)
		// Podman stages an imported checkpoint in its TMPDIR: make it tiny.
		tmp := simhost.StateDir(h2.Name) + "/tmp"
		h2.MustRun("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", tmp)
		defer h2.Run("umount", tmp)
		out, errOut, code := h1.CLI("migrate", "r2", "--to", h2.Name)
		if code != 1 {
			t.Fatalf("migrate: exit %d, want 1\n%s%s", code, out, errOut)
		}
		if !strings.Contains(out+errOut, "no space left") {
			t.Errorf("the cause (no space left) is not reported:\n%s%s", out, errOut)
		}
		continued(t, h1, port, before)
		onlyOn(t, c, "r2", h1)
	})
}

func hostScript(h *simhost.AgentHost, args ...string) (string, error) {
	out, err := runScript(append([]string{args[0], h.Name}, args[1:]...)...)
	return out, err
}

func killPodman(t *testing.T, h *simhost.AgentHost) {
	t.Helper()
	if out, err := runScript("kill-podman", h.Name); err != nil {
		t.Fatal(out, err)
	}
}

func restartPodman(t *testing.T, h *simhost.AgentHost) {
	t.Helper()
	if out, err := runScript("start-podman", h.Name); err != nil {
		t.Fatal(out, err)
	}
}

// Killing the leader in the middle of a drain: the new leader finishes or
// rolls back every migration, and no container is lost or duplicated.
func TestE2ELeaderKilledMidDrain(t *testing.T) {
	c := simhost.NewCluster(t, 3)
	src := c.Hosts[0]
	names := []string{"k1", "k2", "k3", "k4"}
	ports := map[string]int{}
	reps := map[string]simhost.Report{}
	for _, n := range names {
		ports[n] = simhost.Port()
		src.RunWorkload(simhost.Workload{Name: n, MiB: 48, Port: ports[n]})
		reps[n], _ = src.Probe(ports[n])
	}
	leader := c.Leader()
	var cliHost *simhost.AgentHost
	for _, h := range c.Hosts {
		if h != leader {
			cliHost = h
		}
	}
	done := make(chan string, 1)
	go func() {
		o, e, code := cliHost.CLI("drain", src.Name, "--parallel", "1")
		done <- fmt.Sprintf("exit %d\n%s%s", code, e, o)
	}()
	// Kill the leader once the first migration is under way.
	waitPhase(t, cliHost, "k1", 30*time.Second, "Checkpointing", "Transferring", "Restoring", "Confirming", "Done")
	t.Logf("killing the leader %s", leader.Name)
	leader.StopAgent(syscall.SIGKILL)
	time.Sleep(2 * time.Second) // the dead agent's host stays down a moment, as after a crash
	leader.StartAgent()
	t.Logf("drain: %s", <-done)

	// Every migration ends, each container runs exactly once, with its memory.
	for _, n := range names {
		waitPhase(t, cliHost, n, 90*time.Second, "Done", "RolledBack")
	}
	for _, n := range names {
		var where []*simhost.AgentHost
		for _, h := range c.Hosts {
			if h.Running(n) {
				where = append(where, h)
			}
		}
		if len(where) != 1 {
			t.Fatalf("%s runs on %d hosts", n, len(where))
		}
		continued(t, where[0], ports[n], reps[n])
		onlyOn(t, c, n, where[0])
	}
}
