package e2e

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// TestBenchMigration is `make bench`: the downtime the application itself
// saw (its longest gap between ticks), orchestrate against the manual
// pipeline a user would run (podman checkpoint --export --compress zstd,
// scp, podman restore --import), on the same hosts in the same run, on the
// plain veth link and on a link shaped to 100 Mbit/s. It prints a markdown
// table with min / median over the repeats and asserts nothing about time.
//
// ORCHESTRATE_BENCH_SIZES (plain link, default "64,256,1024"),
// ORCHESTRATE_BENCH_SHAPED_SIZES (100 Mbit/s, default "64,256": 1 GiB takes
// minutes per run there) and ORCHESTRATE_BENCH_REPEATS (default 3) tune it;
// ORCHESTRATE_BENCH_DRAIN=0 skips the drain rows;
// ORCHESTRATE_BENCH_SHAPED_SIZES=none skips the shaped link altogether.
func TestBenchMigration(t *testing.T) {
	if os.Getenv("ORCHESTRATE_BENCH") == "" {
		t.Skip("set ORCHESTRATE_BENCH=1 (make bench)")
	}
	sizesFrom := func(env, def string) []int {
		s := os.Getenv(env)
		if s == "" {
			s = def
		}
		var out []int
		if s == "none" {
			return nil
		}
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				t.Fatalf("%s: %v", env, err)
			}
			out = append(out, n)
		}
		return out
	}
	sizes := map[string][]int{
		"veth":    sizesFrom("ORCHESTRATE_BENCH_SIZES", "64,256,1024"),
		"100mbit": sizesFrom("ORCHESTRATE_BENCH_SHAPED_SIZES", "64,256"),
	}
	repeats := 3
	if s := os.Getenv("ORCHESTRATE_BENCH_REPEATS"); s != "" {
		repeats, _ = strconv.Atoi(s)
	}
	c := simhost.NewCluster(t, 3)
	h1, h2 := c.Hosts[0], c.Hosts[1]
	ssh := simhost.NewSSHPair(t, h2.Host)
	var rows []string
	for _, link := range []string{"veth", "100mbit"} {
		if len(sizes[link]) == 0 {
			continue
		}
		if link != "veth" {
			for _, h := range []*simhost.AgentHost{h1, h2} {
				if out, err := runScript("shape", h.Name, link); err != nil {
					t.Fatal(out, err)
				}
			}
		}
		for _, mib := range sizes[link] {
			var manual, orch, criu []time.Duration
			methods := map[string]int{}
			for i := 0; i < repeats; i++ {
				manual = append(manual, manualMove(t, ssh, h1, h2, mib, i))
				m := orchestrateMove(t, h1, h2, mib, i)
				orch, criu = append(orch, m.gap), append(criu, m.criu)
				methods[m.method]++
			}
			rows = append(rows, row(fmt.Sprintf("%d MiB, %s", mib, link), manual, orch)+
				fmt.Sprintf(" %s | %.2f | %s |", minMed(criu), med(orch).Seconds()/med(criu).Seconds(), methodList(methods)))
		}
		if os.Getenv("ORCHESTRATE_BENCH_DRAIN") != "0" {
			var manual, orch []time.Duration
			for i := 0; i < min(repeats, 2); i++ {
				manual = append(manual, manualDrain(t, ssh, h1, h2, 8, 64, i))
				orch = append(orch, orchestrateDrain(t, c, h1, 8, 64, i))
			}
			rows = append(rows, row(fmt.Sprintf("drain 8 x 64 MiB, %s (total time)", link), manual, orch)+" | | |")
		}
		for _, h := range []*simhost.AgentHost{h1, h2} {
			_, _ = runScript("shape", h.Name, "off")
		}
	}
	fmt.Printf("\nMigration downtime as the application saw it (its longest gap between ticks), min / median of %d:\n\n", repeats)
	fmt.Println("| case | manual pipeline | orchestrate | ratio (median) | CRIU frozen + restore | gap / CRIU (median) | method |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Println(r)
	}
}

func row(name string, manual, orch []time.Duration) string {
	return fmt.Sprintf("| %s | %s | %s | %.2f |", name, minMed(manual), minMed(orch), med(orch).Seconds()/med(manual).Seconds())
}

func med(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func minMed(d []time.Duration) string {
	s := slices.Clone(d)
	slices.Sort(s)
	return fmt.Sprintf("%.2f / %.2f s", s[0].Seconds(), s[len(s)/2].Seconds())
}

// manualMove runs the user's pipeline for one fresh workload and returns
// the gap the workload saw.
func manualMove(t *testing.T, s simhost.SSHPair, h1, h2 *simhost.AgentHost, mib, i int) time.Duration {
	t.Helper()
	name := fmt.Sprintf("man%d-%d", mib, i)
	port := simhost.Port()
	h1.RunWorkload(simhost.Workload{Name: name, MiB: mib, Port: port})
	waitSettled(t, h1, port)
	s.ManualPipeline(t, h1.Host, h2.Host, name)
	rep := h2.WaitReport(port, 60*time.Second)
	h2.MustRun("podman", "rm", "-f", "-t", "0", name)
	return time.Duration(rep.MaxGapMS) * time.Millisecond
}

// move is one orchestrate migration as the bench saw it: the gap the
// workload saw, CRIU's own frozen plus restore time from the record, and
// the method the record names.
type move struct {
	gap, criu time.Duration
	method    string
}

func methodList(m map[string]int) string {
	var out []string
	for k, n := range m {
		out = append(out, fmt.Sprintf("%s ×%d", k, n))
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

func orchestrateMove(t *testing.T, h1, h2 *simhost.AgentHost, mib, i int) move {
	t.Helper()
	name := fmt.Sprintf("orc%d-%d", mib, i)
	port := simhost.Port()
	h1.RunWorkload(simhost.Workload{Name: name, MiB: mib, Port: port})
	waitSettled(t, h1, port)
	if out, errOut, code := h1.CLI("migrate", name, "--to", h2.Name); code != 0 {
		t.Fatalf("migrate: %s%s", out, errOut)
	}
	rep := h2.WaitReport(port, 60*time.Second)
	settledMigrations(t, h1, 10*time.Second)
	rec, pre := record(t, h1, name)
	h2.MustRun("podman", "rm", "-f", "-t", "0", name)
	return move{gap: time.Duration(rep.MaxGapMS) * time.Millisecond, criu: rec.Checkpoint.FrozenTime + rec.Restore.RestoreTime, method: pre.Method}
}

// waitSettled resets the workload's longest gap once it has run a moment,
// so start-up does not count.
func waitSettled(t *testing.T, h *simhost.AgentHost, port int) {
	t.Helper()
	time.Sleep(300 * time.Millisecond)
	if _, err := h.ProbeReset(port); err != nil {
		t.Fatal(err)
	}
}

func startWorkloads(t *testing.T, h *simhost.AgentHost, prefix string, n, mib int) []int {
	ports := make([]int, n)
	for k := range ports {
		ports[k] = simhost.Port()
		h.RunWorkload(simhost.Workload{Name: fmt.Sprintf("%s%d", prefix, k), MiB: mib, Port: ports[k]})
	}
	return ports
}

// manualDrain moves n containers one after the other with the manual
// pipeline and returns the total time.
func manualDrain(t *testing.T, s simhost.SSHPair, h1, h2 *simhost.AgentHost, n, mib, i int) time.Duration {
	t.Helper()
	prefix := fmt.Sprintf("md%d-", i)
	startWorkloads(t, h1, prefix, n, mib)
	start := time.Now()
	for k := 0; k < n; k++ {
		s.ManualPipeline(t, h1.Host, h2.Host, fmt.Sprintf("%s%d", prefix, k))
	}
	d := time.Since(start)
	h2.MustRun("podman", "rm", "-af", "-t", "0")
	return d
}

func orchestrateDrain(t *testing.T, c *simhost.Cluster, h1 *simhost.AgentHost, n, mib, i int) time.Duration {
	t.Helper()
	prefix := fmt.Sprintf("od%d-", i)
	startWorkloads(t, h1, prefix, n, mib)
	start := time.Now()
	if out, errOut, code := h1.CLI("drain", h1.Name, "--parallel", "4"); code != 0 {
		t.Fatalf("drain: %s%s", out, errOut)
	}
	d := time.Since(start)
	if _, _, code := h1.CLI("uncordon", h1.Name); code != 0 {
		t.Fatal("uncordon")
	}
	var wg sync.WaitGroup
	for _, h := range c.Hosts[1:] {
		wg.Add(1)
		go func(h *simhost.AgentHost) { defer wg.Done(); _, _ = h.Run("podman", "rm", "-af", "-t", "0") }(h)
	}
	wg.Wait()
	return d
}
