package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/internal/pause"
	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// The fault matrix: a migration is stopped in a chosen phase (a pause point
// of the test build, internal/pause), a fault hits, the migration goes on,
// the fault heals. Every cell then asserts that
//   - the container runs on exactly one host, the same process with the
//     same memory checksum, its counter going on, and exists nowhere else;
//   - the record is terminal within terminalBound of the heal;
//   - no checkpoint, restore or spool file is left on either host.
//
// One cluster serves every cell: each cell runs its own workload and takes
// the roles afresh (the leader is never the source or the target, so that
// killing the leader, the source or the target are separate faults).
//
// Before the cells, one host's clock is run 30 s ahead (a per-process
// offset of the test build) and a migration from it checks that the
// recorded downtime is the source's own measurement, not a difference of
// two clocks; the host keeps the skew for the whole matrix.

// matrixDiskMiB is each host's disk in the matrix (a tmpfs: it costs memory
// only as it fills).
const matrixDiskMiB = 384

// terminalBound is how long after the heal a record may take to end.
const terminalBound = 45 * time.Second

// faultHold is how long a fault lasts before it heals.
const faultHold = 3 * time.Second

type cellRoles struct {
	leader, src, dst *simhost.AgentHost
}

type fault struct {
	name  string
	apply func(t *testing.T, r cellRoles)
	heal  func(t *testing.T, r cellRoles)
}

// fromStart: these faults are in place before the migration starts, and
// last until it failed: a full disk only matters once the target writes the
// memory (the page path's page server, into the container's storage) or
// stages the archive (export/import, in Podman's TMPDIR), which it does as
// the transfer starts. Their cells name the phase where the failure comes;
// no pause point is used.
var fromStart = map[string]bool{"disk": true}

// in runs a command inside h, failing t (not the test that made the host).
func in(t *testing.T, h *simhost.AgentHost, args ...string) {
	t.Helper()
	if out, err := h.Run(args...); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

func script(t *testing.T, args ...string) {
	t.Helper()
	if out, err := runScript(args...); err != nil {
		t.Fatalf("simhost.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// linkRules cut the link between the source and the target both ways
// (inside the source's network namespace).
func linkRules(r cellRoles) [][]string {
	return [][]string{
		{"INPUT", "-s", r.dst.IP, "-j", "DROP"},
		{"OUTPUT", "-d", r.dst.IP, "-j", "DROP"},
	}
}

var faults = map[string]fault{
	"source agent": {"source agent SIGKILL",
		func(t *testing.T, r cellRoles) { r.src.StopAgent(syscall.SIGKILL) },
		func(t *testing.T, r cellRoles) { r.src.StartAgent() }},
	"target agent": {"target agent SIGKILL",
		func(t *testing.T, r cellRoles) { r.dst.StopAgent(syscall.SIGKILL) },
		func(t *testing.T, r cellRoles) { r.dst.StartAgent() }},
	"leader": {"leader SIGKILL",
		func(t *testing.T, r cellRoles) { r.leader.StopAgent(syscall.SIGKILL) },
		func(t *testing.T, r cellRoles) { r.leader.StartAgent() }},
	"source podman": {"source Podman killed",
		func(t *testing.T, r cellRoles) { script(t, "kill-podman", r.src.Name) },
		func(t *testing.T, r cellRoles) { script(t, "start-podman", r.src.Name) }},
	"target podman": {"target Podman killed",
		func(t *testing.T, r cellRoles) { script(t, "kill-podman", r.dst.Name) },
		func(t *testing.T, r cellRoles) { script(t, "start-podman", r.dst.Name) }},
	"link": {"link cut both ways",
		func(t *testing.T, r cellRoles) {
			for _, rule := range linkRules(r) {
				in(t, r.src, append([]string{"iptables", "-I"}, rule...)...)
			}
		},
		func(t *testing.T, r cellRoles) {
			for _, rule := range linkRules(r) {
				in(t, r.src, append([]string{"iptables", "-D"}, rule...)...)
			}
		}},
	"disk": {"target disk full",
		// Both the host's disk (its storage, where the page path's pages
		// go; a small tmpfs in this cluster) and Podman's TMPDIR (where
		// an import stages its archive) are left with 4 MiB.
		func(t *testing.T, r cellRoles) {
			in(t, r.dst, "mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", simhost.StateDir(r.dst.Name)+"/tmp")
			data := simhost.DataDir(r.dst.Name)
			in(t, r.dst, "sh", "-c", "fallocate -l $(( $(df -m --output=avail "+data+" | tail -1) - 4 ))M "+data+"/fill")
		},
		// Lazily: the target's Podman may still hold its staging file there.
		func(t *testing.T, r cellRoles) {
			in(t, r.dst, "rm", "-f", simhost.DataDir(r.dst.Name)+"/fill")
			in(t, r.dst, "umount", "-l", simhost.StateDir(r.dst.Name)+"/tmp")
		}},
}

// cells: fault crossed with phase, where the pair makes sense.
var cells = []struct{ fault, phase string }{
	{"source agent", pause.Checkpointing}, {"source agent", pause.Transferring}, {"source agent", pause.Restoring}, {"source agent", pause.Confirming},
	{"target agent", pause.Checkpointing}, {"target agent", pause.Transferring}, {"target agent", pause.Restoring}, {"target agent", pause.Confirming},
	{"leader", pause.Checkpointing}, {"leader", pause.Transferring}, {"leader", pause.Restoring}, {"leader", pause.Confirming},
	{"source podman", pause.Checkpointing}, {"source podman", pause.Transferring}, {"source podman", pause.Confirming},
	{"target podman", pause.Checkpointing}, {"target podman", pause.Transferring}, {"target podman", pause.Restoring}, {"target podman", pause.Confirming},
	{"link", pause.Checkpointing}, {"link", pause.Transferring}, {"link", pause.Restoring}, {"link", pause.Confirming},
	{"disk", pause.Transferring},
}

// pauseHost is where a phase's pause point is.
func pauseHost(phase string, r cellRoles) *simhost.AgentHost {
	if phase == pause.Restoring {
		return r.dst
	}
	return r.src
}

// recordPhase is the phase the record shows while the point holds.
var recordPhase = map[string]string{
	pause.Checkpointing: "Checkpointing", pause.Transferring: "Transferring",
	pause.Restoring: "Restoring", pause.Confirming: "Confirming",
}

type cellResult struct {
	cell, outcome string
	fromFault     time.Duration // from the fault to the terminal record
	toTerminal    time.Duration // from the heal to the terminal record
	downtimeMS    int64
	failed        bool
}

func TestE2EFaultMatrix(t *testing.T) {
	start := time.Now()
	// Each host's storage on a disk of its own, which the disk fault fills.
	c := simhost.NewClusterOpts(t, 3, simhost.Options{DiskMiB: matrixDiskMiB})
	for _, h := range c.Hosts {
		if err := os.MkdirAll(simhost.PauseDir(h.Name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("cluster up in %s", time.Since(start).Round(time.Second))

	t.Run("one clock", func(t *testing.T) { oneClock(t, c) })

	var results []cellResult
	for i, cl := range cells {
		name := fmt.Sprintf("%s/%s", cl.fault, cl.phase)
		var res cellResult
		ok := t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			res = runCell(t, c, i, cl.fault, cl.phase)
		})
		res.cell, res.failed = name, !ok
		results = append(results, res)
		if !ok {
			recoverCluster(t, c)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "fault matrix (%d cells, %s in all; terminal bound %s after the heal)\n", len(results), time.Since(start).Round(time.Second), terminalBound)
	fmt.Fprintf(&b, "%-30s %-11s %11s %11s %9s  %s\n", "CELL", "OUTCOME", "AFTER HEAL", "AFTER FAULT", "DOWNTIME", "CHECKS")
	for _, r := range results {
		checks := "ok"
		if r.failed {
			checks = "FAILED"
		}
		dt := "-"
		if r.downtimeMS > 0 {
			dt = fmt.Sprintf("%.2fs", float64(r.downtimeMS)/1000)
		}
		fmt.Fprintf(&b, "%-30s %-11s %10.1fs %10.1fs %9s  %s\n", r.cell, r.outcome, r.toTerminal.Seconds(), r.fromFault.Seconds(), dt, checks)
	}
	t.Log("\n" + b.String())
}

// rolesNow picks the roles: the leader (once it has led for a moment: an
// agent that just came back may still cause an election), and the two
// others by name.
func rolesNow(t *testing.T, c *simhost.Cluster) cellRoles {
	t.Helper()
	l := c.Leader()
	for stable := time.Now().Add(20 * time.Second); time.Now().Before(stable); {
		time.Sleep(time.Second)
		if again := c.Leader(); again == l {
			break
		} else {
			l = again
		}
	}
	var others []*simhost.AgentHost
	for _, h := range c.Hosts {
		if h != l {
			others = append(others, h)
		}
	}
	sort.Slice(others, func(i, j int) bool { return others[i].Name < others[j].Name })
	return cellRoles{leader: l, src: others[0], dst: others[1]}
}

// oneClock runs the source's clock 30 s ahead and checks that the recorded
// downtime is what the workload saw, not 30 s off.
func oneClock(t *testing.T, c *simhost.Cluster) {
	r := rolesNow(t, c)
	r.src.StopAgent(syscall.SIGTERM)
	r.src.Env = []string{"ORCHESTRATE_TEST_CLOCK_OFFSET=30s"}
	r.src.StartAgent()
	c.WaitFormed(60 * time.Second)
	port := simhost.Port()
	r.src.RunWorkload(simhost.Workload{Name: "clk", MiB: 32, Port: port, Labels: map[string]string{"orchestrate.precopy": "off"}})
	before, _ := r.src.ProbeReset(port)
	if out, errOut, code := r.leader.CLI("migrate", "clk", "--to", r.dst.Name); code != 0 {
		t.Fatalf("migrate: exit %d\n%s%s", code, out, errOut)
	}
	after := continued(t, r.dst, port, before)
	var row migrationRow
	for _, m := range settledMigrations(t, r.leader, 15*time.Second) {
		if m.Name == "clk" {
			row = m
		}
	}
	gap := after.MaxGapMS
	t.Logf("source clock +30 s: recorded downtime %d ms, the workload saw a gap of %d ms", row.DowntimeMS, gap)
	if row.Phase != "Done" || row.DowntimeMS <= 0 || row.DowntimeMS > 10000 {
		t.Fatalf("record %+v", row)
	}
	if d := row.DowntimeMS - gap; d > 1500 || d < -1500 {
		t.Fatalf("recorded downtime %d ms, the workload saw %d ms", row.DowntimeMS, gap)
	}
	in(t, r.dst, "podman", "rm", "-f", "-t", "0", "clk")
}

// startMigration asks the leader to migrate name to dst, retrying while
// an election is under way or while a leader that restarted in the last
// cell has not yet heard the target's gossip (it refuses a target it does
// not see alive).
func startMigration(t *testing.T, r cellRoles, name string) migrationRow {
	t.Helper()
	var rec migrationRow
	var err error
	for deadline := time.Now().Add(15 * time.Second); ; {
		if err = r.leader.JSON(&rec, "migrate", name, "--to", r.dst.Name, "--no-wait"); err == nil {
			return rec
		}
		if !(strings.Contains(err.Error(), "leader") || strings.Contains(err.Error(), "not alive")) || time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func runCell(t *testing.T, c *simhost.Cluster, i int, faultName, phase string) cellResult {
	f := faults[faultName]
	r := rolesNow(t, c)
	baseline := map[string][]string{r.src.Name: scratch(r.src), r.dst.Name: scratch(r.dst)}
	name := fmt.Sprintf("fm%02d", i)
	port := simhost.Port()
	r.src.RunWorkload(simhost.Workload{Name: name, MiB: 16, Port: port, Labels: map[string]string{"orchestrate.precopy": "off"}})
	before, _ := r.src.ProbeReset(port)

	var rec migrationRow
	var applied time.Time
	if fromStart[faultName] {
		t.Logf("%s: %s -> %s (leader %s); fault from the start: %s", name, r.src.Name, r.dst.Name, r.leader.Name, f.name)
		f.apply(t, r)
		applied = time.Now()
		rec = startMigration(t, r, name)
		waitRecordFailed(t, c, rec.ID, 30*time.Second)
	} else {
		ph := pauseHost(phase, r)
		armed := filepath.Join(simhost.PauseDir(ph.Name), phase)
		os.Remove(armed + ".reached")
		if err := os.WriteFile(armed, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(armed)
		rec = startMigration(t, r, name)
		waitFile(t, armed+".reached", 30*time.Second)
		waitRecordPhase(t, c, rec.ID, recordPhase[phase], 15*time.Second)
		t.Logf("%s: %s -> %s (leader %s), paused at %s on %s; fault: %s", name, r.src.Name, r.dst.Name, r.leader.Name, phase, ph.Name, f.name)
		f.apply(t, r)
		applied = time.Now()
		os.Remove(armed) // the migration goes on, into the fault
	}
	time.Sleep(faultHold)
	f.heal(t, r)
	healed := time.Now()

	end := waitTerminal(t, c, rec.ID, terminalBound)
	res := cellResult{outcome: end.Phase, toTerminal: time.Since(healed), fromFault: time.Since(applied), downtimeMS: end.DowntimeMS}
	t.Logf("%s: %s %.1f s after the heal (%s)", name, end.Phase, res.toTerminal.Seconds(), end.Error)
	if faultName == "disk" && !strings.Contains(strings.ToLower(end.Error), "no space") {
		t.Errorf("the cause (no space left) is not in the record: %q", end.Error)
	}

	// Exactly one running copy, with its memory, going on.
	c.WaitFormed(60 * time.Second)
	var where []*simhost.AgentHost
	for _, h := range c.Hosts {
		if h.Running(name) {
			where = append(where, h)
		}
	}
	if len(where) != 1 {
		t.Fatalf("%s runs on %d hosts", name, len(where))
	}
	want := r.src
	if end.Phase == "Done" {
		want = r.dst
	}
	if where[0] != want {
		t.Fatalf("%s runs on %s, the record (%s) says %s", name, where[0].Name, end.Phase, want.Name)
	}
	continued(t, where[0], port, before)
	onlyOn(t, c, name, where[0])
	if end.Phase == "Done" && (end.DowntimeMS < 0 || end.DowntimeMS > 30000) {
		t.Errorf("recorded downtime %d ms", end.DowntimeMS)
	}
	// Nothing left behind.
	for _, h := range []*simhost.AgentHost{r.src, r.dst} {
		if extra := leftovers(h, baseline[h.Name]); len(extra) > 0 {
			t.Errorf("left on %s: %v", h.Name, extra)
		}
	}
	in(t, where[0], "podman", "rm", "-f", "-t", "0", name)
	return res
}

// scratch lists what may hold a checkpoint, a restore or a spool file on
// a host: Podman's staging directory (the host's TMPDIR), the agent's
// spool, the page path's recordings (source) and its page directories that
// no container took (target: marked .orchestrate-pages in the storage).
func scratch(h *simhost.AgentHost) []string {
	var out []string
	dirs := []string{simhost.StateDir(h.Name) + "/tmp", simhost.DataDir(h.Name) + "/orchestrate/spool", simhost.DataDir(h.Name) + "/orchestrate/pages"}
	marks, _ := filepath.Glob(simhost.DataDir(h.Name) + "/storage/*-containers/*/.orchestrate-pages")
	for _, m := range marks {
		dirs = append(dirs, filepath.Dir(m))
	}
	for _, dir := range dirs {
		_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				out = append(out, p)
			}
			return nil
		})
	}
	return out
}

func leftovers(h *simhost.AgentHost, baseline []string) []string {
	var extra []string
	for _, p := range scratch(h) {
		if !slices.Contains(baseline, p) {
			extra = append(extra, p)
		}
	}
	return extra
}

func waitFile(t *testing.T, path string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear within %s", path, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// findRecord reads migration id from the first agent that answers.
func findRecord(c *simhost.Cluster, id string) (migrationRow, error) {
	var last error
	for _, h := range c.Hosts {
		var rows []migrationRow
		if err := h.JSON(&rows, "migrations"); err != nil {
			last = err
			continue
		}
		for _, r := range rows {
			if r.ID == id {
				return r, nil
			}
		}
		last = fmt.Errorf("%s has no record %s", h.Name, id)
	}
	return migrationRow{}, last
}

var phaseOrder = map[string]int{"Planned": 0, "Checkpointing": 1, "Transferring": 2, "Restoring": 3, "Confirming": 4, "Done": 5}

func waitRecordPhase(t *testing.T, c *simhost.Cluster, id, phase string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		r, err := findRecord(c, id)
		if err == nil && phaseOrder[r.Phase] >= phaseOrder[phase] {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("record %s not in %s within %s: %+v %v", id, phase, d, r, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitRecordFailed(t *testing.T, c *simhost.Cluster, id string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		r, err := findRecord(c, id)
		if err == nil && (r.Phase == "RollingBack" || r.Phase == "RolledBack" || r.Phase == "Done") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("record %s did not fail within %s: %+v %v", id, d, r, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitTerminal(t *testing.T, c *simhost.Cluster, id string, d time.Duration) migrationRow {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		r, err := findRecord(c, id)
		if err == nil && (r.Phase == "Done" || r.Phase == "RolledBack") {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("record %s not terminal within %s of the heal: %+v %v", id, d, r, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// recoverCluster brings every agent and Podman back after a failed cell,
// so that the next cells run on a whole cluster.
func recoverCluster(t *testing.T, c *simhost.Cluster) {
	for _, h := range c.Hosts {
		for _, p := range []string{pause.Checkpointing, pause.Transferring, pause.Restoring, pause.Confirming} {
			os.Remove(filepath.Join(simhost.PauseDir(h.Name), p))
		}
		_, _ = h.Run("sh", "-c", "iptables -F INPUT; iptables -F OUTPUT; rm -f "+simhost.DataDir(h.Name)+"/fill; umount -l "+simhost.StateDir(h.Name)+"/tmp 2>/dev/null; true")
		if _, err := os.Stat(simhost.StateDir(h.Name) + "/podman.pid"); err != nil {
			_, _ = runScript("start-podman", h.Name)
		}
		select {
		case <-h.Exited():
			h.StartAgent()
		default:
		}
	}
	c.WaitFormed(60 * time.Second)
}
