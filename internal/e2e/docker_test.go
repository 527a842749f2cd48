package e2e

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// dockerOnlyOn checks that the container runs on want's dockerd and exists
// on no other host's.
func dockerOnlyOn(t *testing.T, c *simhost.Cluster, engines []string, name string, want *simhost.AgentHost) {
	t.Helper()
	for i, h := range c.Hosts {
		if engines[i] != "docker" {
			if h.Exists(name) {
				t.Errorf("%s exists in %s's podman", name, h.Name)
			}
			continue
		}
		st := h.DockerState(name)
		if h == want && st != "running" {
			t.Errorf("%s is %q on %s, want running", name, st, h.Name)
		}
		if h != want && st != "" {
			t.Errorf("%s exists on %s too (%s)", name, h.Name, st)
		}
	}
}

// Two Docker hosts and a Podman host: a workload with a file in its
// writable layer and a named volume moves between the Docker hosts with
// its memory, its file and its volume (and its image, which the target
// lacked); it is never placed on the Podman
// host; and the refusals leave it running where it was.
func TestE2EDocker(t *testing.T) {
	engines := []string{"docker", "docker", "podman"}
	c := simhost.NewClusterEngines(t, engines...)
	h1, h2, h3 := c.Hosts[0], c.Hosts[1], c.Hosts[2]

	port := simhost.Port()
	h1.RunDockerWorkload(simhost.Workload{Name: "dw", MiB: 64, Port: port}, "-v", "dwvol:/data")
	h1.MustDocker("exec", "dw", "sh", "-c", "echo layer-ok > /tmp/marker && echo volume-ok > /data/v.txt")
	before, err := h1.ProbeReset(port)
	if err != nil {
		t.Fatal(err)
	}

	// h2 lacks the image: it is sent (docker save, docker load) before the
	// container freezes, and keeps its ID.
	h2.MustDocker("rmi", simhost.WorkloadImage)

	// Placement never sends a Docker container to a Podman host.
	out, errOut, code := h1.CLI("migrate", "dw", "--to", h3.Name)
	if code != 1 || !strings.Contains(errOut, "engine podman, container needs docker") {
		t.Fatalf("migrate to the podman host: exit %d, %s%s", code, out, errOut)
	}
	// The leader's own choice is the other Docker host.
	out, errOut, code = h3.CLI("migrate", "dw")
	t.Logf("migrate:\n%s%s", errOut, out)
	if code != 0 {
		t.Fatalf("migrate: exit %d", code)
	}
	after := continued(t, h2, port, before)
	dockerOnlyOn(t, c, engines, "dw", h2)
	if got := strings.TrimSpace(h2.MustDocker("exec", "dw", "cat", "/tmp/marker", "/data/v.txt")); got != "layer-ok\nvolume-ok" {
		t.Fatalf("after the migration, writable layer and volume hold %q", got)
	}
	if out := h2.MustDocker("images", "--format", "{{.Repository}}"); !strings.Contains(out, "orchestrate-workload") {
		t.Fatalf("h2 has no workload image after the migration: %q", out)
	}
	rows := settledMigrations(t, h1, 15*time.Second)
	if len(rows) != 1 || rows[0].Phase != "Done" || rows[0].To != h2.Name || rows[0].Bytes == 0 {
		t.Fatalf("migrations: %+v", rows)
	}
	t.Logf("recorded downtime %d ms; the workload saw a gap of %d ms", rows[0].DowntimeMS, after.MaxGapMS)

	// An established TCP connection is refused before anything freezes:
	// the container never stops.
	tport := simhost.Port()
	h2.RunDockerWorkload(simhost.Workload{Name: "dtcp", MiB: 8, Port: tport, SelfConn: true})
	tb, _ := h2.ProbeReset(tport)
	out, errOut, code = h2.CLI("migrate", "dtcp", "--to", h1.Name)
	if code == 0 || !strings.Contains(errOut+out, "established TCP") {
		t.Fatalf("migrate with a TCP connection: exit %d, %s%s", code, out, errOut)
	}
	ta := h2.WaitReport(tport, 10*time.Second)
	if ta.Start != tb.Start || ta.Checksum != tb.Checksum || !ta.SelfConn || ta.MaxGapMS > 1000 {
		t.Fatalf("after the refusal: %+v, before %+v", ta, tb)
	}
	dockerOnlyOn(t, c, engines, "dtcp", h2)

	// A bind mount whose source exists only on h2 (its private /dev/shm):
	// the target refuses at the preflight, before the source freezes.
	h2.MustRun("mkdir", "-p", "/dev/shm/orc-bind")
	bport := simhost.Port()
	h2.RunDockerWorkload(simhost.Workload{Name: "dbind", MiB: 8, Port: bport}, "-v", "/dev/shm/orc-bind:/bind")
	bb, _ := h2.Probe(bport)
	out, errOut, code = h2.CLI("migrate", "dbind", "--to", h1.Name)
	if code == 0 || !strings.Contains(errOut+out, "bind-mount source(s) missing") {
		t.Fatalf("migrate with a missing bind mount: exit %d, %s%s", code, out, errOut)
	}
	ba := h2.WaitReport(bport, 15*time.Second)
	if ba.Start != bb.Start || ba.Checksum != bb.Checksum || ba.Counter < bb.Counter {
		t.Fatalf("after the rollback: %+v, before %+v", ba, bb)
	}
	dockerOnlyOn(t, c, engines, "dbind", h2)
}

// TestBenchDocker is the Docker row of `make bench`: the downtime the
// workload saw (its longest gap between ticks) when orchestrate moves it
// between two Docker hosts, beside a move between two Podman hosts of the
// same cluster in the same run, plus where a Docker move's time goes: the
// engine's step timings from the agents' logs (median over the repeats).
//
// ORCHESTRATE_BENCH_DOCKER_SIZES (default "64,256") and ORCHESTRATE_BENCH_REPEATS
// (default 3) tune it.
func TestBenchDocker(t *testing.T) {
	if os.Getenv("ORCHESTRATE_BENCH") == "" {
		t.Skip("set ORCHESTRATE_BENCH=1 (make bench)")
	}
	sizes := []int{64, 256}
	if s := os.Getenv("ORCHESTRATE_BENCH_DOCKER_SIZES"); s != "" {
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
	c := simhost.NewClusterEngines(t, "docker", "docker", "podman", "podman")
	d1, d2, p1, p2 := c.Hosts[0], c.Hosts[1], c.Hosts[2], c.Hosts[3]
	var rows, steps []string
	for _, mib := range sizes {
		var pm, dk []time.Duration
		samples := map[string][]time.Duration{}
		var order []string
		for i := 0; i < repeats; i++ {
			pm = append(pm, benchMove(t, p1, p2, "podman", mib, i))
			mark := logMark(d1, d2)
			dk = append(dk, benchMove(t, d1, d2, "docker", mib, i))
			for _, s := range dockerSteps(t, mark, d1, d2) {
				if _, ok := samples[s.name]; !ok {
					order = append(order, s.name)
				}
				samples[s.name] = append(samples[s.name], s.d)
			}
		}
		rows = append(rows, fmt.Sprintf("| %d MiB | %s | %s | %.2f |", mib, minMed(pm), minMed(dk), med(dk).Seconds()/med(pm).Seconds()))
		for _, name := range order {
			steps = append(steps, fmt.Sprintf("| %d MiB | %s | %.2f s |", mib, name, med(samples[name]).Seconds()))
		}
	}
	fmt.Printf("\nDocker vs Podman: downtime as the application saw it (its longest gap between ticks), orchestrate on both, min / median of %d:\n\n", repeats)
	fmt.Println("| size | Podman hosts | Docker hosts | ratio (median) |")
	fmt.Println("|---|---|---|---|")
	for _, r := range rows {
		fmt.Println(r)
	}
	fmt.Printf("\nWhere a Docker move's time goes (engine steps on the source, then the target; median):\n\n")
	fmt.Println("| size | step | time |")
	fmt.Println("|---|---|---|")
	for _, r := range steps {
		fmt.Println(r)
	}
}

// benchMove starts a fresh workload on from, moves it to to with
// orchestrate, and returns the gap the workload saw.
func benchMove(t *testing.T, from, to *simhost.AgentHost, eng string, mib, i int) time.Duration {
	t.Helper()
	name := fmt.Sprintf("b%s%d-%d", eng[:1], mib, i)
	port := simhost.Port()
	if eng == "docker" {
		from.RunDockerWorkload(simhost.Workload{Name: name, MiB: mib, Port: port})
	} else {
		from.RunWorkload(simhost.Workload{Name: name, MiB: mib, Port: port})
	}
	waitSettled(t, from, port)
	if out, errOut, code := from.CLI("migrate", name, "--to", to.Name); code != 0 {
		t.Fatalf("migrate: %s%s", out, errOut)
	}
	rep := to.WaitReport(port, 60*time.Second)
	if eng == "docker" {
		to.MustDocker("rm", "-f", name)
	} else {
		to.MustRun("podman", "rm", "-f", "-t", "0", name)
	}
	return time.Duration(rep.MaxGapMS) * time.Millisecond
}

type stepTime struct {
	name string
	d    time.Duration
}

// logMark is the current length of each host's agent log.
func logMark(hs ...*simhost.AgentHost) map[string]int64 {
	m := map[string]int64{}
	for _, h := range hs {
		if fi, err := os.Stat(simhost.StateDir(h.Name) + "/agent.log"); err == nil {
			m[h.Name] = fi.Size()
		}
	}
	return m
}

var stepRe = regexp.MustCompile(`msg="docker step".* op=(\S+) .*step=("[^"]*"|\S+) ms=(\d+)`)

// dockerSteps reads the engine's step timings logged since mark, the
// source's first.
func dockerSteps(t *testing.T, mark map[string]int64, hs ...*simhost.AgentHost) []stepTime {
	var out []stepTime
	for _, h := range hs {
		b, err := os.ReadFile(simhost.StateDir(h.Name) + "/agent.log")
		if err != nil || int64(len(b)) < mark[h.Name] {
			continue
		}
		for _, l := range strings.Split(string(b[mark[h.Name]:]), "\n") {
			m := stepRe.FindStringSubmatch(l)
			if m == nil {
				continue
			}
			ms, _ := strconv.Atoi(m[3])
			out = append(out, stepTime{name: m[1] + ": " + strings.Trim(m[2], `"`), d: time.Duration(ms) * time.Millisecond})
		}
	}
	return out
}
