package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// precopyRecord is the part of a migration record's pre-copy report the
// tests read (MigrationRecord.Precopy).
type precopyRecord struct {
	Method        string  `json:"method"`
	Reason        string  `json:"reason"`
	EnginePreCopy bool    `json:"engine_precopy"`
	LinkBps       float64 `json:"link_bytes_per_s"`
	Rounds        []round `json:"rounds"`
	Final         *round  `json:"final"`
	BytesSaved    int64   `json:"bytes_saved"`
	WireBytes     int64   `json:"wire_bytes"`
	Fallback      string  `json:"fallback"`
}

type round struct {
	Round        int           `json:"round"`
	ArchiveBytes int64         `json:"archive_bytes"`
	LiteralBytes int64         `json:"literal_bytes"`
	WireBytes    int64         `json:"wire_bytes"`
	Frozen       time.Duration `json:"frozen"`
	Checkpoint   time.Duration `json:"checkpoint"`
	Duration     time.Duration `json:"duration"`
}

// record returns the newest migration record of the container named name,
// with its pre-copy report, read through h's agent API.
func record(t *testing.T, h *simhost.AgentHost, name string) (cluster.MigrationRecord, precopyRecord) {
	t.Helper()
	cl, err := cluster.NewClient(h.Socket, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var recs []cluster.MigrationRecord
	if err := cl.Do(ctx, http.MethodGet, "/v1/migrations", nil, &recs); err != nil {
		t.Fatal(err)
	}
	var rec cluster.MigrationRecord
	for _, m := range recs {
		if m.Name == name && m.StartedAt.After(rec.StartedAt) {
			rec = m
		}
	}
	if rec.ID == "" {
		t.Fatalf("no migration of %s recorded", name)
	}
	var pre precopyRecord
	b, _ := json.Marshal(rec.Precopy)
	if err := json.Unmarshal(b, &pre); err != nil {
		t.Fatalf("precopy report %s: %v", b, err)
	}
	return rec, pre
}

// roles picks two hosts that do not lead, so that restarting one never
// moves the leadership.
func roles(t *testing.T, c *simhost.Cluster) (src, dst *simhost.AgentHost) {
	t.Helper()
	l := c.Leader()
	var others []*simhost.AgentHost
	for _, h := range c.Hosts {
		if h != l {
			others = append(others, h)
		}
	}
	return others[0], others[1]
}

func shape(t *testing.T, rate string, hs ...*simhost.AgentHost) {
	t.Helper()
	for _, h := range hs {
		if out, err := runScript("shape", h.Name, rate); err != nil {
			t.Fatal(out, err)
		}
		if rate != "off" {
			t.Cleanup(func() { _, _ = runScript("shape", h.Name, "off") })
		}
	}
}

// TestE2EPrecopy: on a 100 Mbit/s link, a workload that rewrites its
// memory moves by content pre-copy; one that does not keeps its checksum;
// a target whose agent restarts mid pre-copy (losing the earlier archive)
// gets a full transfer, and the migration still succeeds.
func TestE2EPrecopy(t *testing.T) {
	c := simhost.NewCluster(t, 3)
	src, dst := roles(t, c)

	// On the plain (fast) link the judgement is direct streaming, by the
	// page path.
	port0 := simhost.Port()
	src.RunWorkload(simhost.Workload{Name: "pre0", MiB: 64, Port: port0})
	before0, _ := src.ProbeReset(port0)
	if out, errOut, code := src.CLI("migrate", "pre0", "--to", dst.Name); code != 0 {
		t.Fatalf("migrate: exit %d\n%s%s", code, out, errOut)
	}
	continued(t, dst, port0, before0)
	if _, pre := record(t, src, "pre0"); pre.Method != "pages" || !strings.Contains(pre.Reason, "fast") {
		t.Fatalf("on the plain link: %+v", pre)
	} else {
		t.Logf("plain link: %s (%s)", pre.Method, pre.Reason)
	}

	shape(t, "100mbit", src, dst)

	// A rewriting workload: the checksum changes by design; the process
	// and its counter must go on.
	port := simhost.Port()
	src.RunWorkload(simhost.Workload{Name: "pre1", MiB: 128, Port: port, Args: []string{"-rewrite-mibps", "2"}})
	before, _ := src.ProbeReset(port)
	if out, errOut, code := src.CLI("migrate", "pre1", "--to", dst.Name); code != 0 {
		t.Fatalf("migrate: exit %d\n%s%s", code, out, errOut)
	}
	after := dst.WaitReport(port, 30*time.Second)
	if after.Start != before.Start || after.Counter < before.Counter {
		t.Fatalf("after: %+v; before: %+v", after, before)
	}
	onlyOn(t, c, "pre1", dst)
	rec, pre := record(t, src, "pre1")
	t.Logf("pre1: %s, downtime %s, the workload saw a gap of %d ms; %+v", pre.Method, rec.Downtime, after.MaxGapMS, pre)
	if rec.Phase != "Done" || pre.Method != "precopy-content+pages" || len(pre.Rounds) < 2 || pre.Final == nil || pre.BytesSaved <= 0 || pre.EnginePreCopy {
		t.Fatalf("record %+v, pre-copy %+v", rec, pre)
	}
	if rec.Method != "pages" || rec.Precopy.Method != "precopy-content+pages" {
		t.Fatalf("method %q (%q) in the record", rec.Method, rec.Precopy.Method)
	}
	if len(rec.Precopy.ExtraFreezes) != len(pre.Rounds) {
		t.Fatalf("extra freezes %v for %d rounds", rec.Precopy.ExtraFreezes, len(pre.Rounds))
	}
	if pre.Final.LiteralBytes*4 > pre.Final.ArchiveBytes {
		t.Errorf("final round sent %d of %d bytes as literals", pre.Final.LiteralBytes, pre.Final.ArchiveBytes)
	}

	// Without rewrites, the memory checksum continues too.
	port2 := simhost.Port()
	src.RunWorkload(simhost.Workload{Name: "pre2", MiB: 64, Port: port2})
	before2, _ := src.ProbeReset(port2)
	if out, errOut, code := src.CLI("migrate", "pre2", "--to", dst.Name); code != 0 {
		t.Fatalf("migrate: exit %d\n%s%s", code, out, errOut)
	}
	continued(t, dst, port2, before2)
	onlyOn(t, c, "pre2", dst)
	if _, pre := record(t, src, "pre2"); pre.Method != "precopy-content+pages" {
		t.Fatalf("pre2: %+v", pre)
	}

	// The target's agent restarts once the first round has arrived: its
	// copy is gone, and the source falls back to a full (compressed) page
	// session.
	port3 := simhost.Port()
	src.RunWorkload(simhost.Workload{Name: "pre3", MiB: 128, Port: port3, Args: []string{"-rewrite-mibps", "2"}})
	before3, _ := src.ProbeReset(port3)
	logPath := simhost.StateDir(src.Name) + "/agent.log"
	logStart := fileSize(logPath)
	done := make(chan string, 1)
	go func() {
		out, errOut, code := src.CLI("migrate", "pre3", "--to", dst.Name)
		done <- fmt.Sprintf("exit %d\n%s%s", code, out, errOut)
	}()
	deadline := time.Now().Add(90 * time.Second)
	for !logHas(logPath, logStart, "pre-copy round 1 sent") {
		if time.Now().After(deadline) {
			t.Fatal("no pre-copy round within 90 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	dst.StopAgent(syscall.SIGKILL)
	dst.StartAgent()
	if res := <-done; !strings.HasPrefix(res, "exit 0") {
		t.Fatalf("migrate with a restarted target: %s", res)
	}
	after3 := dst.WaitReport(port3, 30*time.Second)
	if after3.Start != before3.Start || after3.Counter < before3.Counter {
		t.Fatalf("after: %+v; before: %+v", after3, before3)
	}
	onlyOn(t, c, "pre3", dst)
	rec3, pre3 := record(t, src, "pre3")
	t.Logf("pre3: %s (%s), the workload saw a gap of %d ms", pre3.Method, pre3.Fallback, after3.MaxGapMS)
	if rec3.Phase != "Done" || pre3.Method != "pages-after-precopy" || pre3.Fallback == "" {
		t.Fatalf("record %+v, pre-copy %+v", rec3, pre3)
	}
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

func logHas(path string, from int64, s string) bool {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < from {
		return false
	}
	return strings.Contains(string(b[from:]), s)
}

// TestBenchPrecopy is part of `make bench`: on a link shaped to 100 Mbit/s,
// a 256 MiB workload that rewrites 0%, 10% and 50% of its memory over the
// time a full archive takes to cross (about 10 s), moved by the manual
// pipeline, by orchestrate streaming directly (orchestrate.precopy=off) and
// by orchestrate with content pre-copy. Downtime is the application's
// longest gap. It prints a table and asserts nothing about time.
//
// ORCHESTRATE_BENCH_PRECOPY_MIB (default 256) and
// ORCHESTRATE_BENCH_REPEATS (default 1 here) tune it.
func TestBenchPrecopy(t *testing.T) {
	if os.Getenv("ORCHESTRATE_BENCH") == "" {
		t.Skip("set ORCHESTRATE_BENCH=1 (make bench)")
	}
	mib := 256
	if s := os.Getenv("ORCHESTRATE_BENCH_PRECOPY_MIB"); s != "" {
		mib, _ = strconv.Atoi(s)
	}
	repeats := 1
	if s := os.Getenv("ORCHESTRATE_BENCH_REPEATS"); s != "" {
		repeats, _ = strconv.Atoi(s)
	}
	c := simhost.NewCluster(t, 3)
	h1, h2 := roles(t, c)
	ssh := simhost.NewSSHPair(t, h2.Host)
	shape(t, "100mbit", h1, h2)
	type result struct {
		gap   time.Duration
		wire  int64
		extra string
	}
	var rows []string
	for _, pct := range []int{0, 10, 50} {
		rate := float64(pct) / 100 * float64(mib) / 10 // MiB/s: pct of the memory in ~10 s
		args := []string{"-rewrite-mibps", strconv.FormatFloat(rate, 'f', 2, 64)}
		var man, direct, pre []result
		for i := 0; i < repeats; i++ {
			// The manual pipeline.
			name := fmt.Sprintf("bm%d-%d", pct, i)
			port := simhost.Port()
			h1.RunWorkload(simhost.Workload{Name: name, MiB: mib, Port: port, Args: args})
			waitSettled(t, h1, port)
			f := simhost.DataDir(h1.Name) + "/" + name + ".tar.zst"
			h1.MustRun("podman", "container", "checkpoint", "--export", f, "--compress", "zstd", name)
			wire := fileSize(f)
			g := simhost.DataDir(h2.Name) + "/" + name + ".tar.zst"
			ssh.Copy(t, h1.Host, f, g)
			h2.MustRun("podman", "container", "restore", "--import", g)
			h1.MustRun("podman", "rm", "-f", "-t", "0", name)
			_ = os.Remove(f)
			_ = os.Remove(g)
			rep := h2.WaitReport(port, 60*time.Second)
			h2.MustRun("podman", "rm", "-f", "-t", "0", name)
			man = append(man, result{gap: time.Duration(rep.MaxGapMS) * time.Millisecond, wire: wire})

			for _, mode := range []string{"off", "on"} {
				name := fmt.Sprintf("bo%s%d-%d", mode, pct, i)
				port := simhost.Port()
				h1.RunWorkload(simhost.Workload{Name: name, MiB: mib, Port: port, Args: args,
					Labels: map[string]string{"orchestrate.precopy": mode}})
				waitSettled(t, h1, port)
				if out, errOut, code := h1.CLI("migrate", name, "--to", h2.Name); code != 0 {
					t.Fatalf("migrate: %s%s", out, errOut)
				}
				rep := h2.WaitReport(port, 60*time.Second)
				rec, p := record(t, h1, name)
				h2.MustRun("podman", "rm", "-f", "-t", "0", name)
				r := result{gap: time.Duration(rep.MaxGapMS) * time.Millisecond, wire: p.WireBytes}
				if mode == "off" {
					direct = append(direct, r)
					continue
				}
				var fr, rw []string
				for _, x := range p.Rounds {
					fr = append(fr, fmt.Sprintf("%d", x.Frozen.Milliseconds()))
					rw = append(rw, fmt.Sprintf("%.1f", float64(x.WireBytes)/(1<<20)))
				}
				final := int64(0)
				if p.Final != nil {
					final = p.Final.WireBytes
				}
				r.extra = fmt.Sprintf("%d rounds of [%s] MiB, freezes [%s] ms, final %.1f MiB, record downtime %.2f s",
					len(p.Rounds), strings.Join(rw, " "), strings.Join(fr, " "), float64(final)/(1<<20), rec.Downtime.Seconds())
				pre = append(pre, r)
			}
		}
		gaps := func(rs []result) []time.Duration {
			var d []time.Duration
			for _, r := range rs {
				d = append(d, r.gap)
			}
			return d
		}
		mb := func(rs []result) string { return fmt.Sprintf("%.0f MiB", float64(rs[len(rs)/2].wire)/(1<<20)) }
		rows = append(rows, fmt.Sprintf("| %d MiB, %d%% rewritten (%.1f MiB/s) | %s (%s) | %s (%s) | %s (%s) | %.2f | %s |",
			mib, pct, rate, minMed(gaps(man)), mb(man), minMed(gaps(direct)), mb(direct), minMed(gaps(pre)), mb(pre),
			med(gaps(pre)).Seconds()/med(gaps(man)).Seconds(), pre[len(pre)/2].extra))
	}
	fmt.Printf("\nPre-copy on a 100 Mbit/s link: downtime as the application saw it (its longest gap), min / median of %d, and the bytes on the wire:\n\n", repeats)
	fmt.Println("| case | manual pipeline | orchestrate, direct | orchestrate, pre-copy | pre-copy / manual | pre-copy detail |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Println(r)
	}
}
