package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/internal/pause"
	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// localRebootHost is a one-host cluster of the given engine whose reboot
// command only records that it ran (the test then simulates the reboot).
func localRebootHost(t *testing.T, engine string) *simhost.AgentHost {
	c := simhost.NewClusterEnginesWith(t, []string{engine}, func(i int, h *simhost.Host) string {
		dir := simhost.StateDir(h.Name)
		script := fmt.Sprintf("#!/bin/sh\n# a fake reboot: record it; the test simulates the reboot itself\ndate +%%s.%%N >>%s/reboots\n", dir)
		if err := os.WriteFile(dir+"/fake-reboot.sh", []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("policy:\n  reboot:\n    mode: local\n    command: %s/fake-reboot.sh\n", dir)
	})
	return c.Hosts[0]
}

// rebootDir is the host's node.data_dir/reboot.
func rebootDir(h *simhost.AgentHost) string {
	return filepath.Join(simhost.DataDir(h.Name), "orchestrate", "reboot")
}

// waitRebootCommand waits until the host's fake reboot command ran.
func waitRebootCommand(t *testing.T, h *simhost.AgentHost, d time.Duration) time.Time {
	t.Helper()
	var at time.Time
	waitUntil(t, d, func() error {
		b, err := os.ReadFile(simhost.StateDir(h.Name) + "/reboots")
		if err != nil {
			return err
		}
		var sec float64
		fmt.Sscan(strings.TrimSpace(string(b)), &sec)
		at = time.Unix(0, int64(sec*1e9))
		return nil
	})
	return at
}

type manifestView struct {
	Complete bool `json:"complete"`
	Entries  []struct {
		ID    string `json:"id"`
		Name  string `json:"name"`
		File  string `json:"file"`
		Size  int64  `json:"size"`
		State string `json:"state"`
	} `json:"entries"`
}

func readManifest(h *simhost.AgentHost) (manifestView, error) {
	var m manifestView
	b, err := os.ReadFile(filepath.Join(rebootDir(h), "save", "manifest.json"))
	if err != nil {
		return m, err
	}
	return m, json.Unmarshal(b, &m)
}

func manifestStates(m manifestView) string {
	var s []string
	for _, e := range m.Entries {
		s = append(s, e.Name+"="+e.State)
	}
	return strings.Join(s, " ")
}

type rebootStatus struct {
	Sequence *struct {
		Phase   string `json:"phase"`
		Mode    string `json:"mode"`
		Outcome string `json:"outcome"`
	} `json:"sequence"`
	Kept []struct {
		ID    string `json:"id"`
		Name  string `json:"name"`
		Error string `json:"error"`
	} `json:"kept"`
}

func rebootStatusOf(t *testing.T, h *simhost.AgentHost) rebootStatus {
	t.Helper()
	var st rebootStatus
	if err := h.JSON(&st, "reboot", "--status"); err != nil {
		t.Fatal(err)
	}
	return st
}

// waitDone waits until the host's reboot sequence ended.
func waitRebootDone(t *testing.T, h *simhost.AgentHost, d time.Duration) rebootStatus {
	t.Helper()
	var st rebootStatus
	waitUntil(t, d, func() error {
		if err := h.JSON(&st, "reboot", "--status"); err != nil {
			return err
		}
		if st.Sequence == nil || st.Sequence.Phase != "done" {
			return fmt.Errorf("sequence %+v", st.Sequence)
		}
		return nil
	})
	return st
}

// A local reboot of a Podman host: every container comes back after a
// simulated reboot with its memory, its counter going on and its
// established TCP connection; the opted-out one is left alone; priority
// sets the order.
func TestE2ELocalRebootPodman(t *testing.T) {
	h := localRebootHost(t, "podman")
	type wl struct {
		port int
		rep  simhost.Report
	}
	ws := map[string]*wl{}
	for _, w := range []simhost.Workload{
		{Name: "lr-low", MiB: 16},
		{Name: "lr-vip", MiB: 16, Labels: map[string]string{"orchestrate.priority": "10"}},
		{Name: "lr-conn", MiB: 16, SelfConn: true},
		{Name: "lr-pinned", MiB: 8, Labels: map[string]string{"orchestrate.migrate": "false"}},
	} {
		w.Port = simhost.Port()
		h.RunWorkload(w)
		ws[w.Name] = &wl{port: w.Port}
	}
	// The plan, changing nothing.
	var plan struct {
		Chosen string `json:"chosen"`
		Local  struct {
			Save []struct {
				Name string `json:"name"`
			} `json:"save"`
			Skipped []struct {
				Name   string `json:"name"`
				Reason string `json:"reason"`
			} `json:"skipped"`
		} `json:"local"`
	}
	if err := h.JSON(&plan, "reboot", "--local", "--dry-run"); err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, s := range plan.Local.Save {
		order = append(order, s.Name)
	}
	if plan.Chosen != "local" || strings.Join(order, ",") != "lr-vip,lr-conn,lr-low" || len(plan.Local.Skipped) != 1 || plan.Local.Skipped[0].Name != "lr-pinned" {
		t.Fatalf("plan %+v", plan)
	}
	for name, w := range ws {
		w.rep = h.WaitReport(w.port, 10*time.Second)
		if !h.Running(name) {
			t.Fatalf("the dry run touched %s", name)
		}
	}
	start := time.Now()
	out, errOut, code := h.CLI("reboot", "--local", "--reason", "kernel upgrade")
	if code != 0 {
		t.Fatalf("reboot: exit %d\n%s%s", code, out, errOut)
	}
	cmdAt := waitRebootCommand(t, h, 60*time.Second)
	t.Logf("reboot command %.2fs after `orchestrate reboot --local`", cmdAt.Sub(start).Seconds())
	for _, name := range []string{"lr-vip", "lr-conn", "lr-low"} {
		if h.Exists(name) {
			t.Fatalf("%s still exists after its save", name)
		}
	}
	if !h.Running("lr-pinned") {
		t.Fatal("the opted-out container was touched")
	}
	h.Reboot(t)
	if h.Running("lr-pinned") {
		t.Fatal("the simulated reboot left a container running")
	}
	boot := time.Now()
	h.StartAgent()
	for _, name := range []string{"lr-vip", "lr-conn", "lr-low"} {
		w := ws[name]
		after := h.WaitReport(w.port, 90*time.Second)
		if after.Start != w.rep.Start || after.Checksum != w.rep.Checksum || after.Counter < w.rep.Counter {
			t.Fatalf("%s after the reboot: %+v; before: %+v", name, after, w.rep)
		}
		if name == "lr-conn" && !after.SelfConn {
			t.Fatalf("%s lost its established connection", name)
		}
	}
	t.Logf("agent start to all 3 answering: %.2fs", time.Since(boot).Seconds())
	st := waitRebootDone(t, h, 60*time.Second)
	if !strings.HasPrefix(st.Sequence.Outcome, "rebooted") || len(st.Kept) != 0 {
		t.Fatalf("status %+v", st)
	}
	if _, err := os.Stat(filepath.Join(rebootDir(h), "save")); !os.IsNotExist(err) {
		t.Fatalf("the save was not cleaned up: %v", err)
	}
	var evs []eventRow
	if err := h.JSON(&evs, "events"); err != nil {
		t.Fatal(err)
	}
	// In the order they were restored: each event is stamped when its
	// container came back. Its place in the log may differ, because an
	// event written while the restarted agent has no leader yet is retried.
	var rows []eventRow
	for _, e := range evs {
		if e.Action == "restored" {
			rows = append(rows, e)
		}
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].Time.Before(rows[j].Time) })
	var restored []string
	for _, e := range rows {
		restored = append(restored, e.Result)
	}
	if strings.Join(restored, ",") != "lr-vip,lr-conn,lr-low" {
		t.Fatalf("restore events %v", restored)
	}
	var ms []struct {
		Name     string `json:"name"`
		Cordoned bool   `json:"cordoned"`
	}
	if err := h.JSON(&ms, "members"); err != nil || len(ms) != 1 || ms[0].Cordoned {
		t.Fatalf("members %+v %v", ms, err)
	}
}

// The same on a Docker host (Docker has no tcp-established: no connection).
func TestE2ELocalRebootDocker(t *testing.T) {
	h := localRebootHost(t, "docker")
	ports := map[string]int{}
	reps := map[string]simhost.Report{}
	for _, name := range []string{"dr-a", "dr-b"} {
		ports[name] = simhost.Port()
		h.RunDockerWorkload(simhost.Workload{Name: name, MiB: 16, Port: ports[name]})
		reps[name] = h.WaitReport(ports[name], 10*time.Second)
	}
	if out, errOut, code := h.CLI("reboot", "--local"); code != 0 {
		t.Fatalf("reboot: exit %d\n%s%s", code, out, errOut)
	}
	waitRebootCommand(t, h, 60*time.Second)
	for name := range ports {
		if s := h.DockerState(name); s != "" {
			t.Fatalf("%s is %s after its save", name, s)
		}
	}
	h.Reboot(t)
	h.StartAgent()
	for name, port := range ports {
		after := h.WaitReport(port, 90*time.Second)
		if after.Start != reps[name].Start || after.Checksum != reps[name].Checksum || after.Counter < reps[name].Counter {
			t.Fatalf("%s after the reboot: %+v; before: %+v", name, after, reps[name])
		}
	}
	if st := waitRebootDone(t, h, 60*time.Second); !strings.HasPrefix(st.Sequence.Outcome, "rebooted") || len(st.Kept) != 0 {
		t.Fatalf("status %+v", st)
	}
}

// Failures during a local reboot, on one host in one run: the agent is
// killed mid-checkpoint (the next start carries on), one stored checkpoint
// is corrupted before the boot (it is reported, kept and counted; the
// others come back), the agent is killed mid-restore (the next start
// carries on), and the repaired checkpoint is restored by `orchestrate
// restore`.
func TestE2ELocalRebootFailures(t *testing.T) {
	h := localRebootHost(t, "podman")
	names := []string{"lf-a", "lf-b", "lf-c"}
	ports := map[string]int{}
	reps := map[string]simhost.Report{}
	for i, name := range names {
		ports[name] = simhost.Port()
		h.RunWorkload(simhost.Workload{Name: name, MiB: 48, Port: ports[name],
			Labels: map[string]string{"orchestrate.priority": fmt.Sprint(10 - i)}})
		reps[name] = h.WaitReport(ports[name], 10*time.Second)
	}
	// Kill the agent while the second container's checkpoint is being
	// written: the save waits at a pause point (test builds) with its
	// first MiB in the partial file.
	saving := armPause(t, h, pause.RebootSave+"."+names[1])
	if out, errOut, code := h.CLI("reboot", "--local", "--no-wait"); code != 0 {
		t.Fatalf("reboot: exit %d\n%s%s", code, out, errOut)
	}
	waitFile(t, saving+".reached", 60*time.Second)
	waitUntil(t, 10*time.Second, func() error {
		m, err := readManifest(h)
		if err != nil || len(m.Entries) < 2 || m.Entries[0].State != "saved" {
			return fmt.Errorf("manifest %v (%v)", manifestStates(m), err)
		}
		fi, err := os.Stat(filepath.Join(rebootDir(h), "save", m.Entries[1].ID+".tar.partial"))
		if err != nil || fi.Size() < 1<<20 {
			return fmt.Errorf("no partial checkpoint of %s yet", m.Entries[1].Name)
		}
		return nil
	})
	h.StopAgent(syscall.SIGKILL)
	os.Remove(saving)
	m, _ := readManifest(h)
	t.Logf("agent killed mid-checkpoint: %s", manifestStates(m))
	h.StartAgent()
	waitRebootCommand(t, h, 90*time.Second)
	m, err := readManifest(h)
	if err != nil || !m.Complete {
		t.Fatalf("manifest after carrying on: %+v %v", m, err)
	}
	// Corrupt the second container's checkpoint.
	bad := m.Entries[1]
	flipArchiveByte(t, filepath.Join(rebootDir(h), "save", bad.File), bad.Size/2)
	h.Reboot(t)
	// Kill the agent while the first restore is under way (paused with its
	// first MiB handed to the engine).
	restoring := armPause(t, h, pause.RebootRestore+"."+names[0])
	h.StartAgent()
	waitFile(t, restoring+".reached", 60*time.Second)
	waitUntil(t, 10*time.Second, func() error {
		m, err := readManifest(h)
		if err != nil || len(m.Entries) < 3 || m.Entries[0].State != "restoring" {
			return fmt.Errorf("manifest %v (%v)", manifestStates(m), err)
		}
		return nil
	})
	m, _ = readManifest(h)
	h.StopAgent(syscall.SIGKILL)
	os.Remove(restoring)
	t.Logf("agent killed mid-restore: %s", manifestStates(m))
	h.StartAgent()
	for _, name := range []string{names[0], names[2]} {
		after := h.WaitReport(ports[name], 90*time.Second)
		if after.Start != reps[name].Start || after.Checksum != reps[name].Checksum || after.Counter < reps[name].Counter {
			t.Fatalf("%s after the reboot: %+v; before: %+v", name, after, reps[name])
		}
	}
	st := waitRebootDone(t, h, 60*time.Second)
	if len(st.Kept) != 1 || st.Kept[0].Name != bad.Name || !strings.Contains(st.Kept[0].Error, "does not match its manifest") {
		t.Fatalf("kept %+v", st.Kept)
	}
	if h.Exists(bad.Name) {
		t.Fatalf("the corrupt checkpoint of %s left a container", bad.Name)
	}
	metrics, err := h.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	if v := simhost.MetricValue(metrics, `orchestrate_local_restores_total{result="failed"}`); v != 1 {
		t.Fatalf("failed restores metric %v", v)
	}
	if v := simhost.MetricValue(metrics, "orchestrate_local_checkpoints_kept"); v != 1 {
		t.Fatalf("kept checkpoints metric %v", v)
	}
	var evs []eventRow
	if err := h.JSON(&evs, "events"); err != nil {
		t.Fatal(err)
	}
	reported := false
	for _, e := range evs {
		reported = reported || e.Action == "restore failed; checkpoint kept" && strings.Contains(e.Result, bad.Name)
	}
	if !reported {
		t.Fatalf("no event for the failed restore: %+v", evs)
	}
	// Repair the checkpoint and restore it by hand.
	flipArchiveByte(t, filepath.Join(rebootDir(h), "kept", bad.ID, "checkpoint.tar"), bad.Size/2)
	if out, errOut, code := h.CLI("restore", bad.ID); code != 0 {
		t.Fatalf("restore %s: exit %d\n%s%s", bad.ID, code, out, errOut)
	}
	after := h.WaitReport(ports[bad.Name], 30*time.Second)
	if after.Start != reps[bad.Name].Start || after.Checksum != reps[bad.Name].Checksum {
		t.Fatalf("%s after `orchestrate restore`: %+v; before: %+v", bad.Name, after, reps[bad.Name])
	}
	if st := rebootStatusOf(t, h); len(st.Kept) != 0 {
		t.Fatalf("still kept: %+v", st.Kept)
	}
}

// armPause arms a pause point of h's agent (test builds) and disarms it
// when the test ends; it returns the point's file.
func armPause(t *testing.T, h *simhost.AgentHost, point string) string {
	t.Helper()
	armed := filepath.Join(simhost.PauseDir(h.Name), point)
	if err := os.MkdirAll(filepath.Dir(armed), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Remove(armed + ".reached")
	if err := os.WriteFile(armed, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(armed); os.Remove(armed + ".reached") })
	return armed
}

func flipArchiveByte(t *testing.T, path string, at int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

// A drain-and-reboot with policy.reboot.return: the container that left
// for the reboot live-migrates back once the host is up and uncordoned,
// with its memory and its counter going on.
func TestE2ERebootReturnAfterDrain(t *testing.T) {
	c := simhost.NewClusterWith(t, 3, func(i int, h *simhost.Host) string {
		if i != 1 {
			return ""
		}
		dir := simhost.StateDir(h.Name)
		script := fmt.Sprintf("#!/bin/sh\n# a fake reboot: record it, clear the sentinel, end the agent (the test restarts it)\ndate +%%s.%%N >>%s/reboots\nrm -f %s/reboot-required\nkill -TERM $PPID\n", dir, dir)
		if err := os.WriteFile(dir+"/fake-reboot.sh", []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("policy:\n  reboot:\n    enabled: true\n    mode: drain\n    return: true\n    sentinel_file: %s/reboot-required\n    command: %s/fake-reboot.sh\n    check_interval: 500ms\n", dir, dir)
	})
	h2 := c.Hosts[1]
	port := simhost.Port()
	h2.RunWorkload(simhost.Workload{Name: "ret", MiB: 16, Port: port})
	before := h2.WaitReport(port, 10*time.Second)
	if err := os.WriteFile(simhost.StateDir(h2.Name)+"/reboot-required", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h2.Exited():
	case <-time.After(90 * time.Second):
		t.Fatal("no reboot within 90 s")
	}
	var away *simhost.AgentHost
	for _, h := range []*simhost.AgentHost{c.Hosts[0], c.Hosts[2]} {
		if h.Running("ret") {
			away = h
		}
	}
	if away == nil || h2.Exists("ret") {
		t.Fatal("the container did not leave before the reboot")
	}
	mid := continued(t, away, port, before)
	h2.StartAgent()
	waitUntil(t, 90*time.Second, func() error {
		if !h2.Running("ret") {
			out, _, _ := h2.CLI("events")
			return fmt.Errorf("not back on %s yet; events:\n%s", h2.Name, out)
		}
		return nil
	})
	continued(t, h2, port, mid)
	onlyOn(t, c, "ret", h2)
	st := waitRebootDone(t, h2, 60*time.Second)
	if !strings.HasPrefix(st.Sequence.Outcome, "rebooted; 1 returned") {
		t.Fatalf("outcome %q", st.Sequence.Outcome)
	}
}
