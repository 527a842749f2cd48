package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/internal/simhost"
)

type methodRow struct {
	Name   string `json:"name"`
	Phase  string `json:"phase"`
	Method string `json:"method"`
	Error  string `json:"error"`
}

func lastMethod(t *testing.T, h *simhost.AgentHost, name string) methodRow {
	t.Helper()
	var rows []methodRow
	if err := h.JSON(&rows, "migrations"); err != nil {
		t.Fatal(err)
	}
	for i := len(rows) - 1; i >= 0; i-- {
		if rows[i].Name == name {
			return rows[i]
		}
	}
	t.Fatalf("no migration of %s", name)
	return methodRow{}
}

// The page path is the default between agents: the memory crosses while
// CRIU dumps, the record says "pages", and the container (with its
// established connection) moves there and back. A restore that fails after
// the dump (here: the target already has the container's named volume)
// rolls back by rebuilding the source's pages from its recording.
func TestE2EPages(t *testing.T) {
	c := simhost.NewCluster(t, 3)
	h1, h2 := c.Hosts[0], c.Hosts[1]
	port := simhost.Port()
	h1.RunWorkload(simhost.Workload{Name: "p1", MiB: 64, Port: port, SelfConn: true})
	before, _ := h1.Probe(port)
	for _, hop := range []struct{ from, to *simhost.AgentHost }{{h1, h2}, {h2, h1}} {
		if out, errOut, code := hop.from.CLI("migrate", "p1", "--to", hop.to.Name); code != 0 {
			t.Fatalf("migrate to %s: exit %d\n%s%s", hop.to.Name, code, out, errOut)
		}
		before = continued(t, hop.to, port, before)
		if !before.SelfConn {
			t.Fatal("the established connection did not survive")
		}
		onlyOn(t, c, "p1", hop.to)
		settledMigrations(t, h1, 10*time.Second)
		// The record names the method from the freeze on, so a leader
		// that changes mid-migration still has it.
		r := lastMethod(t, h1, "p1")
		if r.Method != "pages" || r.Phase != "Done" {
			t.Fatalf("migration to %s: %+v, want method pages", hop.to.Name, r)
		}
		if link := pageLinkOf(t, h1, "p1"); link != "page-link" {
			t.Fatalf("migration to %s: the pages crossed on %q, want the page link", hop.to.Name, link)
		}
	}

	// A target whose firewall passes only the agent's ports: the source
	// cannot reach the page link's port, says so, and the same session
	// runs inside SSH.
	reject := []string{"INPUT", "-p", "tcp", "--syn", "-s", h1.IP, "--dport", "32768:60999", "-j", "REJECT", "--reject-with", "tcp-reset"}
	in(t, h2, append([]string{"iptables", "-I"}, reject...)...)
	t.Cleanup(func() { _, _ = h2.Run(append([]string{"iptables", "-D"}, reject...)...) })
	if out, errOut, code := h1.CLI("migrate", "p1", "--to", h2.Name); code != 0 {
		t.Fatalf("migrate behind a firewall: exit %d\n%s%s", code, out, errOut)
	}
	before = continued(t, h2, port, before)
	onlyOn(t, c, "p1", h2)
	settledMigrations(t, h1, 10*time.Second)
	if r := lastMethod(t, h1, "p1"); r.Method != "pages" || r.Phase != "Done" {
		t.Fatalf("migration behind a firewall: %+v, want method pages", r)
	}
	if link := pageLinkOf(t, h1, "p1"); link != "ssh" {
		t.Fatalf("behind a firewall the pages crossed on %q, want ssh", link)
	}
	in(t, h2, append([]string{"iptables", "-D"}, reject...)...)

	// Rollback after the dump: the target's import refuses (the volume
	// exists there), so the source has no pages but its recording.
	vport := simhost.Port()
	h1.MustRun("podman", "run", "-d", "--name", "p2", "--network", "host", "-v", "p2vol:/data",
		simhost.WorkloadImage, "-mib", "32", "-listen", fmt.Sprintf("127.0.0.1:%d", vport))
	vbefore := h1.WaitReport(vport, 30*time.Second)
	h2.MustRun("podman", "volume", "create", "p2vol")
	out, errOut, code := h1.CLI("migrate", "p2", "--to", h2.Name)
	if code != 1 {
		t.Fatalf("migrate p2: exit %d, want 1\n%s%s", code, out, errOut)
	}
	t.Logf("expected failure:\n%s%s", errOut, out)
	continued(t, h1, vport, vbefore)
	onlyOn(t, c, "p2", h1)
	settledMigrations(t, h1, 10*time.Second)
	if r := lastMethod(t, h1, "p2"); r.Phase != "RolledBack" || !strings.Contains(r.Error, "already exists") {
		t.Fatalf("p2: %+v", r)
	}
}

// pageLinkOf is what carried the pages of the newest migration of name
// (its record's pages.link).
func pageLinkOf(t *testing.T, h *simhost.AgentHost, name string) string {
	t.Helper()
	rec, _ := record(t, h, name)
	if rec.Precopy == nil || rec.Precopy.Pages == nil {
		t.Fatalf("migration %s of %s has no page report", rec.ID, name)
	}
	return rec.Precopy.Pages.Link
}
