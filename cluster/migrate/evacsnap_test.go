package migrate

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestSnapshotWindow(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := SnapshotBudget{Share: 0.25, Parallel: 4, NoDeadline: time.Minute}
	for _, tc := range []struct {
		name     string
		deadline time.Time
		b        SnapshotBudget
		want     time.Duration
	}{
		{"AWS two-minute notice", now.Add(2 * time.Minute), b, 30 * time.Second},
		{"no deadline", time.Time{}, b, time.Minute},
		{"deadline passed", now.Add(-time.Second), b, 0},
		{"deadline now", now, b, 0},
		{"share out of range takes the default", now.Add(time.Minute), SnapshotBudget{Share: 1.5}, 15 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := snapshotWindow(now, tc.deadline, tc.b); got != tc.want {
				t.Fatalf("window %v, want %v", got, tc.want)
			}
		})
	}
}

// fakeSnapshotter takes d per snapshot (or until its context ends) and
// tracks how many run at once.
type fakeSnapshotter struct {
	d        map[string]time.Duration
	fail     map[string]bool
	running  atomic.Int32
	maxSeen  atomic.Int32
	mu       sync.Mutex
	finished []string
}

func (f *fakeSnapshotter) Snapshot(ctx context.Context, host, container, reason string) error {
	n := f.running.Add(1)
	defer f.running.Add(-1)
	for {
		m := f.maxSeen.Load()
		if n <= m || f.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	select {
	case <-time.After(f.d[container]):
	case <-ctx.Done():
		return ctx.Err()
	}
	if f.fail[container] {
		return errors.New("criu failed")
	}
	f.mu.Lock()
	f.finished = append(f.finished, container)
	f.mu.Unlock()
	return nil
}

// TestRunSnapshots: snapshots run in parallel up to the bound, a failure is
// an outcome, and when the window closes the rest are cancelled or skipped
// and runSnapshots returns at once, never past the window.
func TestRunSnapshots(t *testing.T) {
	f := &fakeSnapshotter{
		d:    map[string]time.Duration{"a": 10 * time.Millisecond, "b": 10 * time.Millisecond, "c": 10 * time.Millisecond, "slow": time.Hour, "late": time.Millisecond},
		fail: map[string]bool{"c": true},
	}
	targets := []snapTarget{{"h", "a", "a"}, {"h", "b", "b"}, {"h", "c", "c"}, {"h", "slow", "slow"}, {"h", "slow2", "slow"}}
	f.d["slow2"] = time.Hour
	targets = append(targets, snapTarget{"h", "late", "late"})
	window := 300 * time.Millisecond
	start := time.Now()
	outs := runSnapshots(context.Background(), f, targets, window, 2, "test")
	took := time.Since(start)
	if took > window+200*time.Millisecond {
		t.Fatalf("returned after %v, window %v", took, window)
	}
	if m := f.maxSeen.Load(); m > 2 {
		t.Fatalf("%d snapshots ran at once, bound 2", m)
	}
	got := map[string]string{}
	for _, o := range outs {
		switch {
		case o.err == nil:
			got[o.target.id] = "stored"
		case !o.ran:
			got[o.target.id] = "skipped"
		case errors.Is(o.err, errSnapshotWindow):
			got[o.target.id] = "cut"
		default:
			got[o.target.id] = "failed"
		}
	}
	want := map[string]string{"a": "stored", "b": "stored", "c": "failed", "slow": "cut", "slow2": "cut", "late": "skipped"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s, want %s (all: %v)", k, got[k], v, got)
		}
	}
	// A closed window takes nothing.
	outs = runSnapshots(context.Background(), f, targets[:1], 0, 2, "test")
	if outs[0].ran || outs[0].err == nil {
		t.Fatalf("a zero window ran a snapshot: %+v", outs[0])
	}
}
