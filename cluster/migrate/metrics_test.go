package migrate

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemigrate/orchestrate/cluster"
)

func TestMissedDeadline(t *testing.T) {
	dl := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	withDL := dl
	for _, tc := range []struct {
		name     string
		phase    string
		deadline time.Time
		finished time.Time
		want     bool
	}{
		{"done before the deadline", Done, withDL, dl.Add(-time.Second), false},
		{"done after it: moved too late", Done, withDL, dl.Add(time.Second), true},
		{"rolled back after it: never moved", RolledBack, withDL, dl.Add(time.Millisecond), true},
		{"rolled back before it: a failure, not a missed deadline", RolledBack, withDL, dl.Add(-time.Minute), false},
		{"no deadline", Done, time.Time{}, dl.Add(time.Hour), false},
	} {
		r := cluster.MigrationRecord{Phase: tc.phase, Deadline: tc.deadline, FinishedAt: tc.finished}
		if got := missedDeadline(r); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestMetricsFinished(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	// Known labels exist at zero before anything happened.
	for _, name := range []string{`orchestrate_migrations_total{result="rolled_back"}`, `orchestrate_policy_triggers_total{kind="spot-terminate"}`,
		`orchestrate_evacuation_deadline_missed_total{result="done"}`} {
		if !strings.Contains(gather(t, reg), name+" 0") {
			t.Errorf("%s is not there at 0", name)
		}
	}
	dl := time.Now().Add(-time.Minute)
	late := cluster.MigrationRecord{Phase: Done, Downtime: 300 * time.Millisecond, Bytes: 1000, FinishedAt: time.Now(),
		Deadline: dl.UTC()}
	m.finished(late)
	m.finished(cluster.MigrationRecord{Phase: RolledBack, FinishedAt: time.Now()})
	out := gather(t, reg)
	for _, want := range []string{
		`orchestrate_evacuation_deadline_missed_total{result="done"} 1`,
		`orchestrate_evacuation_deadline_missed_total{result="rolled_back"} 0`, // that rollback had no deadline
		`orchestrate_migrations_total{result="rolled_back"} 1`,
		`orchestrate_migrations_total{result="done"} 1`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("%q missing from\n%s", want, out)
		}
	}
}

type fakeView struct {
	leader string
	recs   []cluster.MigrationRecord
}

func (f fakeView) Members() []cluster.Member {
	return []cluster.Member{{Name: "a", Status: cluster.StatusAlive}, {Name: "b", Status: cluster.StatusDead}, {Name: "c", Status: cluster.StatusLeft}}
}
func (f fakeView) Status() cluster.Status {
	return cluster.Status{Leader: f.leader, State: "Follower", Term: "3"}
}
func (f fakeView) Migrations() []cluster.MigrationRecord { return f.recs }

func TestClusterCollector(t *testing.T) {
	for _, tc := range []struct {
		view fakeView
		want []string
	}{
		{fakeView{leader: "a", recs: []cluster.MigrationRecord{{Phase: Transferring}, {Phase: Done}, {Phase: Done}}},
			[]string{`orchestrate_has_leader 1`, `orchestrate_is_leader 0`, `orchestrate_member_alive{member="a"} 1`, `orchestrate_member_alive{member="b"} 0`, `orchestrate_members{status="dead"} 1`, `orchestrate_raft_term 3`,
				`orchestrate_migration_records{phase="Done"} 2`, `orchestrate_migration_records{phase="Transferring"} 1`, `orchestrate_migration_records{phase="RolledBack"} 0`}},
		{fakeView{}, []string{`orchestrate_has_leader 0`, `orchestrate_migration_records{phase="Planned"} 0`}},
	} {
		reg := prometheus.NewRegistry()
		reg.MustRegister(ClusterCollector{C: tc.view})
		out := gather(t, reg)
		if strings.Contains(out, `member="c"`) {
			t.Errorf("a member that left is reported:\n%s", out)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w+"\n") {
				t.Errorf("leader %q: %q missing from\n%s", tc.view.leader, w, out)
			}
		}
	}
}

// gather renders reg in the text exposition format, as /metrics does.
func gather(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			name := mf.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			var v float64
			switch {
			case m.GetCounter() != nil:
				v = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				v = m.GetGauge().GetValue()
			default:
				continue
			}
			b.WriteString(name + " " + strconv.FormatFloat(v, 'g', -1, 64) + "\n")
		}
	}
	return b.String()
}
