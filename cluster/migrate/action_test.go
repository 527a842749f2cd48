package migrate

import (
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
)

// TestNextActionTable: every phase, crossed with the observations that
// matter in it.
func TestNextActionTable(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	rec := func(phase string, f ...func(*cluster.MigrationRecord)) cluster.MigrationRecord {
		m := cluster.MigrationRecord{ID: "m1", Container: "c1", Name: "web", From: "h1", To: "h2", Phase: phase, Image: "img"}
		if phase != Planned {
			m.SourceAsked = true
		}
		for _, fn := range f {
			fn(&m)
		}
		return m
	}
	asked := func(m *cluster.MigrationRecord) { m.SourceAsked = true }
	noImage := func(m *cluster.MigrationRecord) { m.Image = "" }
	late := func(m *cluster.MigrationRecord) { m.Deadline = now.Add(-time.Second) }
	early := func(m *cluster.MigrationRecord) { m.Deadline = now.Add(time.Minute) }
	untouched := func(m *cluster.MigrationRecord) { m.Untouched = true }
	ok := Observation{Now: now, SourceAlive: true, TargetAlive: true, MayStart: true}
	with := func(f func(*Observation)) Observation { o := ok; f(&o); return o }
	out := func(res Outcome, target TargetState) Observation {
		return with(func(o *Observation) { o.Out, o.Target, o.OutErr = res, target, "boom" })
	}

	type row struct {
		name string
		m    cluster.MigrationRecord
		o    Observation
		want ActionKind
		// untouched is what an ActFail must say; reason a substring of
		// its reason.
		untouched bool
		reason    string
	}
	rows := []row{
		// Terminal records and steps in flight.
		{"done", rec(Done), ok, ActWait, false, "finished"},
		{"rolled back", rec(RolledBack), ok, ActWait, false, "finished"},
		{"busy", rec(Planned), with(func(o *Observation) { o.Busy = true }), ActWait, false, "in flight"},
		{"busy in confirming", rec(Confirming), with(func(o *Observation) { o.Busy = true }), ActWait, false, "in flight"},

		// Planned, source not asked yet.
		{"planned: check the image", rec(Planned), ok, ActCheckImage, false, ""},
		{"planned: push the image", rec(Planned), with(func(o *Observation) { o.ImageChecked = true }), ActPushImage, false, ""},
		{"planned: image present", rec(Planned), with(func(o *Observation) { o.ImageChecked, o.TargetHasImage = true, true }), ActMigrateOut, false, ""},
		{"planned: no image to check", rec(Planned, noImage), ok, ActMigrateOut, false, ""},
		{"planned: deadline passed", rec(Planned, late), ok, ActFail, true, "deadline passed"},
		{"planned: deadline ahead", rec(Planned, early, noImage), ok, ActMigrateOut, false, ""},
		{"planned: target dead", rec(Planned), with(func(o *Observation) { o.TargetAlive = false }), ActFail, true, "not alive"},
		{"planned: source dead", rec(Planned), with(func(o *Observation) { o.SourceAlive = false }), ActWait, false, "source h1"},
		{"planned: batch full", rec(Planned), with(func(o *Observation) { o.MayStart = false }), ActWait, false, "batch"},

		// Asked (by this leader or an earlier one): ask again, which
		// attaches to the source's run; deadlines and dead targets no
		// longer make it untouched.
		{"asked: ask again", rec(Planned, asked), ok, ActMigrateOut, false, ""},
		{"asked: deadline passed", rec(Planned, asked, late), ok, ActMigrateOut, false, ""},
		{"asked: target dead", rec(Planned, asked), with(func(o *Observation) { o.TargetAlive = false }), ActMigrateOut, false, ""},
		{"checkpointing: ask again", rec(Checkpointing), ok, ActMigrateOut, false, ""},
		{"transferring: ask again", rec(Transferring), ok, ActMigrateOut, false, ""},
		{"restoring: ask again", rec(Restoring), ok, ActMigrateOut, false, ""},
		{"migrating out", rec(Transferring), with(func(o *Observation) { o.Out = OutRunning }), ActWait, false, "migrating out"},

		// The source's step ended: the target decides.
		{"restored: look at the target", rec(Restoring), out(OutRestored, TargetUnknown), ActInspectTarget, false, ""},
		{"restored: runs", rec(Restoring), out(OutRestored, TargetRunning), ActConfirm, false, ""},
		{"restored: does not run", rec(Restoring), out(OutRestored, TargetNotRunning), ActFail, false, "does not run"},
		{"restored: target silent but alive", rec(Restoring), out(OutRestored, TargetUnreachable), ActInspectTarget, false, ""},
		{"restored: target silent too long", rec(Restoring), with(func(o *Observation) {
			o.Out, o.Target, o.TargetTries = OutRestored, TargetUnreachable, TargetTries
		}), ActFail, false, "cannot tell"},
		{"restored: target dead", rec(Restoring), with(func(o *Observation) {
			o.Out, o.Target, o.TargetAlive = OutRestored, TargetUnreachable, false
		}), ActFail, false, "not alive to confirm"},
		{"failed: look at the target", rec(Transferring), out(OutFailed, TargetUnknown), ActInspectTarget, false, ""},
		{"failed: the target runs it after all", rec(Transferring), out(OutFailed, TargetRunning), ActConfirm, false, ""},
		{"failed: target has nothing", rec(Transferring), out(OutFailed, TargetNotRunning), ActFail, false, "boom"},
		{"failed untouched", rec(Planned, asked), with(func(o *Observation) { o.Out, o.OutUntouched, o.OutErr = OutFailed, true, "preflight" }), ActFail, true, "preflight"},
		{"lost: look at the target", rec(Checkpointing), out(OutLost, TargetUnknown), ActInspectTarget, false, ""},
		{"lost: target runs it", rec(Checkpointing), out(OutLost, TargetRunning), ActConfirm, false, ""},
		{"lost: target has nothing", rec(Checkpointing), out(OutLost, TargetNotRunning), ActFail, false, "boom"},
		{"lost without a reason", rec(Checkpointing), with(func(o *Observation) { o.Out, o.Target = OutLost, TargetNotRunning }), ActFail, false, "stopped answering"},
		{"lost: target silent but alive", rec(Checkpointing), out(OutLost, TargetUnreachable), ActInspectTarget, false, ""},
		{"lost: target silent too long", rec(Checkpointing), with(func(o *Observation) {
			o.Out, o.Target, o.TargetTries = OutLost, TargetUnreachable, TargetTries
		}), ActFail, false, "cannot tell"},
		{"lost: target dead", rec(Checkpointing), with(func(o *Observation) {
			o.Out, o.Target, o.TargetAlive = OutLost, TargetUnreachable, false
		}), ActFail, false, "not alive"},

		// From Confirming on, only forward.
		{"confirming", rec(Confirming), ok, ActRemoveSource, false, ""},
		{"confirming, source dead", rec(Confirming), with(func(o *Observation) { o.SourceAlive = false }), ActRemoveSource, false, ""},

		// Rolling back: the target first, then the source.
		{"rolling back: abort on the target", rec(RollingBack), ok, ActAbortTarget, false, ""},
		{"rolling back: then resume", rec(RollingBack), with(func(o *Observation) { o.TargetAborted = true }), ActResumeSource, false, ""},
		{"rolling back: target dead a moment", rec(RollingBack), with(func(o *Observation) { o.TargetAlive, o.TargetDeadFor = false, time.Second }), ActWait, false, "no copy"},
		{"rolling back: target gone for good", rec(RollingBack), with(func(o *Observation) { o.TargetAlive, o.TargetDeadFor = false, DeadTargetGrace }), ActResumeSource, false, ""},
		{"rolling back untouched", rec(RollingBack, untouched), with(func(o *Observation) { o.TargetAlive, o.SourceAlive = false, false }), ActRolledBack, false, ""},
	}
	// Every phase has rows.
	seen := map[string]bool{}
	for _, r := range rows {
		seen[r.m.Phase] = true
	}
	for _, ph := range allPhases {
		if !seen[ph] {
			t.Errorf("no row for phase %s", ph)
		}
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			got := NextAction(r.m, r.o)
			if got.Kind != r.want {
				t.Fatalf("NextAction = %+v, want %s", got, r.want)
			}
			if got.Kind == ActFail && got.Untouched != r.untouched {
				t.Fatalf("untouched = %v, want %v", got.Untouched, r.untouched)
			}
			if !strings.Contains(got.Reason, r.reason) {
				t.Fatalf("reason %q lacks %q", got.Reason, r.reason)
			}
		})
	}
}

// NextAction never answers anything but ActWait for a finished record or a
// busy one, whatever else is observed.
func TestNextActionQuiet(t *testing.T) {
	for _, ph := range allPhases {
		for _, o := range []Observation{{Busy: true}, {Busy: true, Out: OutRestored, Target: TargetRunning}} {
			m := cluster.MigrationRecord{ID: "m", Phase: ph}
			if got := NextAction(m, o); got.Kind != ActWait {
				t.Errorf("%s, %+v: %s", ph, o, got.Kind)
			}
		}
		if Terminal(ph) {
			if got := NextAction(cluster.MigrationRecord{Phase: ph}, Observation{TargetAlive: true, SourceAlive: true, MayStart: true}); got.Kind != ActWait {
				t.Errorf("%s: %s", ph, got.Kind)
			}
		}
	}
}
