package e2e

// The attack suite (issue 16): hostile input on three real agents. Each
// subtest is one finding; the clusters are shared within a test function
// to keep the suite lean. Forged restores and malformed applies are tested
// with the raft authorisation, the zstd bomb with engine/archive.

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// agentPID is the pid of the host's agent process (simhost starts it under
// nsenter).
func agentPID(t *testing.T, h *simhost.AgentHost) int {
	t.Helper()
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")
		if len(args) >= 4 && filepath.Base(args[0]) == "orchestrate" && args[1] == "agent" && args[len(args)-1] == h.Config {
			return pid
		}
	}
	t.Fatalf("no agent process for %s", h.Name)
	return 0
}

func openFiles(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

// asNobody runs a shell script in the host as the user nobody.
func asNobody(t *testing.T, h *simhost.AgentHost, script string) {
	t.Helper()
	if out, err := h.Run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script); err != nil {
		t.Fatalf("as nobody on %s: %v: %s", h.Name, err, out)
	}
}

// onlyFile checks that dir (in h's mount namespace) holds exactly one
// entry, name: the agents wrote nothing into a directory another user made.
func onlyFile(t *testing.T, h *simhost.AgentHost, dir, name string) {
	t.Helper()
	out, err := h.Run("ls", "-A", dir)
	if err != nil || strings.TrimSpace(out) != name {
		t.Errorf("%s on %s holds %q (%v), want only %s", dir, h.Name, out, err, name)
	}
}

// etcUnchanged checks that /etc is still a directory of mode 0755 and that
// no file named planted appeared in it.
func etcUnchanged(t *testing.T, planted string) {
	t.Helper()
	fi, err := os.Lstat("/etc")
	if err != nil || !fi.IsDir() || fi.Mode()&os.ModePerm != 0o755 || fi.Mode()&(os.ModeSticky|os.ModeSetgid|os.ModeSetuid) != 0 {
		t.Errorf("/etc is now %v (%v)", fi.Mode(), err)
	}
	if _, err := os.Lstat(filepath.Join("/etc", planted)); err == nil {
		t.Errorf("/etc/%s was created", planted)
	}
}

// TestAttackDocker: a member that sends hostile Docker archives, and a
// local user who makes the staging directories first. Two Docker hosts and
// a Podman host; h1's agent is built with the testhooks fault injection
// and appends the entries of a scenario file to its archives.
func TestAttackDocker(t *testing.T) {
	engines := []string{"docker", "docker", "podman"}
	c := simhost.NewClusterEngines(t, engines...)
	h1, h2 := c.Hosts[0], c.Hosts[1]
	inject := filepath.Join(simhost.StateDir(h1.Name), "inject.json")
	h1.Env = append(h1.Env, "ORCHESTRATE_FAULT_DOCKER_INJECT="+inject)
	h1.StopAgent(syscall.SIGTERM)
	h1.StartAgent()
	c.WaitFormed(60 * time.Second)
	scenario := func(t *testing.T, entries string) {
		t.Helper()
		if err := os.WriteFile(inject, []byte(entries), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(inject) })
	}
	port := simhost.Port()
	h1.RunDockerWorkload(simhost.Workload{Name: "atk", MiB: 8, Port: port})
	// A decoy directory on the host: entries must never land in it.
	decoy := t.TempDir()
	planted := fmt.Sprintf("orchestrate-attack-%d", time.Now().UnixNano())
	t.Cleanup(func() {
		// Should the defence ever fail, leave the machine as it was.
		os.Remove(filepath.Join("/etc", planted))
		if fi, err := os.Lstat("/etc"); err == nil && fi.Mode()&os.ModeSticky != 0 {
			os.Chmod("/etc", 0o755)
		}
	})

	refused := func(t *testing.T, want string) {
		t.Helper()
		before, err := h1.ProbeReset(port)
		if err != nil {
			t.Fatal(err)
		}
		out, errOut, code := h1.CLI("migrate", "atk", "--to", h2.Name)
		if code != 1 || !strings.Contains(out+errOut, want) {
			t.Fatalf("migrate: exit %d, want 1 naming %q: %s%s", code, want, out, errOut)
		}
		continued(t, h1, port, before)
		dockerOnlyOn(t, c, engines, "atk", h1)
	}

	t.Run("device-entry", func(t *testing.T) {
		scenario(t, fmt.Sprintf(`[{"name": "rootfs/dv", "type": "symlink", "link": %q},
			{"name": "rootfs/dv/mem", "type": "char", "major": 1, "minor": 1, "mode": 438}]`, decoy))
		refused(t, "character device 1:1, which the container was not given")
		if ents, _ := os.ReadDir(decoy); len(ents) != 0 {
			t.Fatalf("%d entries appeared outside the container", len(ents))
		}
	})

	t.Run("xattr-entry", func(t *testing.T) {
		scenario(t, `[{"name": "rootfs/xf", "type": "file", "body": "x", "xattrs": {"trusted.overlay.redirect": "/etc/shadow"}}]`)
		refused(t, "extended attribute trusted.overlay.redirect is not on the allowlist")
	})

	// A local user made Docker's old staging directory and made
	// containerd's temporary directory world-writable, filling it with
	// checkpoint directories of their own while the container is dumped:
	// the migration neither stages in theirs nor streams their images.
	t.Run("dirs-made-by-nobody", func(t *testing.T) {
		for _, h := range []*simhost.AgentHost{h1, h2} {
			asNobody(t, h, "mkdir -m 0777 /dev/shm/orchestrate-docker && echo theirs > /dev/shm/orchestrate-docker/planted.img")
			t.Cleanup(func() { _, _ = h.Run("rm", "-rf", "/dev/shm/orchestrate-docker") })
		}
		tmp := filepath.Join(simhost.StateDir(h1.Name), "tmp") // containerd's TMPDIR in the host
		if err := os.Chmod(tmp, 0o1777); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(tmp, 0o755) })
		spam := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c",
			`while :; do d=$(mktemp -d "$0/ctd-checkpointXXXXXX") && echo bogus > "$d/inventory.img" && echo bogus > "$d/pages-1.img"; sleep 0.01; done`, tmp)
		if err := spam.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			spam.Process.Kill()
			spam.Wait()
			ents, _ := os.ReadDir(tmp)
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), "ctd-checkpoint") {
					os.RemoveAll(filepath.Join(tmp, e.Name()))
				}
			}
		})
		p2 := simhost.Port()
		h1.RunDockerWorkload(simhost.Workload{Name: "atk2", MiB: 16, Port: p2})
		before, err := h1.ProbeReset(p2)
		if err != nil {
			t.Fatal(err)
		}
		if out, errOut, code := h1.CLI("migrate", "atk2", "--to", h2.Name); code != 0 {
			t.Fatalf("migrate: exit %d: %s%s", code, out, errOut)
		}
		continued(t, h2, p2, before)
		for _, h := range []*simhost.AgentHost{h1, h2} {
			onlyFile(t, h, "/dev/shm/orchestrate-docker", "planted.img")
		}
	})

	// A symbolic link to /etc, then a directory entry of the same name and
	// a file in it: the directory replaces the link inside the container's
	// layer, and the file lands there, not in /etc.
	t.Run("symlink-then-directory", func(t *testing.T) {
		scenario(t, fmt.Sprintf(`[{"name": "rootfs/evil", "type": "symlink", "link": "/etc"},
			{"name": "rootfs/evil/", "type": "dir", "mode": %d},
			{"name": "rootfs/evil/%s", "type": "file", "body": "planted"}]`, 0o1700, planted))
		before, err := h1.ProbeReset(port)
		if err != nil {
			t.Fatal(err)
		}
		if out, errOut, code := h1.CLI("migrate", "atk", "--to", h2.Name); code != 0 {
			t.Fatalf("migrate: exit %d: %s%s", code, out, errOut)
		}
		continued(t, h2, port, before)
		etcUnchanged(t, planted)
		if got := strings.TrimSpace(h2.MustDocker("exec", "atk", "cat", "/evil/"+planted)); got != "planted" {
			t.Fatalf("the entry is not inside the container: %q", got)
		}
	})
}

// TestAttackPodman: three Podman agents under a flood of idle connections,
// a source that stops mid-stream, and a local user who made the old
// pre-copy directory first.
func TestAttackPodman(t *testing.T) {
	t.Setenv("ORCHESTRATE_TRANSFER_STALL_TIMEOUT", "3s") // inherited by the agents
	c := simhost.NewCluster(t, 3)

	// 2,000 idle connections to each of an agent's ports from a stranger's
	// address: the agent closes them itself (handshake deadlines, caps),
	// answers `status` throughout, and its open files return to baseline.
	t.Run("idle-connections", func(t *testing.T) {
		h := c.Hosts[0]
		attacker := simhost.New(t)
		pid := agentPID(t, h)
		base := openFiles(pid)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var statusErr error
		var statusMu sync.Mutex
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(300 * time.Millisecond):
				}
				start := time.Now()
				out, errOut, code := h.CLI("status")
				if code != 0 || time.Since(start) > 5*time.Second {
					statusMu.Lock()
					statusErr = fmt.Errorf("status: exit %d after %s: %s%s", code, time.Since(start), out, errOut)
					statusMu.Unlock()
				}
			}
		}()
		var conns []net.Conn
		defer func() {
			for _, cn := range conns {
				cn.Close()
			}
		}()
		start := time.Now()
		err := simhost.InNetns(simhost.NetnsPath(attacker.Name), func() error {
			d := net.Dialer{Timeout: 2 * time.Second}
			for _, port := range []string{"7946", "7947", "7948", "7922"} {
				for range 2000 {
					cn, err := d.Dial("tcp", net.JoinHostPort(h.IP, port))
					if err != nil {
						return fmt.Errorf("dial %s: %w", port, err)
					}
					conns = append(conns, cn)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("opened %d connections in %s; the agent had %d open files", len(conns), time.Since(start).Round(time.Millisecond), base)
		// The attacker keeps every connection open; the agent must let go.
		peak, settled := 0, false
		for end := time.Now().Add(40 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
			n := openFiles(pid)
			peak = max(peak, n)
			if n <= base+8 && time.Since(start) > 2*time.Second {
				settled = true
				break
			}
		}
		close(stop)
		wg.Wait()
		t.Logf("agent open files: baseline %d, peak %d, settled after %s", base, peak, time.Since(start).Round(time.Second))
		if !settled {
			t.Fatalf("the agent still holds %d files (baseline %d) with the attacker's connections open", openFiles(pid), base)
		}
		if peak > base+4*64+32 {
			t.Errorf("peak of %d open files: the per-address caps did not hold (baseline %d)", peak, base)
		}
		statusMu.Lock()
		defer statusMu.Unlock()
		if statusErr != nil {
			t.Fatal(statusErr)
		}
		c.WaitFormed(30 * time.Second)
	})

	// The old pre-copy directory /tmp/orchestrate-precopy/HOST, made first
	// by nobody: the target keeps its bases in its own data_dir.
	t.Run("precopy-dir-made-by-nobody", func(t *testing.T) {
		src, dst := roles(t, c)
		old := "/tmp/orchestrate-precopy/" + dst.Name
		asNobody(t, dst, "mkdir -p -m 0777 "+old+" && echo theirs > "+old+"/planted.base")
		t.Cleanup(func() { os.RemoveAll(old) })
		port := simhost.Port()
		src.RunWorkload(simhost.Workload{Name: "pc", MiB: 16, Port: port, Labels: map[string]string{"orchestrate.precopy": "on"}})
		before, err := src.ProbeReset(port)
		if err != nil {
			t.Fatal(err)
		}
		mark := fileSize(simhost.StateDir(dst.Name) + "/agent.log")
		if out, errOut, code := src.CLI("migrate", "pc", "--to", dst.Name); code != 0 {
			t.Fatalf("migrate: exit %d: %s%s", code, out, errOut)
		}
		continued(t, dst, port, before)
		if !logHas(simhost.StateDir(dst.Name)+"/agent.log", mark, "pre-copy round received") {
			t.Fatal("no pre-copy round reached the target")
		}
		onlyFile(t, dst, old, "planted.base")
		fi, err := os.Lstat(filepath.Join(simhost.DataDir(dst.Name), "orchestrate", "precopy"))
		if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Fatalf("the target's own pre-copy directory: %v %v", fi, err)
		}
	})

	// The source agent stops (SIGSTOP) while it streams: after the stall
	// timeout the target's restore fails and lets go of the container;
	// once the source continues, the migration rolls back, and the next
	// migration of the container works.
	t.Run("stalled-stream", func(t *testing.T) {
		src, dst := roles(t, c)
		port := simhost.Port()
		src.RunWorkload(simhost.Workload{Name: "st", MiB: 64, Port: port, Labels: map[string]string{"orchestrate.precopy": "off"}})
		before, err := src.ProbeReset(port)
		if err != nil {
			t.Fatal(err)
		}
		shape(t, "30mbit", src)
		mark := fileSize(simhost.StateDir(dst.Name) + "/agent.log")
		type result struct {
			code int
			out  string
		}
		done := make(chan result, 1)
		go func() {
			out, errOut, code := src.CLI("migrate", "st", "--to", dst.Name)
			done <- result{code, out + errOut}
		}()
		waitUntil(t, 90*time.Second, func() error {
			select {
			case r := <-done:
				t.Fatalf("the migration ended before the test stopped its source: exit %d: %s", r.code, r.out)
			default:
			}
			for _, r := range migrations(t, src) {
				if r.Name == "st" && (r.Phase == "Transferring" || r.Phase == "Restoring") {
					return nil
				}
			}
			return fmt.Errorf("the migration of st is not streaming yet")
		})
		pid := agentPID(t, src)
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		stopped := true
		defer func() {
			if stopped {
				syscall.Kill(pid, syscall.SIGCONT)
			}
		}()
		defer func() {
			if t.Failed() {
				b, _ := os.ReadFile(simhost.StateDir(dst.Name) + "/agent.log")
				if int64(len(b)) > mark {
					t.Logf("target's log since the migration began:\n%s", b[mark:])
				}
			}
		}()
		waitUntil(t, 20*time.Second, func() error {
			if !logHas(simhost.StateDir(dst.Name)+"/agent.log", mark, "stream stalled") {
				return fmt.Errorf("the target has not given up the stalled stream")
			}
			if dst.Exists("st") {
				return fmt.Errorf("the target still holds a copy")
			}
			return nil
		})
		syscall.Kill(pid, syscall.SIGCONT)
		stopped = false
		if r := <-done; r.code != 1 {
			t.Fatalf("the stalled migration: exit %d, want 1: %s", r.code, r.out)
		}
		// Rows come sorted by ID, not by time: pick st's own record (its
		// only one so far).
		var last migrationRow
		for _, r := range settledMigrations(t, src, 30*time.Second) {
			if r.Name == "st" {
				last = r
			}
		}
		if last.Phase != "RolledBack" {
			t.Fatalf("the stalled migration ended %s: %+v", last.Phase, last)
		}
		after := continued(t, src, port, before)
		onlyOn(t, c, "st", src)
		shape(t, "off", src)
		c.WaitFormed(30 * time.Second) // the stopped source was suspected meanwhile
		if out, errOut, code := src.CLI("migrate", "st", "--to", dst.Name); code != 0 {
			t.Fatalf("the next migration: exit %d: %s%s", code, out, errOut)
		}
		continued(t, dst, port, after)
		onlyOn(t, c, "st", dst)
	})
}

// A secret file others can read is refused, by the agent and by `config
// validate`, as ssh refuses such a key.
func TestAttackSecretMode(t *testing.T) {
	bin := simhost.Binary(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "cluster.key")
	if out, err := exec.Command(bin, "keygen", key).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v: %s", err, out)
	}
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "agent.yaml")
	body := fmt.Sprintf("node: {name: x, data_dir: %s/d}\ncluster: {bind: 127.77.9.3:17946, secret_file: %s}\nengine: {type: none}\n", dir, key)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"agent", "--config", cfg}, {"config", "validate", cfg}} {
		cmd := exec.Command(bin, args...)
		out, err := cmd.CombinedOutput()
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "mode 0644") || !strings.Contains(string(out), "chmod 0600") {
			t.Errorf("orchestrate %s with a 0644 secret: %v (exit %d): %s", args[0], err, cmd.ProcessState.ExitCode(), out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "d")); err == nil {
		t.Error("the agent started far enough to make its data directory")
	}
}
