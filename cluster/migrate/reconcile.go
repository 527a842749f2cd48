package migrate

import (
	"context"
	"net/http"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
)

// Reconcile brings this host in line with the migration records after the
// agent (or its host) was away: a copy left here by a migration that was
// rolled back while this host could not answer is removed, and so is a
// stopped source copy of a migration that finished. Only the latest record
// of each container counts, and a running source copy is never touched.
// It returns the containers it removed.
func (a *Agent) Reconcile(ctx context.Context, recs []cluster.MigrationRecord) []string {
	latest := map[string]cluster.MigrationRecord{}
	for _, r := range recs {
		if cur, ok := latest[r.Container]; !ok || r.StartedAt.After(cur.StartedAt) {
			latest[r.Container] = r
		}
	}
	var removed []string
	for id, r := range latest {
		var stale bool
		switch {
		case r.Phase == RolledBack && r.To == a.host:
			stale = true // the source's copy is the one that runs
		case r.Phase == Done && r.From == a.host:
			stale = true // the target's copy is the one that runs
		}
		if !stale {
			continue
		}
		unlock := a.lock(ctx, id)
		st, err := a.state(ctx, id)
		if err == nil && st.Exists && (r.Phase == RolledBack || !st.Running) {
			if err := a.eng.Remove(ctx, st.Container.ID); err == nil {
				removed = append(removed, st.Container.Name)
				a.log.Warn("removed a copy the records say belongs elsewhere", "container", st.Container.Name, "migration", r.ID, "phase", r.Phase)
				st.Exists = false
			}
		}
		// What a transfer method kept beside the copy goes with it.
		if err == nil && !st.Exists {
			for _, h := range a.hooks() {
				if r.Phase == RolledBack {
					h.Aborted(ctx, r)
				} else {
					h.SourceSettled(r)
				}
			}
		}
		unlock()
	}
	return removed
}

// ReconcileLoop runs Reconcile when the agent starts (once a leader is
// known, so the records are current) and then every interval, until ctx
// ends.
func (a *Agent) ReconcileLoop(ctx context.Context, lead Leadership, interval time.Duration) error {
	for {
		if cl, err := lead.LeaderClient(); err == nil {
			var recs []cluster.MigrationRecord
			// Only this host's records: a hundred agents asking for all of
			// them every interval would load the leader for nothing.
			if err := cl.Do(ctx, http.MethodGet, "/v1/migrations"+(cluster.HistoryQuery{Host: a.host}).Encode(), nil, &recs); err == nil {
				a.Reconcile(ctx, recs)
			}
		} else if !sleepCtx(ctx, time.Second) {
			return nil
		} else {
			continue
		}
		if !sleepCtx(ctx, interval) {
			return nil
		}
	}
}
