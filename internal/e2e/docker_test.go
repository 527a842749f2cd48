package e2e

import (
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
// its memory, its file and its volume; it is never placed on the Podman
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
	rows := migrations(t, h1)
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
	// the target refuses at the archive's first entry; the source resumes
	// from its kept checkpoint.
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
