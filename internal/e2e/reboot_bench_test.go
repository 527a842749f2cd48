package e2e

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/internal/simhost"
)

func rbBenchOnly(t *testing.T) {
	if os.Getenv("ORCHESTRATE_BENCH") == "" {
		t.Skip("set ORCHESTRATE_BENCH=1 (make bench)")
	}
}

// rebootMarks are the times the host's fake reboot command ran.
func rebootMarks(h *simhost.AgentHost) []time.Time {
	b, _ := os.ReadFile(simhost.StateDir(h.Name) + "/reboots")
	var out []time.Time
	for _, l := range strings.Fields(string(b)) {
		var sec float64
		fmt.Sscan(l, &sec)
		out = append(out, time.Unix(0, int64(sec*1e9)))
	}
	return out
}

func waitMarks(t *testing.T, h *simhost.AgentHost, n int, d time.Duration) time.Time {
	t.Helper()
	var last time.Time
	waitUntil(t, d, func() error {
		m := rebootMarks(h)
		if len(m) < n {
			return fmt.Errorf("%d reboot commands, waiting for %d", len(m), n)
		}
		last = m[n-1]
		return nil
	})
	return last
}

// TestBenchLocalReboot measures a local reboot of 8 x 64 MiB against a
// drain of the same containers to a peer, in the same run: from the
// command to the reboot command, and from the agent's start after the
// (simulated) reboot to all 8 answering again.
func TestBenchLocalReboot(t *testing.T) {
	rbBenchOnly(t)
	const n, mib = 8, 64
	c := simhost.NewClusterWith(t, 2, func(i int, h *simhost.Host) string {
		if i != 0 {
			return ""
		}
		dir := simhost.StateDir(h.Name)
		script := fmt.Sprintf("#!/bin/sh\ndate +%%s.%%N >>%s/reboots\n", dir)
		if err := os.WriteFile(dir+"/fake-reboot.sh", []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("policy:\n  reboot:\n    mode: local\n    command: %s/fake-reboot.sh\n", dir)
	})
	h1 := c.Hosts[0]
	ports := map[string]int{}
	reps := map[string]simhost.Report{}
	for k := 0; k < n; k++ {
		name := fmt.Sprintf("b%d", k)
		ports[name] = simhost.Port()
		h1.RunWorkload(simhost.Workload{Name: name, MiB: mib, Port: ports[name]})
		reps[name] = h1.WaitReport(ports[name], 10*time.Second)
	}
	allBack := func(h *simhost.AgentHost) {
		for name, port := range ports {
			after := h.WaitReport(port, 3*time.Minute)
			if after.Checksum != reps[name].Checksum || after.Start != reps[name].Start {
				t.Fatalf("%s: %+v, before %+v", name, after, reps[name])
			}
		}
	}

	// Local.
	start := time.Now()
	if out, errOut, code := h1.CLI("reboot", "--local"); code != 0 {
		t.Fatalf("reboot --local: exit %d\n%s%s", code, out, errOut)
	}
	localCmd := waitMarks(t, h1, 1, 3*time.Minute).Sub(start)
	h1.Reboot(t)
	boot := time.Now()
	h1.StartAgent()
	allBack(h1)
	localBack := time.Since(boot)
	waitRebootDone(t, h1, time.Minute)

	var evs []eventRow
	_ = h1.JSON(&evs, "events")
	var saved, restored string
	for _, e := range evs {
		switch e.Action {
		case "saved locally":
			saved = e.Result
		case "local restore done":
			restored = e.Result
		}
	}

	// Drain, in the same run, of the same containers.
	start = time.Now()
	if out, errOut, code := h1.CLI("reboot", "--drain"); code != 0 {
		t.Fatalf("reboot --drain: exit %d\n%s%s", code, out, errOut)
	}
	drainCmd := waitMarks(t, h1, 2, 5*time.Minute).Sub(start)
	allBack(c.Hosts[1])
	rows := settledMigrations(t, h1, time.Minute)
	var downs []int64
	for _, r := range rows {
		downs = append(downs, r.DowntimeMS)
	}
	sort.Slice(downs, func(i, j int) bool { return downs[i] < downs[j] })
	fmt.Printf("\nReboot of one host with %d x %d MiB (one run each, same cluster):\n", n, mib)
	fmt.Printf("| mode | command to reboot command | agent start to all %d running | each container down |\n|---|---|---|---|\n", n)
	fmt.Printf("| local | %.1f s | %.1f s | from its checkpoint to its restore: the save, the reboot itself and the restore |\n", localCmd.Seconds(), localBack.Seconds())
	fmt.Printf("| drain to a peer | %.1f s | 0 (already running on the peer) | %d-%d ms (migration downtime) |\n", drainCmd.Seconds(), downs[0], downs[len(downs)-1])
	fmt.Printf("local: saved %s; after the boot %s\n", saved, restored)
}

// TestBenchQuickStartup measures the time to a serving workload that needs
// about 5 s of start-up work: a cold start against a copy restored from a
// snapshot of a warmed-up one, on the same host, medians of 3.
func TestBenchQuickStartup(t *testing.T) {
	rbBenchOnly(t)
	const mib, runs = 64, 3
	c := simhost.NewCluster(t, 2)
	h1, h2 := c.Hosts[0], c.Hosts[1]
	port := simhost.Port()
	args := []string{"-startup-work", "5s"}
	serving := func(h *simhost.AgentHost, name string, from time.Time) (time.Duration, simhost.Report) {
		ip := h.ContainerIP(name)
		rep := h.WaitReportAt(ip, port, 2*time.Minute)
		return time.Since(from), rep
	}
	var cold, copyRemote, copyLocal []time.Duration
	for i := 0; i < runs; i++ {
		name := fmt.Sprintf("cold%d", i)
		start := time.Now()
		h2.MustRun("podman", "run", "-d", "--name", name, "--network", "bridge", simhost.WorkloadImage,
			"-mib", fmt.Sprint(mib), "-listen", fmt.Sprintf(":%d", port), "-startup-work", "5s")
		d, rep := serving(h2, name, start)
		if rep.WarmRounds == 0 {
			t.Fatalf("cold start without its start-up phase: %+v", rep)
		}
		cold = append(cold, d)
		h2.MustRun("podman", "rm", "-f", name)
	}
	h1.RunWorkload(simhost.Workload{Name: "warm", MiB: mib, Port: port, Network: "bridge", Args: args})
	warm := h1.WaitReportAt(h1.ContainerIP("warm"), port, time.Minute)
	var snap snapshotRow
	out, errOut, code := h1.CLI("checkpoint", "warm", "--leave-running", "--store", "--json")
	if code != 0 {
		t.Fatalf("checkpoint: exit %d\n%s%s", code, out, errOut)
	}
	jsonOf(t, out, &snap)
	for i := 0; i < runs; i++ {
		for _, tc := range []struct {
			h   *simhost.AgentHost
			out *[]time.Duration
		}{{h2, &copyRemote}, {h1, &copyLocal}} {
			name := fmt.Sprintf("copy%d", i)
			start := time.Now()
			if out, errOut, code := tc.h.CLI("restore", snap.ID, "--host", tc.h.Name, "--name", name); code != 0 {
				t.Fatalf("restore: exit %d\n%s%s", code, out, errOut)
			}
			d, rep := serving(tc.h, name, start)
			if rep.Warm != warm.Warm || rep.Checksum != warm.Checksum {
				t.Fatalf("copy %+v, snapshot of %+v", rep, warm)
			}
			*tc.out = append(*tc.out, d)
			tc.h.MustRun("podman", "rm", "-f", name)
		}
	}
	fmt.Printf("\nQuick startup: a %d MiB workload with ~5 s of start-up work, time to serving (median of %d; runs):\n", mib, runs)
	fmt.Printf("| start | median | runs |\n|---|---|---|\n")
	for _, row := range []struct {
		name string
		ds   []time.Duration
	}{{"cold start (podman run)", cold}, {"copy from a snapshot stored on another host", copyRemote}, {"copy from a snapshot stored on the same host", copyLocal}} {
		fmt.Printf("| %s | %.2f s | %s |\n", row.name, rbMedian(row.ds).Seconds(), rbSecs(row.ds))
	}
	fmt.Printf("(the warmed-up original served %d ms after its start; snapshot %s, %d MiB)\n", warm.ReadyMS, snap.ID, snap.Size>>20)
}

func rbMedian(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func rbSecs(ds []time.Duration) string {
	var p []string
	for _, d := range ds {
		p = append(p, fmt.Sprintf("%.2f", d.Seconds()))
	}
	return strings.Join(p, ", ")
}
