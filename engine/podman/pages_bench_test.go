//go:build remote

package podman_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// TestPagesBench measures the page path between two simulated hosts at
// engine level, against the manual pipeline an operator would run
// (checkpoint --export --compress zstd, scp, restore --import) in the same
// run, and breaks the page path's time down step by step. It runs with
// ORCHESTRATE_BENCH=1 and prints min / median of the repeats; it asserts
// nothing about time. ORCHESTRATE_BENCH_SIZES (default 64,256,1024) and
// ORCHESTRATE_BENCH_REPEATS (default 3) tune it.
func TestPagesBench(t *testing.T) {
	if os.Getenv("ORCHESTRATE_BENCH") == "" {
		t.Skip("set ORCHESTRATE_BENCH=1 (make bench)")
	}
	sizes := []int{64, 256, 1024}
	if s := os.Getenv("ORCHESTRATE_BENCH_SIZES"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				t.Fatal(err)
			}
			sizes = append(sizes, n)
		}
	}
	repeats := 3
	if s := os.Getenv("ORCHESTRATE_BENCH_REPEATS"); s != "" {
		repeats, _ = strconv.Atoi(s)
	}
	hs := newPageHosts(t, simhost.New(t), simhost.New(t))
	h1, h2 := hs[0], hs[1]
	ssh := simhost.NewSSHPair(t, h2.Host)
	settle := func(h *pageHost, port int) {
		time.Sleep(300 * time.Millisecond)
		if _, err := h.ProbeReset(port); err != nil {
			t.Fatal(err)
		}
	}
	var rows, steps []string
	for _, mib := range sizes {
		var manual, gap, frozen, restore, criuSum []time.Duration
		var conn, pumped, ckpt, recv, rest, podmanRestore []time.Duration
		var archive, links int
		for i := 0; i < repeats; i++ {
			name := fmt.Sprintf("man%d-%d", mib, i)
			port := simhost.Port()
			h1.RunWorkload(simhost.Workload{Name: name, MiB: mib, Port: port})
			settle(h1, port)
			ssh.ManualPipeline(t, h1.Host, h2.Host, name)
			manual = append(manual, time.Duration(h2.WaitReport(port, 60*time.Second).MaxGapMS)*time.Millisecond)
			h2.MustRun("podman", "rm", "-f", "-t", "0", name)

			name = fmt.Sprintf("pg%d-%d", mib, i)
			port = simhost.Port()
			id := h1.RunWorkload(simhost.Workload{Name: name, MiB: mib, Port: port})
			settle(h1, port)
			r := h1.move(t, h2, id, nil)
			if r.dumpErr != nil || r.restoreErr != nil {
				t.Fatalf("page path %s: dump %v, restore %v", name, r.dumpErr, r.restoreErr)
			}
			gap = append(gap, time.Duration(h2.WaitReport(port, 60*time.Second).MaxGapMS)*time.Millisecond)
			frozen, restore = append(frozen, r.ckpt.FrozenTime), append(restore, r.restore.RestoreTime)
			criuSum = append(criuSum, r.ckpt.FrozenTime+r.restore.RestoreTime)
			conn, pumped, ckpt = append(conn, r.connected), append(pumped, r.pumped), append(ckpt, r.checkpointed)
			recv, rest = append(recv, r.received), append(rest, r.restored)
			podmanRestore = append(podmanRestore, r.restore.Duration)
			if r.link {
				links++
			}
			archive = r.archive
			h2.MustRun("podman", "rm", "-f", "-t", "0", name)
			h1.MustRun("podman", "rm", "-f", "-t", "0", name)
		}
		rows = append(rows, fmt.Sprintf("| %d MiB | %s | %s | %.2f | %s | %.2f |", mib, minMed(manual), minMed(gap),
			med(gap).Seconds()/med(manual).Seconds(), minMed(criuSum), med(gap).Seconds()/med(criuSum).Seconds()))
		steps = append(steps, fmt.Sprintf("| %d MiB | %s | %s | %s | %s | %s | %s | %s | %d KiB | %d of %d |", mib, minMed(conn), minMed(frozen), minMed(pumped),
			minMed(ckpt), minMed(recv), minMed(podmanRestore), minMed(restore), archive>>10, links, repeats))
	}
	fmt.Printf("\nPage path, engine level (two simulated hosts, page channel over the transfer SSH connection and its page link), min / median of %d:\n\n", repeats)
	fmt.Println("| size | manual pipeline | page path (gap the workload saw) | ratio | CRIU frozen + restore | gap / CRIU |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Println(r)
	}
	fmt.Println("\nWhere the page path's time goes (seconds since the checkpoint call began, except the CRIU and restore durations):")
	fmt.Println()
	fmt.Println("| size | CRIU connected | CRIU frozen | page session ended | checkpoint returned | target received | restore (Podman) | CRIU restore | archive | on a page link |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|")
	for _, s := range steps {
		fmt.Println(s)
	}
}

func med(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}
