package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/internal/simhost"
)

type copyRow struct {
	Host string `json:"host"`
	Name string `json:"name"`
	ID   string `json:"id"`
}

type restoreRow struct {
	Kind   string    `json:"kind"`
	Copies []copyRow `json:"copies"`
	Error  string    `json:"error"`
}

// Three copies of one snapshot over two hosts: each has a new name and
// identity and the snapshot's memory; clashes are refused before anything
// starts; an archive file starts a copy too.
func TestE2ECopiesFromSnapshot(t *testing.T) {
	c := simhost.NewCluster(t, 2)
	h1, h2 := c.Hosts[0], c.Hosts[1]
	port := simhost.Port()
	h1.RunWorkload(simhost.Workload{Name: "cp-orig", MiB: 16, Port: port, Network: "bridge"})
	orig := h1.WaitReportAt(h1.ContainerIP("cp-orig"), port, 10*time.Second)

	var snap snapshotRow
	out, errOut, code := h1.CLI("checkpoint", "cp-orig", "--leave-running", "--store", "--json")
	if code != 0 {
		t.Fatalf("checkpoint --store: exit %d\n%s%s", code, out, errOut)
	}
	jsonOf(t, out, &snap)

	start := time.Now()
	var res restoreRow
	if err := h2.JSON(&res, "restore", snap.ID, "--count", "3", "--name", "cp"); err != nil {
		t.Fatal(err)
	}
	t.Logf("3 copies from snapshot %s in %.2fs", snap.ID, time.Since(start).Seconds())
	if res.Kind != "snapshot" || len(res.Copies) != 3 || res.Error != "" {
		t.Fatalf("restore: %+v", res)
	}
	hosts := map[string]bool{}
	ids := map[string]bool{}
	for _, cp := range res.Copies {
		hosts[cp.Host] = true
		ids[cp.ID] = true
		h := h1
		if cp.Host == h2.Name {
			h = h2
		}
		rep := h.WaitReportAt(h.ContainerIP(cp.Name), port, 20*time.Second)
		if rep.Checksum != orig.Checksum || rep.Start != orig.Start {
			t.Fatalf("copy %s on %s: %+v; original %+v", cp.Name, cp.Host, rep, orig)
		}
		if !strings.HasPrefix(cp.Name, "cp-") {
			t.Fatalf("copy name %s", cp.Name)
		}
	}
	if len(hosts) != 2 || len(ids) != 3 {
		t.Fatalf("copies on %d hosts with %d IDs: %+v", len(hosts), len(ids), res.Copies)
	}
	if rep := h1.WaitReportAt(h1.ContainerIP("cp-orig"), port, 5*time.Second); rep.Checksum != orig.Checksum || rep.Counter <= orig.Counter {
		t.Fatalf("the original after its copies: %+v", rep)
	}

	// A name in use is refused before anything starts.
	before := podmanCount(t, h1) + podmanCount(t, h2)
	out, errOut, code = h2.CLI("restore", snap.ID, "--name", "cp", "--count", "3", "--host", h1.Name)
	if code != 1 || !strings.Contains(errOut, "already exists") {
		t.Fatalf("a clashing name: exit %d\n%s%s", code, out, errOut)
	}
	// Established TCP connections cannot be copied.
	sc := simhost.Port()
	h1.RunWorkload(simhost.Workload{Name: "cp-conn", MiB: 8, Port: sc, SelfConn: true, Network: "bridge"})
	var conn snapshotRow
	out, errOut, code = h1.CLI("checkpoint", "cp-conn", "--leave-running", "--store", "--json")
	if code != 0 {
		t.Fatalf("checkpoint --store: exit %d\n%s%s", code, out, errOut)
	}
	jsonOf(t, out, &conn)
	out, errOut, code = h2.CLI("restore", conn.ID)
	if code != 1 || !strings.Contains(errOut, "established TCP") {
		t.Fatalf("a snapshot with a connection: exit %d\n%s%s", code, out, errOut)
	}
	if after := podmanCount(t, h1) + podmanCount(t, h2); after != before+1 {
		t.Fatalf("refusals started something: %d containers, want %d", after, before+1)
	}

	// An archive file from the CLI's disk.
	file := filepath.Join(t.TempDir(), "orig.tar")
	if out, errOut, code := h1.CLI("checkpoint", "cp-orig", "--leave-running", "--output", file); code != 0 {
		t.Fatalf("checkpoint --output: exit %d\n%s%s", code, out, errOut)
	}
	res = restoreRow{}
	if err := h1.JSON(&res, "restore", file, "--host", h2.Name, "--name", "cp-file"); err != nil {
		t.Fatal(err)
	}
	if res.Kind != "archive" || len(res.Copies) != 1 || res.Copies[0].Host != h2.Name {
		t.Fatalf("restore of an archive: %+v", res)
	}
	if rep := h2.WaitReportAt(h2.ContainerIP("cp-file"), port, 20*time.Second); rep.Checksum != orig.Checksum {
		t.Fatalf("copy from the archive: %+v", rep)
	}
}

func podmanCount(t *testing.T, h *simhost.AgentHost) int {
	t.Helper()
	out := h.MustRun("podman", "ps", "-aq")
	return len(strings.Fields(out))
}
