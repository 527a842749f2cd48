package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/engine/archive"
	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// TestBenchForensics measures the forensic analysis on real checkpoints of
// the workload (Podman, uncompressed archives): `inspect` of a 1 GiB
// snapshot (wall time and the process's peak RSS), `inspect --diff` of two
// 256 MiB snapshots, and a search of 10 stored 256 MiB snapshots as a store
// host runs it for `snapshots grep`. Baselines from the same run: reading
// the same bytes with cat (zstd -dc for the compressed archive). Medians of 3. It runs
// under `make bench` (ORCHESTRATE_BENCH=1) and asserts nothing about time.
func TestBenchForensics(t *testing.T) {
	if os.Getenv("ORCHESTRATE_BENCH") == "" {
		t.Skip("set ORCHESTRATE_BENCH=1 (make bench)")
	}
	simhost.Require(t)
	bin := simhost.Binary(t)
	h := simhost.New(t)
	dir := t.TempDir()
	const repeats = 3

	checkpoint := func(name, file string) {
		t.Helper()
		h.MustRun("podman", "container", "checkpoint", "--leave-running", "--compress", "none", "--export", file, name)
	}
	// run times a command and returns its wall time and peak RSS.
	run := func(args ...string) (time.Duration, int64) {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		took := time.Since(start)
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return took, cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss << 10
	}
	median := func(ds []time.Duration) time.Duration {
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	var rows []string
	row := func(what string, ours, base []time.Duration, extra string) {
		rows = append(rows, fmt.Sprintf("| %s | %.2f / %.2f s | %.2f / %.2f s | %s |", what,
			slices.Min(ours).Seconds(), median(ours).Seconds(), slices.Min(base).Seconds(), median(base).Seconds(), extra))
	}

	// 1 GiB.
	big := filepath.Join(dir, "big.tar")
	h.RunWorkload(simhost.Workload{Name: "fx1g", MiB: 1024, Port: simhost.Port(), Args: []string{"-marker", "BENCHMARK"}})
	checkpoint("fx1g", big)
	h.MustRun("podman", "rm", "-f", "fx1g")
	fi, _ := os.Stat(big)
	var ins, grep, cat []time.Duration
	var rss, grepRSS int64
	for range repeats {
		d, r := run(bin, "inspect", big, "-o", "json")
		ins, rss = append(ins, d), max(rss, r)
		d, r = run(bin, "inspect", big, "--grep", "ORCHESTRATE-MARKER:BENCHMARK", "-o", "json")
		grep, grepRSS = append(grep, d), max(grepRSS, r)
		d, _ = run("sh", "-c", "cat "+big+" > /dev/null")
		cat = append(cat, d)
	}
	row(fmt.Sprintf("inspect, %d MiB archive", fi.Size()>>20), ins, cat, fmt.Sprintf("peak RSS %d MiB", rss>>20))
	row("inspect --grep (every dumped page)", grep, cat, fmt.Sprintf("peak RSS %d MiB", grepRSS>>20))
	// Podman's default export is zstd: inspect then streams it once and
	// copies the pages to a temporary directory.
	zst := big + ".zst"
	run("zstd", "-q", "-1", "-T0", big, "-o", zst)
	os.Remove(big)
	var insZ, unz []time.Duration
	var rssZ int64
	for range repeats {
		d, r := run(bin, "inspect", zst, "-o", "json")
		insZ, rssZ = append(insZ, d), max(rssZ, r)
		d, _ = run("sh", "-c", "zstd -dc "+zst+" > /dev/null")
		unz = append(unz, d)
	}
	row("inspect, the same archive zstd-compressed", insZ, unz, fmt.Sprintf("baseline zstd -dc; peak RSS %d MiB", rssZ>>20))
	os.Remove(zst)

	// Two 256 MiB snapshots, 2 s apart.
	a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	h.RunWorkload(simhost.Workload{Name: "fx256", MiB: 256, Port: simhost.Port()})
	checkpoint("fx256", a)
	time.Sleep(2 * time.Second)
	checkpoint("fx256", b)
	h.MustRun("podman", "rm", "-f", "fx256")
	var diff, cmpT []time.Duration
	var diffRSS int64
	for range repeats {
		d, r := run(bin, "inspect", "--diff", a, b, "-o", "json")
		diff, diffRSS = append(diff, d), max(diffRSS, r)
		d, _ = run("sh", "-c", "cat "+a+" "+b+" > /dev/null")
		cmpT = append(cmpT, d)
	}
	row("inspect --diff, two 256 MiB snapshots", diff, cmpT, fmt.Sprintf("peak RSS %d MiB", diffRSS>>20))

	// Ten stored 256 MiB snapshots, searched as a store host does
	// (forensics.Agent.Grep: each archive opened in place and searched).
	store := filepath.Join(dir, "store")
	os.Mkdir(store, 0o700)
	var files []string
	for i := range 10 {
		f := filepath.Join(store, fmt.Sprintf("snap-%d.tar", i))
		if err := os.Link([]string{a, b}[i%2], f); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	var fleet, catAll []time.Duration
	var searched int64
	for range repeats {
		start := time.Now()
		searched = 0
		for _, f := range files {
			ar, err := archive.Open(f, archive.DefaultConfig())
			if err != nil {
				t.Fatal(err)
			}
			res, err := ar.Search(archive.Query{Pattern: "ORCHESTRATE-MARKER"})
			ar.Close()
			if err != nil {
				t.Fatal(err)
			}
			searched += res.Searched
		}
		fleet = append(fleet, time.Since(start))
		d, _ := run("sh", "-c", "cat "+strings.Join(files, " ")+" > /dev/null")
		catAll = append(catAll, d)
	}
	row("grep over 10 stored 256 MiB snapshots (one store host)", fleet, catAll, fmt.Sprintf("%d MiB of memory searched", searched>>20))

	t.Logf("\n| measurement | orchestrate min / median | baseline (cat) min / median | notes |\n|---|---|---|---|\n%s", strings.Join(rows, "\n"))
}
