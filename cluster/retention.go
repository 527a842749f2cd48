package cluster

import (
	"context"
	"fmt"
	"sort"
	"time"
)

// Retention bounds the replicated history: finished migration records and
// events are kept by count and by age, so that the state, and with it every
// raft snapshot, stays bounded however long the cluster runs. Unfinished
// migration records, hosts, locks, snapshot records and container reports
// are never pruned by it.
type Retention struct {
	// Migrations is how many finished migration records are kept at most
	// (the most recently finished).
	Migrations int `json:"migrations"`
	// MigrationsMaxAge drops finished records that finished longer ago.
	// Zero: no age limit.
	MigrationsMaxAge time.Duration `json:"migrations_max_age"`
	// Events is how many events are kept at most (the newest).
	Events int `json:"events"`
	// EventsMaxAge drops events stamped longer ago. Zero: no age limit.
	EventsMaxAge time.Duration `json:"events_max_age"`
}

// DefaultRetention returns the defaults that config documents: a thousand
// of each, for at most 30 days. With them a snapshot stays within a few
// megabytes (see docs/architecture.md, "How far it scales").
func DefaultRetention() Retention {
	return Retention{Migrations: 1000, MigrationsMaxAge: 30 * 24 * time.Hour, Events: 1000, EventsMaxAge: 30 * 24 * time.Hour}
}

// maxHistory is the backstop the FSM applies by itself, whatever the
// leader's retention and even with no leader pruning at all: beyond it the
// oldest finished records and events are dropped as entries are applied.
// Retention counts may not exceed it.
const maxHistory = 100000

// PruneType drops finished migration records and events outside a
// retention. Entries of this type are written only by the leader.
const PruneType MessageType = 12

// PruneRequest prunes the history to Retention as of At. Every replica
// makes the same decision from the entry alone: ages are measured against
// At, stamped by the leader before Apply, never against a replica's clock,
// and the retention travels in the entry, so agents configured differently
// still agree.
type PruneRequest struct {
	At        time.Time `json:"at"`
	Retention Retention `json:"retention"`
}

func (r *PruneRequest) validate() error {
	if r.At.IsZero() {
		return fmt.Errorf("prune: no time: %w", ErrInvalid)
	}
	return r.Retention.Validate()
}

// Validate checks the counts (1 to 100000) and ages (not negative).
func (r Retention) Validate() error {
	for _, c := range []struct {
		what string
		n    int
	}{{"migrations", r.Migrations}, {"events", r.Events}} {
		if c.n < 1 || c.n > maxHistory {
			return fmt.Errorf("retention of %s: %d (expected 1 to %d): %w", c.what, c.n, maxHistory, ErrInvalid)
		}
	}
	if r.MigrationsMaxAge < 0 || r.EventsMaxAge < 0 {
		return fmt.Errorf("retention: negative age: %w", ErrInvalid)
	}
	return nil
}

func (f *fsm) applyPrune(req PruneRequest) error {
	migs, evs := f.s.prune(req.At, req.Retention)
	if migs+evs > 0 {
		f.log.Debug("pruned history", "migrations", migs, "events", evs, "as_of", req.At)
	}
	return nil
}

// prune drops what r does not keep as of at (zero at: counts only) and
// returns how many records and events it dropped. It is deterministic: it
// reads nothing but the state and its arguments, and breaks ties by ID and
// log order.
func (s *state) prune(at time.Time, r Retention) (migrations, events int) {
	type fin struct {
		id string
		at time.Time
	}
	var finished []fin
	for id, m := range s.Migrations {
		if m.FinishedAt.IsZero() {
			continue
		}
		if !at.IsZero() && r.MigrationsMaxAge > 0 && m.FinishedAt.Before(at.Add(-r.MigrationsMaxAge)) {
			delete(s.Migrations, id)
			migrations++
			continue
		}
		finished = append(finished, fin{id, m.FinishedAt})
	}
	older := func(a, b fin) bool { return a.at.Before(b.at) || a.at.Equal(b.at) && a.id < b.id }
	if extra := len(finished) - r.Migrations; r.Migrations > 0 && extra > 0 {
		if extra > 8 {
			sort.Slice(finished, func(i, j int) bool { return older(finished[i], finished[j]) })
		} else { // the usual case (a prune every housekeeping pass): a few scans beat a sort
			for i := range extra {
				m := i
				for j := i + 1; j < len(finished); j++ {
					if older(finished[j], finished[m]) {
						m = j
					}
				}
				finished[i], finished[m] = finished[m], finished[i]
			}
		}
		for _, x := range finished[:extra] {
			delete(s.Migrations, x.id)
		}
		migrations += extra
	}
	kept := s.Events[:0]
	for _, e := range s.Events {
		if !at.IsZero() && r.EventsMaxAge > 0 && e.At.Before(at.Add(-r.EventsMaxAge)) {
			events++
			continue
		}
		kept = append(kept, e)
	}
	if extra := len(kept) - r.Events; r.Events > 0 && extra > 0 {
		kept = append(kept[:0], kept[extra:]...)
		events += extra
	}
	clear(s.Events[len(kept):])
	s.Events = kept
	if events > 0 {
		s.eventIDs = nil
	}
	return migrations, events
}

// backstop applies maxHistory after an entry that may have grown the
// history.
func (s *state) backstop() {
	if len(s.Migrations) > maxHistory || len(s.Events) > maxHistory {
		s.prune(time.Time{}, Retention{Migrations: maxHistory, Events: maxHistory})
	}
}

// historyStats is what the leader looks at to decide whether to prune.
type historyStats struct {
	finished, events            int
	oldestFinished, oldestEvent time.Time
}

func (f *fsm) historyStats() historyStats {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var st historyStats
	for _, m := range f.s.Migrations {
		if m.FinishedAt.IsZero() {
			continue
		}
		st.finished++
		if st.oldestFinished.IsZero() || m.FinishedAt.Before(st.oldestFinished) {
			st.oldestFinished = m.FinishedAt
		}
	}
	st.events = len(f.s.Events)
	for _, e := range f.s.Events {
		if st.oldestEvent.IsZero() || e.At.Before(st.oldestEvent) {
			st.oldestEvent = e.At
		}
	}
	return st
}

// pruneDue reports whether the history exceeds r as of now.
func pruneDue(st historyStats, now time.Time, r Retention) bool {
	old := func(t time.Time, age time.Duration) bool { return age > 0 && !t.IsZero() && t.Before(now.Add(-age)) }
	return st.finished > r.Migrations || st.events > r.Events ||
		old(st.oldestFinished, r.MigrationsMaxAge) || old(st.oldestEvent, r.EventsMaxAge)
}

// housekeepingInterval is how often the leader checks the history against
// the retention and the container reports against the members. Between two
// checks the history may exceed its retention by what one interval adds.
const housekeepingInterval = 10 * time.Second

// housekeepingLoop runs on the leader for one term (see leaderTerm): it
// prunes the history when it exceeds the retention, and forgets the
// container reports of hosts that left the cluster. A failed write is
// retried on the next pass.
func (c *Cluster) housekeepingLoop(ctx context.Context) error {
	for {
		if err := c.housekeep(ctx); err != nil && ctx.Err() == nil {
			c.logger.Warn("housekeeping", "err", err)
		}
		if err := sleepCtx(ctx, jitter(housekeepingInterval)); err != nil {
			return nil
		}
	}
}

func (c *Cluster) housekeep(ctx context.Context) error {
	now := time.Now().UTC()
	r := c.cfg.Retention
	if pruneDue(c.fsm.historyStats(), now, r) {
		if err := c.apply(ctx, PruneType|IgnoreUnknownTypeFlag, PruneRequest{At: now, Retention: r}); err != nil {
			return err
		}
	}
	return c.forgetGoneHosts(ctx)
}
