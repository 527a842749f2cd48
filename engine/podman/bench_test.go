//go:build remote

package podman_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// TestEngineBench measures checkpoint and restore through the engine, and
// the gap the workload itself saw, for 64 and 256 MiB workloads. It runs
// under `make bench` (ORCHESTRATE_BENCH=1) and prints min/median of the
// repeats; it asserts nothing about time.
func TestEngineBench(t *testing.T) {
	if os.Getenv("ORCHESTRATE_BENCH") == "" {
		t.Skip("set ORCHESTRATE_BENCH=1 (make bench)")
	}
	repeats := 3
	h := simhost.New(t)
	e := newEngine(t, h)
	ctx := context.Background()
	var rows []string
	for _, mib := range []int{64, 256} {
		port := simhost.Port()
		name := fmt.Sprintf("bench%d", mib)
		id := h.RunWorkload(simhost.Workload{Name: name, MiB: mib, Port: port})
		var ckpt, rest, gap, frozen []time.Duration
		var size int64
		for i := 0; i < repeats; i++ {
			if _, err := h.ProbeReset(port); err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			st, err := e.Checkpoint(ctx, id, &buf, engine.CheckpointOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if err := e.Remove(ctx, id); err != nil {
				t.Fatal(err)
			}
			c, rst, err := e.Restore(ctx, &buf, engine.RestoreOptions{})
			if err != nil {
				t.Fatal(err)
			}
			id = c.ID
			rep := h.WaitReport(port, 10*time.Second)
			ckpt, rest, frozen = append(ckpt, st.Duration), append(rest, rst.Duration), append(frozen, st.FrozenTime)
			gap = append(gap, time.Duration(rep.MaxGapMS)*time.Millisecond)
			size = st.Bytes
		}
		rows = append(rows, fmt.Sprintf("| %d | %d | %s | %s | %s | %s |", mib, size>>20,
			minMed(ckpt), minMed(frozen), minMed(rest), minMed(gap)))
		if err := e.Remove(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Printf("\nEngine (Podman API, one host, archive in memory), min / median of %d:\n\n", repeats)
	fmt.Println("| MiB | archive MiB | checkpoint | CRIU frozen | restore | gap seen by workload |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Println(r)
	}
}

func minMed(d []time.Duration) string {
	s := slices.Clone(d)
	slices.Sort(s)
	return fmt.Sprintf("%.2f / %.2f s", s[0].Seconds(), s[len(s)/2].Seconds())
}
