package console

import (
	"reflect"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/migrate"
	"github.com/edgemigrate/orchestrate/engine"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func rec(id, name, container, phase string, start int, downtimeMS int, history ...string) cluster.MigrationRecord {
	m := cluster.MigrationRecord{ID: id, Container: container, From: "h1", To: "h2", Phase: phase,
		StartedAt: t0.Add(time.Duration(start) * time.Second), Downtime: time.Duration(downtimeMS) * time.Millisecond,
		Name: name}
	for i, p := range history {
		m.History = append(m.History, cluster.PhaseChange{Phase: p, At: m.StartedAt.Add(time.Duration(i) * 100 * time.Millisecond)})
	}
	if migrate.Terminal(phase) {
		m.FinishedAt = m.StartedAt.Add(2 * time.Second)
	}
	return m
}

func TestBuildViewHostsAndContainers(t *testing.T) {
	raw := Raw{
		Status: &cluster.Status{Node: "h2", Leader: "h1", Term: "4"},
		Members: []cluster.Member{
			{Name: "h3", Addr: "10.99.0.3:7946", Status: "dead", Role: "follower", Containers: 4}, // its last count stays
			{Name: "h1", Addr: "10.99.0.1:7946", Status: "alive", Role: "leader", Cordoned: true, Engine: "podman", CRIUVersion: "4.2.1",
				Kernel: "6.18", CPUs: 2, MemoryUsed: 1 << 30, MemoryTotal: 4 << 30, Containers: 5, HostKey: "ssh-ed25519 AAAA"},
		},
		Hosts: []cluster.Host{{Name: "h1", Cordoned: true, Reason: "maintenance"}},
		Migrations: []cluster.MigrationRecord{
			rec("m1", "w1", "abcdef0123456789", migrate.Transferring, 10, 0, migrate.Planned, migrate.Checkpointing, migrate.Transferring),
		},
		PS: &cluster.PSResult{
			Containers: []cluster.PSEntry{{Host: "h1", Name: "w1", ID: "abcdef0123456789", Image: "img", State: "running"},
				{Host: "h1", Name: "w2", ID: "99", Image: "img", State: "exited"}},
			Errors: []cluster.HostError{{Host: "h3", Error: "timeout"}},
		},
		Problems: []string{"read /v1/events: boom"},
	}
	v := BuildView(raw, 10)
	if v.Agent != "h2" || v.Leader != "h1" || v.Term != "4" {
		t.Errorf("status: %q %q %q", v.Agent, v.Leader, v.Term)
	}
	if len(v.Hosts) != 2 || v.Hosts[0].Name != "h1" || v.Hosts[1].Name != "h3" || v.Hosts[1].Containers != 4 {
		t.Fatalf("hosts not sorted by name: %+v", v.Hosts)
	}
	// h1's own list (2 containers) wins over gossip's count (5).
	want := HostView{Name: "h1", Addr: "10.99.0.1", Status: "alive", Role: "leader", Cordoned: true, Reason: "maintenance", Engine: "podman",
		CRIU: "4.2.1", Kernel: "6.18", CPUs: 2, MemoryUsed: 1 << 30, MemoryTotal: 4 << 30, Containers: 2}
	if !reflect.DeepEqual(v.Hosts[0], want) {
		t.Errorf("host view:\n got %+v\nwant %+v", v.Hosts[0], want)
	}
	if len(v.Containers) != 2 || v.Containers[0].ID != "abcdef012345" || v.Containers[0].Moving != "m1" || v.Containers[0].MoveTo != "h2" || v.Containers[1].Moving != "" {
		t.Errorf("containers: %+v", v.Containers)
	}
	wantProblems := []string{"read /v1/events: boom", "h3 did not list its containers: timeout"}
	if !reflect.DeepEqual(v.Problems, wantProblems) {
		t.Errorf("problems: %q", v.Problems)
	}
}

func TestBuildViewMigrations(t *testing.T) {
	rolled := rec("m2", "w2", "c2", migrate.RolledBack, 20, 0, migrate.Planned, migrate.Checkpointing, migrate.Transferring, migrate.RollingBack, migrate.RolledBack)
	rolled.Error = "restore on h2: CRIU failed"
	done := rec("m1", "", "0123456789abcdef", migrate.Done, 10, 420, migrate.Planned, migrate.Checkpointing, migrate.Restoring, migrate.Confirming, migrate.Done)
	done.Bytes, done.Compression, done.Checkpoint.FrozenTime = 64<<20, "zstd", 180*time.Millisecond
	done.Restore = engine.Stats{Duration: 900 * time.Millisecond}
	planned := rec("m3", "w3", "c3", migrate.Planned, 30, 0)
	v := BuildView(Raw{Migrations: []cluster.MigrationRecord{done, rolled, planned}}, 10)

	if got := []string{v.Migrations[0].ID, v.Migrations[1].ID, v.Migrations[2].ID}; !reflect.DeepEqual(got, []string{"m3", "m2", "m1"}) {
		t.Fatalf("not newest first: %v", got)
	}
	for _, tc := range []struct {
		m             MigrationView
		step          int
		failed, ended bool
	}{
		{v.Migrations[0], 0, false, false}, // Planned
		{v.Migrations[1], 2, true, true},   // rolled back after reaching Transferring
		{v.Migrations[2], 5, false, true},  // Done
	} {
		if tc.m.Step != tc.step || tc.m.Failed != tc.failed || tc.m.Ended != tc.ended {
			t.Errorf("%s: step %d failed %v ended %v; want %d %v %v", tc.m.ID, tc.m.Step, tc.m.Failed, tc.m.Ended, tc.step, tc.failed, tc.ended)
		}
	}
	m1 := v.Migrations[2]
	if m1.Name != "0123456789ab" || m1.DowntimeMS != 420 || m1.FrozenMS != 180 || m1.RestoreMS != 900 || m1.Bytes != 64<<20 || len(m1.History) != 5 {
		t.Errorf("done view: %+v", m1)
	}
	if v.Migrations[1].Error != "restore on h2: CRIU failed" {
		t.Errorf("rollback error lost: %+v", v.Migrations[1])
	}
	if !reflect.DeepEqual(v.Phases, map[string]int{migrate.Done: 1, migrate.RolledBack: 1, migrate.Planned: 1}) {
		t.Errorf("phases: %v", v.Phases)
	}
}

func TestDowntimeWindow(t *testing.T) {
	var recs []cluster.MigrationRecord
	// 12 migrations done, downtimes 100..1200 ms, one rolled back in between.
	for i := 1; i <= 12; i++ {
		recs = append(recs, rec(string(rune('a'+i)), "w", "c", migrate.Done, i, i*100))
	}
	recs = append(recs, rec("rb", "w", "c", migrate.RolledBack, 5, 5000))
	for _, tc := range []struct {
		window            int
		n                 int
		first, last       float64
		median, p95, maxv float64
	}{
		{window: 10, n: 10, first: 300, last: 1200, median: 700, p95: 1200, maxv: 1200},
		{window: 50, n: 12, first: 100, last: 1200, median: 600, p95: 1200, maxv: 1200},
		{window: 1, n: 1, first: 1200, last: 1200, median: 1200, p95: 1200, maxv: 1200},
	} {
		d := BuildView(Raw{Migrations: recs}, tc.window).Downtime
		if len(d.Points) != tc.n || d.Points[0].DowntimeMS != tc.first || d.Points[len(d.Points)-1].DowntimeMS != tc.last {
			t.Errorf("window %d: %d points, first %v last %v", tc.window, len(d.Points), d.Points[0].DowntimeMS, d.Points[len(d.Points)-1].DowntimeMS)
		}
		if d.MedianMS != tc.median || d.P95MS != tc.p95 || d.MaxMS != tc.maxv || d.Window != tc.window {
			t.Errorf("window %d: median %v p95 %v max %v", tc.window, d.MedianMS, d.P95MS, d.MaxMS)
		}
	}
	if d := BuildView(Raw{}, 10).Downtime; d.Points == nil || len(d.Points) != 0 || d.MedianMS != 0 {
		t.Errorf("empty downtime: %+v", d)
	}
}

func TestEventCategory(t *testing.T) {
	for kind, want := range map[string]string{
		"trigger/spot-terminate":           "spot",
		"trigger/spot-stop":                "spot",
		"trigger/rebalance-recommendation": "spot",
		"trigger/maintenance":              "maintenance",
		"trigger/reboot-pending":           "reboot",
		"reboot":                           "reboot",
		"rebalance":                        "rebalance",
		"trigger/rebalance-schedule":       "rebalance",
		"evacuate":                         "evacuation",
		"drain":                            "drain",
		"forensics/snapshot":               "snapshot",
		"something-new":                    "other",
	} {
		if got := EventCategory(kind); got != want {
			t.Errorf("EventCategory(%q) = %q, want %q", kind, got, want)
		}
	}
}

func TestBuildViewEventsAndSnapshots(t *testing.T) {
	raw := Raw{
		Events: []cluster.Event{
			{ID: "e1", Kind: "trigger/spot-terminate", Host: "h1", At: t0, Message: "aws", Data: map[string]string{"action": "received", "source": "aws", "deadline": t0.Add(2 * time.Minute).Format(time.RFC3339)}},
			{ID: "e2", Kind: "evacuate", Host: "h1", At: t0.Add(time.Second), Data: map[string]string{"action": "evacuate", "result": "2 to move"}},
		},
		Snapshots: []cluster.SnapshotRecord{
			{ID: "s1", Name: "w1", Container: "0123456789abcdef", At: t0, Size: 10},
			{ID: "s2", Name: "w2", Container: "c2", At: t0.Add(time.Minute), Size: 20, FrozenTime: 150 * time.Millisecond, LeaveRunning: true},
		},
	}
	v := BuildView(raw, 10)
	if len(v.Events) != 2 || v.Events[0].ID != "e2" || v.Events[1].Category != "spot" || v.Events[1].Source != "aws" || v.Events[1].Deadline == "" {
		t.Errorf("events: %+v", v.Events)
	}
	if !reflect.DeepEqual(v.Triggers, map[string]int{"spot": 1, "evacuation": 1}) {
		t.Errorf("triggers: %v", v.Triggers)
	}
	if len(v.Snapshots) != 2 || v.Snapshots[0].ID != "s2" || v.Snapshots[0].FrozenMS != 150 || !v.Snapshots[0].Running || v.Snapshots[1].Container != "0123456789ab" {
		t.Errorf("snapshots: %+v", v.Snapshots)
	}
}
