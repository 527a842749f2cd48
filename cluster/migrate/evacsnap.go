package migrate

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/policy"
)

// EventSnapshot is the event kind of a forensic snapshot taken (or not)
// before an evacuation; Data carries "container", "result" and "seconds".
const EventSnapshot = "forensics/snapshot"

// SnapshotBudget bounds the forensic snapshots taken before an evacuation
// (policy.forensics.before_evacuation_*): they run Parallel at a time and
// all of them together get at most Share of the time left until the
// notice's deadline, so that the evacuation itself always starts well
// before it. A notice without a deadline gives them NoDeadline.
type SnapshotBudget struct {
	Share      float64
	Parallel   int
	NoDeadline time.Duration
}

// DefaultSnapshotBudget: a quarter of the notice, four at a time, two
// minutes without a deadline.
func DefaultSnapshotBudget() SnapshotBudget {
	return SnapshotBudget{Share: 0.25, Parallel: 4, NoDeadline: 2 * time.Minute}
}

// SnapshotBudgeter is implemented by a Snapshotter that carries its own
// budget (forensics.Snapshotter, from the configuration).
type SnapshotBudgeter interface {
	SnapshotBudget() SnapshotBudget
}

// snapshotWindow is how long the snapshots before an evacuation may take,
// from now: Share of the time to the deadline, nothing once the deadline
// is that close or past. A pure function.
func snapshotWindow(now, deadline time.Time, b SnapshotBudget) time.Duration {
	d := DefaultSnapshotBudget()
	if b.Share <= 0 || b.Share >= 1 {
		b.Share = d.Share
	}
	if b.NoDeadline <= 0 {
		b.NoDeadline = d.NoDeadline
	}
	if deadline.IsZero() {
		return b.NoDeadline
	}
	left := deadline.Sub(now)
	if left <= 0 {
		return 0
	}
	return time.Duration(float64(left) * b.Share)
}

// snapTarget is a container to snapshot before its host is evacuated.
type snapTarget struct {
	host, id, name string
}

// snapOutcome is how one snapshot went.
type snapOutcome struct {
	target snapTarget
	err    error // nil: stored
	took   time.Duration
	ran    bool // false: the window closed before it started
}

// runSnapshots takes the snapshots, parallel at a time, and returns once
// all are done or the window closed, whichever comes first: those still
// running are cancelled, those not started are skipped. It never runs past
// window.
func runSnapshots(ctx context.Context, s Snapshotter, targets []snapTarget, window time.Duration, parallel int, reason string) []snapOutcome {
	out := make([]snapOutcome, len(targets))
	for i, t := range targets {
		out[i] = snapOutcome{target: t, err: errSnapshotWindow}
	}
	if window <= 0 || len(targets) == 0 {
		return out
	}
	if parallel <= 0 {
		parallel = DefaultSnapshotBudget().Parallel
	}
	ctx, cancel := context.WithTimeout(ctx, window)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	slots := make(chan struct{}, parallel)
	for i, t := range targets {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			// Started: if the window closes before it ends, it was cut,
			// not skipped, even though this goroutine may record it late.
			mu.Lock()
			out[i].ran = true
			mu.Unlock()
			start := time.Now()
			err := s.Snapshot(ctx, t.host, t.id, reason)
			if err != nil && ctx.Err() != nil {
				err = fmt.Errorf("%w: %v", errSnapshotWindow, err)
			}
			mu.Lock()
			out[i] = snapOutcome{target: t, err: err, took: time.Since(start), ran: true}
			mu.Unlock()
		}()
	}
	// Return at the window's end even if a snapshot ignores its context.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]snapOutcome(nil), out...)
}

var errSnapshotWindow = errors.New("the snapshot window before the evacuation closed")

// recordSnapshots writes one event per outcome: stored, failed, or not
// taken because the window closed.
func (co *Coordinator) recordSnapshots(ctx context.Context, t policy.Trigger, outs []snapOutcome) {
	for _, o := range outs {
		result := "stored"
		switch {
		case o.err != nil && !o.ran:
			result = "skipped: " + o.err.Error()
		case o.err != nil:
			result = "failed: " + o.err.Error()
		}
		ev := cluster.Event{ID: cluster.EventID(t.ID, "snapshot", o.target.id), Kind: EventSnapshot, Host: o.target.host, At: co.cfg.Now().UTC(),
			Message: fmt.Sprintf("snapshot of %s before evacuation: %s", o.target.name, result),
			Data:    map[string]string{"trigger": t.ID, "container": o.target.id, "action": "snapshot", "result": result, "seconds": fmt.Sprintf("%.3f", o.took.Seconds())}}
		if err := co.store.AppendEvent(ctx, ev); err != nil && !errors.Is(err, cluster.ErrDuplicate) {
			co.log.Warn("record snapshot outcome", "container", o.target.name, "err", err)
		}
		if o.err != nil {
			co.log.Warn("snapshot before evacuation", "container", o.target.name, "result", result)
		}
	}
}
