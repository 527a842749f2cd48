package e2e

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/internal/simhost"
)

type snapshotRow struct {
	ID           string `json:"id"`
	Container    string `json:"container"`
	Name         string `json:"name"`
	Host         string `json:"host"`
	StoreHost    string `json:"store_host"`
	File         string `json:"file"`
	Size         int64  `json:"size"`
	SHA256       string `json:"sha256"`
	Reason       string `json:"reason"`
	LeaveRunning bool   `json:"leave_running"`
	FrozenTime   int64  `json:"frozen_time"`
	WallTime     int64  `json:"wall_time"`
}

// advancing waits until the workload on h answers with a higher counter
// than before, from the same process.
func advancing(t *testing.T, h *simhost.AgentHost, port int, before simhost.Report) simhost.Report {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rep, err := h.Probe(port)
		if err == nil && rep.Start == before.Start && rep.Counter > before.Counter {
			return rep
		}
		if time.Now().After(deadline) {
			t.Fatalf("workload on %s stopped counting: %+v (err %v); before %+v", h.Name, rep, err, before)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestE2EForensics takes leave-running snapshots of a workload through the
// CLI, to a local file and into the snapshot store, inspects them offline,
// checks retention against the files, and restores a snapshot on another
// host with its memory intact.
func TestE2EForensics(t *testing.T) {
	c := simhost.NewCluster(t, 2)
	h1, h2 := c.Hosts[0], c.Hosts[1]
	port := simhost.Port()
	marker := fmt.Sprintf("forensic-%d", port)
	h1.RunWorkload(simhost.Workload{Name: "f1", MiB: 32, Port: port, Args: []string{"-marker", marker, "-file", "/data/x.txt"}})
	before, err := h1.Probe(port)
	if err != nil {
		t.Fatal(err)
	}

	// 1. A leave-running checkpoint to a file on the CLI's machine, asked
	// through the other host's agent.
	dir := t.TempDir()
	file := filepath.Join(dir, "f1.tar")
	out, errOut, code := h2.CLI("checkpoint", "f1", "--leave-running", "--output", file)
	if code != 0 {
		t.Fatalf("checkpoint: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("checkpoint: %s", out)
	if !strings.Contains(out, "frozen") || !strings.Contains(out, "left running") {
		t.Errorf("checkpoint does not report the freeze: %q", out)
	}
	if _, err := os.Stat(file + ".partial"); err == nil {
		t.Errorf("partial file left behind")
	}
	atCheckpoint := advancing(t, h1, port, before)
	if !h1.Running("f1") {
		t.Fatal("f1 stopped after a leave-running checkpoint")
	}

	// 2. inspect finds the process, its listening socket, the file it wrote
	// and the marker it keeps in memory.
	out, errOut, code = h2.CLI("inspect", file, "--grep", marker)
	if code != 0 {
		t.Fatalf("inspect: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("inspect:\n%s", out)
	for _, want := range []string{"f1", "workload", "LISTEN", fmt.Sprintf("127.0.0.1:%d", port), "/data/x.txt", "ORCHESTRATE-MARKER:" + marker, "Memory matches"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q", want)
		}
	}
	var rep struct {
		Container struct{ Name string } `json:"container"`
		Processes []struct {
			Comm    string `json:"comm"`
			Sockets []struct{ State, Local string }
		} `json:"processes"`
		RootfsDiff struct {
			Changed []struct{ Path string }
		} `json:"rootfsDiff"`
		Matches []struct{ Text string } `json:"matches"`
	}
	if err := h2.JSON(&rep, "inspect", file, "--grep", `MARKER:forensic-[0-9]+`, "--regexp"); err != nil {
		t.Fatal(err)
	}
	listening := false
	for _, p := range rep.Processes {
		for _, s := range p.Sockets {
			listening = listening || s.State == "LISTEN" && s.Local == fmt.Sprintf("127.0.0.1:%d", port)
		}
	}
	wrote := slices.ContainsFunc(rep.RootfsDiff.Changed, func(e struct{ Path string }) bool { return strings.HasSuffix(e.Path, "data/x.txt") })
	found := slices.ContainsFunc(rep.Matches, func(m struct{ Text string }) bool { return strings.Contains(m.Text, marker) })
	if rep.Container.Name != "f1" || len(rep.Processes) == 0 || !listening || !wrote || !found {
		t.Errorf("inspect -o json: name %q, %d processes, listening %v, wrote x.txt %v, marker found %v", rep.Container.Name, len(rep.Processes), listening, wrote, found)
	}

	// 3. Corrupted and truncated archives: exit 1 with a clear error.
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(dir, "truncated.tar")
	garbage := filepath.Join(dir, "garbage.tar")
	corrupt := filepath.Join(dir, "corrupt.tar")
	_ = os.WriteFile(truncated, b[:len(b)/2], 0o600)
	_ = os.WriteFile(garbage, []byte("this is not a checkpoint archive\n"), 0o600)
	flipped := slices.Clone(b)
	for i := 0; i < 4096 && i < len(flipped); i++ { // the first tar headers
		flipped[i] ^= 0x5a
	}
	_ = os.WriteFile(corrupt, flipped, 0o600)
	for _, tc := range []struct{ path, want string }{
		{truncated, "truncated"},
		{garbage, "checkpoint archive"},
		{corrupt, "checkpoint archive"},
		{filepath.Join(dir, "missing.tar"), "no such file"},
	} {
		out, errOut, code := h2.CLI("inspect", tc.path)
		if code != 1 || !strings.Contains(errOut, tc.want) || strings.Contains(errOut, "panic") || strings.Contains(errOut, "goroutine") {
			t.Errorf("inspect %s: exit %d, stderr %q, want exit 1 mentioning %q\n%s", filepath.Base(tc.path), code, errOut, tc.want, out)
		}
	}

	// 4. The snapshot store on h2, with retention 2: three snapshots leave the
	// newest two, in the records and on disk alike.
	var ids []string
	for i := 0; i < 3; i++ {
		var rec snapshotRow
		out, errOut, code := h1.CLI("checkpoint", "f1", "--leave-running", "--store", "--store-host", h2.Name, "--keep", "2", "--reason", fmt.Sprint("test ", i), "--json")
		if code != 0 {
			t.Fatalf("checkpoint --store: exit %d\n%s%s", code, out, errOut)
		}
		jsonOf(t, out, &rec)
		if rec.StoreHost != h2.Name || rec.Host != h1.Name || rec.Size == 0 || len(rec.SHA256) != 64 || !rec.LeaveRunning {
			t.Fatalf("stored snapshot: %+v", rec)
		}
		ids = append(ids, rec.ID)
	}
	advancing(t, h1, port, atCheckpoint)
	// h1's replica may trail the leader by a moment.
	var recs []snapshotRow
	deadline := time.Now().Add(5 * time.Second)
	for {
		recs = nil
		if err := h1.JSON(&recs, "snapshots"); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range recs {
			got = append(got, r.ID)
		}
		if slices.Equal(got, ids[1:]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("snapshot records %v, want the newest two of %v", got, ids)
		}
		time.Sleep(100 * time.Millisecond)
	}
	store := simhost.DataDir(h2.Name) + "/orchestrate/snapshots"
	files := strings.Fields(h2.MustRun("ls", store))
	sort.Strings(files)
	want := []string{ids[1] + ".tar", ids[2] + ".tar"}
	sort.Strings(want)
	if !slices.Equal(files, want) {
		t.Fatalf("files in the store %v, want %v", files, want)
	}
	for _, r := range recs {
		sum := strings.Fields(h2.MustRun("sha256sum", filepath.Join(store, r.File)))[0]
		if sum != r.SHA256 {
			t.Errorf("%s: file sha256 %s, record %s", r.ID, sum, r.SHA256)
		}
	}

	// 5. inspect a stored snapshot by its ID, fetched through h1's agent.
	out, errOut, code = h1.CLI("inspect", ids[2], "--grep", marker)
	if code != 0 || !strings.Contains(out, "ORCHESTRATE-MARKER:"+marker) || !strings.Contains(out, "snapshot "+ids[2]) {
		t.Fatalf("inspect %s: exit %d\n%s%s", ids[2], code, out, errOut)
	}

	// The operator removes one: its record and its file go.
	if out, errOut, code := h2.CLI("snapshots", "rm", ids[1]); code != 0 {
		t.Fatalf("snapshots rm: exit %d\n%s%s", code, out, errOut)
	}
	if files := strings.Fields(h2.MustRun("ls", store)); !slices.Equal(files, []string{ids[2] + ".tar"}) {
		t.Fatalf("files after rm: %v", files)
	}

	// 6. The first archive restores, once the original is gone, with the
	// memory it had. (On its own host: Podman's archive names the runtime
	// directories of the host that wrote it, and simulated hosts share one
	// file system, so elsewhere conmon would look in h1's removed ones.)
	h1.MustRun("podman", "rm", "-f", "-t", "0", "f1")
	if _, err := h1.Probe(port); err == nil {
		t.Fatal("f1 still answers after its removal")
	}
	h1.MustRun("podman", "container", "restore", "--import", file)
	restored := h1.WaitReport(port, 30*time.Second)
	if restored.Start != before.Start || restored.Checksum != before.Checksum || restored.Counter < before.Counter {
		t.Fatalf("restored: %+v; before: %+v", restored, before)
	}
	t.Logf("restored: checksum %s as before, counter %d (before the checkpoint %d)", restored.Checksum, restored.Counter, before.Counter)

	// 7. Without --leave-running the container stops, its archive goes to
	// stdout, and the checkpoint kept on its host resumes it in place.
	out, errOut, code = h2.CLI("checkpoint", "f1", "--host", h1.Name, "--output", "-")
	if code != 0 || len(out) < 1<<20 || !strings.Contains(errOut, "stopped") {
		t.Fatalf("checkpoint to stdout: exit %d, %d bytes, stderr %q", code, len(out), errOut)
	}
	if h1.Running("f1") {
		t.Fatal("f1 runs after a checkpoint without --leave-running")
	}
	h1.MustRun("podman", "container", "restore", "f1")
	if resumed := h1.WaitReport(port, 30*time.Second); resumed.Start != before.Start || resumed.Checksum != before.Checksum {
		t.Fatalf("resumed: %+v; before: %+v", resumed, before)
	}
	h1.MustRun("podman", "rm", "-f", "-t", "0", "f1")

	// Refusals.
	out, errOut, code = h1.CLI("checkpoint", "nosuch", "--output", filepath.Join(dir, "x.tar"))
	if code != 1 || !strings.Contains(errOut, "not running on any alive host") {
		t.Errorf("checkpoint of a missing container: exit %d %q %q", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "x.tar.partial")); err == nil {
		t.Errorf("partial file left after a refusal")
	}
	if _, _, code := h1.CLI("checkpoint", "f1"); code != 2 {
		t.Errorf("checkpoint without --output or --store: exit %d, want 2", code)
	}
}

// jsonOf decodes the CLI's JSON output.
func jsonOf(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("%v: %q", err, s)
	}
}

// TestBenchForensicFreeze is part of `make bench`: how long a leave-running
// snapshot (`orchestrate checkpoint --leave-running --output FILE`) freezes
// the workload, at 64 and 256 MiB: CRIU's frozen time, the wall time of the
// engine's checkpoint call, and the longest gap between the workload's own
// ticks (what the application saw). It prints min / median of 3.
func TestBenchForensicFreeze(t *testing.T) {
	if os.Getenv("ORCHESTRATE_BENCH") == "" {
		t.Skip("set ORCHESTRATE_BENCH=1 (make bench)")
	}
	c := simhost.NewCluster(t, 2)
	h1 := c.Hosts[0]
	dir := t.TempDir()
	type sample struct{ frozen, wall, gap time.Duration }
	var rows []string
	for _, mib := range []int{64, 256} {
		port := simhost.Port()
		name := fmt.Sprintf("fz%d", mib)
		h1.RunWorkload(simhost.Workload{Name: name, MiB: mib, Port: port})
		var ss []sample
		for i := 0; i < 3; i++ {
			if _, err := h1.ProbeReset(port); err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(dir, fmt.Sprintf("%s-%d.tar", name, i))
			out, errOut, code := h1.CLI("checkpoint", name, "--leave-running", "--output", file, "--json")
			if code != 0 {
				t.Fatalf("checkpoint: exit %d\n%s%s", code, out, errOut)
			}
			var res struct {
				Stats struct {
					Duration   time.Duration `json:"duration"`
					FrozenTime time.Duration `json:"frozen_time"`
				} `json:"stats"`
			}
			jsonOf(t, out, &res)
			time.Sleep(50 * time.Millisecond) // a tick after the thaw, so the gap is measured
			rep, err := h1.Probe(port)
			if err != nil {
				t.Fatal(err)
			}
			ss = append(ss, sample{res.Stats.FrozenTime, res.Stats.Duration, time.Duration(rep.MaxGapMS) * time.Millisecond})
			_ = os.Remove(file)
		}
		h1.MustRun("podman", "rm", "-f", "-t", "0", name)
		pick := func(f func(sample) time.Duration) string {
			var d []time.Duration
			for _, s := range ss {
				d = append(d, f(s))
			}
			slices.Sort(d)
			return fmt.Sprintf("%s / %s", d[0].Round(time.Millisecond), d[len(d)/2].Round(time.Millisecond))
		}
		rows = append(rows, fmt.Sprintf("| %d MiB | %s | %s | %s |", mib,
			pick(func(s sample) time.Duration { return s.frozen }),
			pick(func(s sample) time.Duration { return s.gap }),
			pick(func(s sample) time.Duration { return s.wall })))
	}
	fmt.Println("\nLeave-running forensic snapshot, min / median of 3:")
	fmt.Println()
	fmt.Println("| workload | CRIU frozen time | longest gap the workload saw | checkpoint wall time |")
	fmt.Println("|---|---|---|---|")
	for _, r := range rows {
		fmt.Println(r)
	}
}

// TestE2EForensicsBeforeEvacuation: with policy.forensics.before_evacuation,
// a spot notice keeps a leave-running snapshot of the container, on a host
// other than the one going away, before the container moves.
func TestE2EForensicsBeforeEvacuation(t *testing.T) {
	aws := &fakeAWS{}
	aws.notice.Store("")
	c := simhost.NewClusterWith(t, 2, func(i int, h *simhost.Host) string {
		const forensics = "policy:\n  forensics:\n    before_evacuation: true\n"
		if i != 0 {
			return forensics
		}
		ln, err := h.ListenInNetns(h.IP + ":8169")
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewUnstartedServer(aws)
		srv.Listener = ln
		srv.Start()
		t.Cleanup(srv.Close)
		return forensics + fmt.Sprintf("  spot:\n    provider: aws\n    endpoint: http://%s:8169\n    poll_interval: 500ms\n", h.IP)
	})
	h1, h2 := c.Hosts[0], c.Hosts[1]
	port := simhost.Port()
	marker := fmt.Sprintf("evac-%d", port)
	h1.RunWorkload(simhost.Workload{Name: "ev1", MiB: 16, Port: port, Args: []string{"-marker", marker}})
	before, _ := h1.Probe(port)
	deadline := time.Now().Add(30 * time.Second).UTC().Truncate(time.Second)
	aws.notice.Store(fmt.Sprintf(`{"action":"terminate","time":%q}`, deadline.Format(time.RFC3339)))
	for !h2.Running("ev1") {
		if time.Now().After(deadline) {
			t.Fatal("ev1 did not move before the deadline")
		}
		time.Sleep(100 * time.Millisecond)
	}
	continued(t, h2, port, before)

	var recs []snapshotRow
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		recs = nil
		if err := h2.JSON(&recs, "snapshots"); err != nil {
			t.Fatal(err)
		}
		if len(recs) > 0 || time.Now().After(end) {
			break
		}
	}
	if len(recs) != 1 || recs[0].Name != "ev1" || recs[0].Host != h1.Name || recs[0].StoreHost != h2.Name ||
		!recs[0].LeaveRunning || !strings.Contains(recs[0].Reason, "evacuation") {
		t.Fatalf("snapshots after the evacuation: %+v", recs)
	}
	out, errOut, code := h2.CLI("inspect", recs[0].ID, "--grep", marker)
	if code != 0 || !strings.Contains(out, "ORCHESTRATE-MARKER:"+marker) {
		t.Fatalf("inspect %s: exit %d\n%s%s", recs[0].ID, code, out, errOut)
	}
}
