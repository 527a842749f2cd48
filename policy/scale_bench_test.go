package policy

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"
)

// fleet returns n hosts of 64 GiB with perHost containers each, of 256 MiB
// to 2 GiB, in a fixed pseudo-random shape: the planners' input at scale.
func fleet(n, perHost int) ([]HostLoad, []ContainerInfo) {
	r := rand.New(rand.NewPCG(1, 2))
	var hosts []HostLoad
	var cs []ContainerInfo
	for i := range n {
		h := HostLoad{Name: fmt.Sprintf("edge-%03d", i), Alive: true, Engine: "podman", Arch: "amd64", CRIUVersion: "4.2.1",
			Labels: map[string]string{"zone": fmt.Sprintf("z%d", i%3)}, MemoryCapacity: 64 << 30}
		for j := range perHost {
			c := ContainerInfo{ID: fmt.Sprintf("%03d-%03d", i, j), Host: h.Name, MemoryBytes: int64(256+r.IntN(1792)) << 20,
				Labels: map[string]string{LabelPriority: fmt.Sprint(r.IntN(3))}}
			h.MemoryUsed += c.MemoryBytes
			cs = append(cs, c)
		}
		hosts = append(hosts, h)
	}
	return hosts, cs
}

// drainInput: host 0 holds 100 containers, the others their share.
func drainInput(n int) ([]HostLoad, []ContainerInfo, Trigger) {
	hosts, cs := fleet(n, 10)
	big, _ := fleet(1, 100)
	big[0].Name = hosts[0].Name
	var src []ContainerInfo
	for j := range 100 {
		src = append(src, ContainerInfo{ID: fmt.Sprintf("big-%03d", j), Host: hosts[0].Name, MemoryBytes: int64(64+j) << 20})
	}
	hosts[0].MemoryUsed = 0
	for _, c := range src {
		hosts[0].MemoryUsed += c.MemoryBytes
	}
	cs = slices.DeleteFunc(cs, func(c ContainerInfo) bool { return c.Host == hosts[0].Name })
	return hosts, append(cs, src...), Trigger{Host: hosts[0].Name, Deadline: time.Unix(1e9, 0).Add(10 * time.Minute)}
}

func BenchmarkPlanEvacuation100(b *testing.B) {
	hosts, cs, tr := drainInput(100)
	m := MigrationModel{Overhead: 1500 * time.Millisecond, BytesPerSecond: 40e6, MaxParallel: 8, Margin: 3 * time.Second}
	for b.Loop() {
		PlanEvacuation(time.Unix(1e9, 0), tr, cs, hosts, m)
	}
}

func BenchmarkPlanRebalance100x50(b *testing.B) {
	hosts, cs := fleet(100, 50)
	for b.Loop() {
		PlanRebalance(hosts, cs, 0.05, 3)
	}
}

// median runs f reps times and returns the median duration.
func median(reps int, f func()) time.Duration {
	var ds []time.Duration
	for range reps {
		start := time.Now()
		f()
		ds = append(ds, time.Since(start))
	}
	slices.Sort(ds)
	return ds[(len(ds)-1)/2]
}

// TestBenchPlanning prints how long the planners take as the fleet grows:
// a drain of a host with 100 containers across N-1 targets, and a
// rebalance of N hosts with 50 containers each (the default 3 moves, and a
// threshold low enough that all of them are planned), with the rebalance
// as it was before the spread index as the baseline. make bench runs it.
func TestBenchPlanning(t *testing.T) {
	if os.Getenv("ORCHESTRATE_BENCH") == "" {
		t.Skip("set ORCHESTRATE_BENCH=1 (make bench)")
	}
	m := MigrationModel{Overhead: 1500 * time.Millisecond, BytesPerSecond: 40e6, MaxParallel: 8, Margin: 3 * time.Second}
	fmt.Printf("\nplanning time (pure functions, one goroutine; drain: median of 21 runs, rebalance: of 5, baseline: 1 run)\n")
	fmt.Printf("target: drain plan for 100 containers <= 50 ms at 100 hosts\n")
	fmt.Printf("%-6s %24s %28s %26s\n", "hosts", "drain: 100 containers", "rebalance: N x 50, 3 moves", "rebalance before (baseline)")
	for _, n := range []int{10, 50, 100, 200} {
		hosts, cs, tr := drainInput(n)
		var ev Evacuation
		dd := median(21, func() { ev = PlanEvacuation(time.Unix(1e9, 0), tr, cs, hosts, m) })
		if len(ev.Moves)+len(ev.Unplaced) != 100 {
			t.Fatalf("N=%d: %d moves, %d unplaced", n, len(ev.Moves), len(ev.Unplaced))
		}
		rh, rc := fleet(n, 50)
		var moves, ref []Move
		rd := median(5, func() { moves = PlanRebalance(rh, rc, 0.01, 3) })
		base := "-"
		if n <= 100 {
			bd := median(1, func() { ref = planRebalanceReference(rh, rc, 0.01, 3) })
			if !slices.Equal(moves, ref) {
				t.Fatalf("N=%d: the index changed the plan", n)
			}
			base = bd.Round(time.Millisecond).String()
		}
		fmt.Printf("%-6d %24s %28s %26s\n", n, fmt.Sprintf("%s (%d moves)", dd.Round(time.Microsecond), len(ev.Moves)),
			fmt.Sprintf("%s (%d moves)", rd.Round(time.Millisecond), len(moves)), base)
	}
}
