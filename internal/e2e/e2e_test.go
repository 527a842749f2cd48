// Package e2e holds the end-to-end tests: real agents in simulated hosts
// (network namespaces with their own Podman), real CRIU, real SSH transfer,
// real memberlist and raft over TCP, driven through the orchestrate CLI.
package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/internal/simhost"
)

type migrationRow struct {
	ID         string `json:"id"`
	Container  string `json:"container"`
	Name       string `json:"name"`
	From       string `json:"from"`
	To         string `json:"to"`
	Phase      string `json:"phase"`
	DowntimeMS int64  `json:"downtime_ms"`
	Bytes      int64  `json:"bytes"`
	Error      string `json:"error"`
}

func migrations(t *testing.T, h *simhost.AgentHost) []migrationRow {
	t.Helper()
	var rows []migrationRow
	if err := h.JSON(&rows, "migrations"); err != nil {
		t.Fatal(err)
	}
	return rows
}

// settledMigrations waits until every migration record is terminal (a
// container runs on its target a moment before the leader records Done)
// and returns them.
func settledMigrations(t *testing.T, h *simhost.AgentHost, within time.Duration) []migrationRow {
	t.Helper()
	end := time.Now().Add(within)
	for {
		rows := migrations(t, h)
		settled := true
		for _, r := range rows {
			settled = settled && (r.Phase == "Done" || r.Phase == "RolledBack")
		}
		if settled || time.Now().After(end) {
			return rows
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// continued checks that the workload on host at port is the same process
// with the same memory, and that it kept counting.
func continued(t *testing.T, h *simhost.AgentHost, port int, before simhost.Report) simhost.Report {
	t.Helper()
	after := h.WaitReport(port, 15*time.Second)
	if after.Start != before.Start || after.Checksum != before.Checksum || after.Counter < before.Counter {
		t.Fatalf("on %s after migration: %+v; before: %+v", h.Name, after, before)
	}
	return after
}

// onlyOn checks the invariant: the container runs on exactly one host and
// exists nowhere else.
func onlyOn(t *testing.T, c *simhost.Cluster, name string, want *simhost.AgentHost) {
	t.Helper()
	for _, h := range c.Hosts {
		running, exists := h.Running(name), h.Exists(name)
		if h == want && !running {
			t.Errorf("%s does not run on %s", name, h.Name)
		}
		if h != want && exists {
			t.Errorf("%s exists on %s too (running=%v)", name, h.Name, running)
		}
	}
}

func TestE2EMigrateAndRefusals(t *testing.T) {
	c := simhost.NewCluster(t, 3)
	h1, h2, h3 := c.Hosts[0], c.Hosts[1], c.Hosts[2]
	port := simhost.Port()
	h1.RunWorkload(simhost.Workload{Name: "w1", MiB: 64, Port: port})
	before, _ := h1.ProbeReset(port)
	// h2 lacks the image: it is sent before the container freezes.
	h2.MustRun("podman", "rmi", "-af")
	leader := c.Leader()
	m0, err := leader.Metrics()
	if err != nil {
		t.Fatal(err)
	}

	out, errOut, code := h3.CLI("migrate", "w1", "--to", h2.Name)
	if code != 0 {
		t.Fatalf("migrate: exit %d\n%s\n%s", code, out, errOut)
	}
	t.Logf("migrate:\n%s%s", errOut, out)
	after := continued(t, h2, port, before)
	onlyOn(t, c, "w1", h2)
	if out := h2.MustRun("podman", "images", "--format", "{{.Repository}}"); !strings.Contains(out, "orchestrate-workload") {
		t.Fatalf("h2 has no workload image after the migration: %q", out)
	}
	rows := migrations(t, h1)
	if len(rows) != 1 || rows[0].Phase != "Done" || rows[0].From != h1.Name || rows[0].To != h2.Name || rows[0].Bytes == 0 || rows[0].DowntimeMS <= 0 {
		t.Fatalf("migrations: %+v", rows)
	}
	t.Logf("recorded downtime %d ms; the workload saw a gap of %d ms", rows[0].DowntimeMS, after.MaxGapMS)
	// The leader's /metrics moved with it.
	m1, err := leader.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{`orchestrate_migrations_total{result="done"}`, "orchestrate_migration_bytes_total", "orchestrate_migration_downtime_seconds_count"} {
		if simhost.MetricValue(m1, name) <= simhost.MetricValue(m0, name) {
			t.Errorf("%s did not rise: %v -> %v", name, simhost.MetricValue(m0, name), simhost.MetricValue(m1, name))
		}
	}
	if simhost.MetricValue(m1, `orchestrate_members{status="alive"}`) != 3 {
		t.Errorf("members alive: %v", simhost.MetricValue(m1, `orchestrate_members{status="alive"}`))
	}

	// Refusals: each is a clear error, exit 1, and changes nothing.
	if _, _, code := h1.CLI("cordon", h3.Name); code != 0 {
		t.Fatal("cordon failed")
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"migrate", "w1", "--to", h3.Name}, "cordoned"},
		{[]string{"migrate", "no-such-container"}, "not running on any alive host"},
		{[]string{"migrate", "w1", "--to", "nohost"}, "no host nohost"},
	} {
		out, errOut, code := h1.CLI(tc.args...)
		if code != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 1 mentioning %q\n%s", tc.args, code, errOut, tc.want, out)
		}
	}
	// With h3 cordoned, the leader's own choice is h1.
	if out, errOut, code := h2.CLI("migrate", "w1"); code != 0 {
		t.Fatalf("migrate back: exit %d\n%s%s", code, out, errOut)
	}
	continued(t, h1, port, after)
	onlyOn(t, c, "w1", h1)

	// A dead target is refused too.
	h3.StopAgent(9)
	if _, _, code := h1.CLI("uncordon", h3.Name); code != 0 {
		t.Fatal("uncordon failed")
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, errOut, code := h1.CLI("migrate", "w1", "--to", h3.Name)
		if code == 1 && strings.Contains(errOut, "not alive") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("migrate to a dead host: exit %d %s %s", code, out, errOut)
		}
		time.Sleep(300 * time.Millisecond)
	}
	onlyOn(t, c, "w1", h1)
}

func TestE2EDrainWithOptOutAndTCP(t *testing.T) {
	c := simhost.NewCluster(t, 3)
	h1 := c.Hosts[0]
	type wl struct {
		name string
		port int
		rep  simhost.Report
	}
	var ws []*wl
	for i, spec := range []simhost.Workload{
		{Name: "d1", MiB: 32},
		{Name: "d2", MiB: 32, SelfConn: true}, // an established TCP connection
		{Name: "d3", MiB: 16},
		{Name: "pinned", MiB: 8, Labels: map[string]string{"orchestrate.migrate": "false"}},
	} {
		spec.Port = simhost.Port()
		h1.RunWorkload(spec)
		rep, err := h1.ProbeReset(spec.Port)
		if err != nil {
			t.Fatal(i, err)
		}
		ws = append(ws, &wl{spec.Name, spec.Port, rep})
	}
	// h2 lacks the image: it must be sent first.
	c.Hosts[1].MustRun("podman", "rmi", "-af")

	out, errOut, code := h1.CLI("drain", h1.Name, "--parallel", "2")
	t.Logf("drain:\n%s%s", errOut, out)
	if code != 0 {
		t.Fatalf("drain: exit %d", code)
	}
	if !strings.Contains(out, "skipped") || !strings.Contains(out, "orchestrate.migrate=false") {
		t.Errorf("drain output does not report the opted-out container as skipped")
	}
	for _, w := range ws {
		var where *simhost.AgentHost
		for _, h := range c.Hosts {
			if h.Running(w.name) {
				where = h
			}
		}
		if where == nil {
			t.Fatalf("%s runs nowhere", w.name)
		}
		if w.name == "pinned" {
			if where != h1 {
				t.Fatalf("pinned moved to %s", where.Name)
			}
			continue
		}
		if where == h1 {
			t.Fatalf("%s still on the drained host", w.name)
		}
		after := continued(t, where, w.port, w.rep)
		if w.name == "d2" && !after.SelfConn {
			t.Fatalf("d2 lost its TCP connection")
		}
		onlyOn(t, c, w.name, where)
	}
	var ms []struct {
		Name     string `json:"name"`
		Cordoned bool   `json:"cordoned"`
	}
	if err := h1.JSON(&ms, "members"); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Name == h1.Name && !m.Cordoned {
			t.Fatalf("%s not cordoned after drain", h1.Name)
		}
	}
	fmt.Println()
}
