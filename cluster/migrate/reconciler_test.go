package migrate

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
)

// countCheckpoints counts checkpoints on a host's fake engine, optionally
// holding each one at gate until it is closed.
func countCheckpoints(h *fakeHost, gate <-chan struct{}) *atomic.Int32 {
	var n atomic.Int32
	h.eng.FailCheckpoint = func(string) error {
		n.Add(1)
		if gate != nil {
			<-gate
		}
		return nil
	}
	return &n
}

// Writes that fail (a raft apply that times out while this node still
// leads) are decided again on the next pass: the migration still ends,
// with one checkpoint.
func TestReconcilerRetriesFailedWrites(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	w.hosts["h1"].eng.Run("web", "img:1", 1<<20, nil)
	n := countCheckpoints(w.hosts["h1"], nil)
	var mu sync.Mutex
	failed := map[string]int{}
	w.store.failPut = func(r cluster.MigrationRecord) bool {
		mu.Lock()
		defer mu.Unlock()
		// The first write of every phase fails (after the first).
		key := r.Phase
		if r.Phase == Planned {
			return false
		}
		failed[key]++
		return failed[key] == 1
	}
	co, _ := w.leader(t)
	rec, err := co.Migrate(context.Background(), MigrateRequest{Container: "web", To: "h2"})
	if err != nil {
		t.Fatal(err)
	}
	end := w.waitEnd(t, rec.ID)
	if end.Phase != Done {
		t.Fatalf("ended %s: %s", end.Phase, end.Error)
	}
	w.runningOn(t, "web", "h2")
	if got := n.Load(); got != 1 {
		t.Fatalf("%d checkpoints, want 1", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if failed[Confirming] == 0 || failed[Done] == 0 {
		t.Fatalf("writes that failed: %v", failed)
	}
}

// A leader that loses its term while the source is migrating out does not
// cut the migration: the next leader attaches to the source's run, which
// checkpoints once, and finishes it.
func TestNewLeaderAttachesToTheSourcesRun(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	w.hosts["h1"].eng.Run("web", "img:1", 1<<20, nil)
	w.hosts["h2"].eng.AddImage("img:1")
	gate := make(chan struct{})
	n := countCheckpoints(w.hosts["h1"], gate)
	co1, stop1 := w.leader(t)
	rec, err := co1.Migrate(context.Background(), MigrateRequest{Container: "web", To: "h2"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the checkpoint to start", func() bool { return n.Load() == 1 })
	stop1() // leadership lost mid-checkpoint
	w.leader(t)
	close(gate)
	end := w.waitEnd(t, rec.ID)
	if end.Phase != Done {
		t.Fatalf("ended %s: %s", end.Phase, end.Error)
	}
	w.runningOn(t, "web", "h2")
	if got := n.Load(); got != 1 {
		t.Fatalf("%d checkpoints, want 1", got)
	}
	if end.Downtime <= 0 {
		t.Fatalf("downtime %s: the new leader should have the source's measurement", end.Downtime)
	}
}

// Asking the source twice for the same migration is harmless: both callers
// read the same run, which checkpoints once; a third, after the end, gets
// the outcome replayed.
func TestMigrateOutTwiceCheckpointsOnce(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	c := w.hosts["h1"].eng.Run("web", "img:1", 1<<20, nil)
	w.hosts["h2"].eng.AddImage("img:1")
	gate := make(chan struct{})
	n := countCheckpoints(w.hosts["h1"], gate)
	w.store.recs["m1"] = cluster.MigrationRecord{ID: "m1", Container: c.ID, From: "h1", To: "h2", Phase: Planned, SourceAsked: true}
	req := OutRequest{Migration: "m1", Container: c.ID}
	call := func() []Progress {
		rr, err := w.do(context.Background(), "h1", http.MethodPost, "/v1/agent/migrate-out", req)
		if err != nil {
			t.Error(err)
			return nil
		}
		var out []Progress
		sc := bufio.NewScanner(rr.Body)
		for sc.Scan() {
			var p Progress
			if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
				t.Error(err)
			}
			out = append(out, p)
		}
		return out
	}
	var wg sync.WaitGroup
	results := make([][]Progress, 2)
	for i := range results {
		wg.Add(1)
		go func() { defer wg.Done(); results[i] = call() }()
	}
	waitFor(t, "the checkpoint to start", func() bool { return n.Load() == 1 })
	time.Sleep(50 * time.Millisecond) // the second caller attaches meanwhile
	close(gate)
	wg.Wait()
	results = append(results, call())
	for i, ps := range results {
		if len(ps) == 0 || ps[len(ps)-1].Kind != progRestored {
			t.Fatalf("caller %d got %+v", i, ps)
		}
		if ps[0].Kind != EvFrozen {
			t.Fatalf("caller %d missed the first lines: %+v", i, ps)
		}
	}
	if got := n.Load(); got != 1 {
		t.Fatalf("%d checkpoints, want 1", got)
	}
	if got, err := w.hosts["h2"].eng.Inspect(context.Background(), "web"); err != nil || !got.Running {
		t.Fatalf("not running on the target: %+v %v", got, err)
	}
}

// A migrate-out whose container no longer runs here (an earlier run froze
// it, and this agent has since restarted) fails without claiming the
// container was untouched, so the leader looks at the target first.
func TestMigrateOutOfAStoppedContainerIsNotUntouched(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	c := w.hosts["h1"].eng.Run("web", "img:1", 1<<20, nil)
	if _, err := w.hosts["h1"].eng.Checkpoint(context.Background(), c.ID, discard{}, engineKeep()); err != nil {
		t.Fatal(err)
	}
	w.store.recs["m1"] = cluster.MigrationRecord{ID: "m1", Container: c.ID, From: "h1", To: "h2", Phase: Checkpointing, SourceAsked: true}
	rr, err := w.do(context.Background(), "h1", http.MethodPost, "/v1/agent/migrate-out", OutRequest{Migration: "m1"})
	if err != nil {
		t.Fatal(err)
	}
	var p Progress
	if err := json.Unmarshal([]byte(strings.TrimSpace(rr.Body.String())), &p); err != nil {
		t.Fatal(err, rr.Body.String())
	}
	if p.Kind != EvFailed || p.Untouched {
		t.Fatalf("%+v", p)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

type discard struct{}

func (discard) Write(b []byte) (int, error) { return len(b), nil }

func engineKeep() engine.CheckpointOptions { return engine.CheckpointOptions{Keep: true} }

// countingMethod is a transfer method of its own: the direct one, counted.
type countingMethod struct {
	inner TransferMethod
	n     *atomic.Int32
}

func (countingMethod) Name() string { return "counting" }

func (m countingMethod) Transfer(ctx context.Context, job *OutJob) (OutResult, error) {
	m.n.Add(1)
	return m.inner.Transfer(ctx, job)
}

// Transfer methods are chosen per migration and recorded in the record; a
// method the source does not have fails the migration before anything is
// frozen.
func TestTransferMethodPerMigration(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	w.hosts["h1"].eng.Run("web", "img:1", 1<<20, nil)
	w.hosts["h1"].eng.Run("db", "img:1", 1<<20, nil)
	var n atomic.Int32
	direct, _ := w.hosts["h1"].agent.method(MethodDirect)
	w.hosts["h1"].agent.RegisterMethod(countingMethod{direct, &n})
	co, _ := w.leader(t)
	ctx := context.Background()
	rec, err := co.Migrate(ctx, MigrateRequest{Container: "web", To: "h2", Method: "counting"})
	if err != nil {
		t.Fatal(err)
	}
	if end := w.waitEnd(t, rec.ID); end.Phase != Done || end.Method != "counting" || n.Load() != 1 {
		t.Fatalf("ended %s with method %q after %d transfers", end.Phase, end.Method, n.Load())
	}
	rec, err = co.Migrate(ctx, MigrateRequest{Container: "db", To: "h2", Method: "teleport"})
	if err != nil {
		t.Fatal(err)
	}
	end := w.waitEnd(t, rec.ID)
	if end.Phase != RolledBack || !end.Untouched || !strings.Contains(end.Error, `no transfer method "teleport"`) {
		t.Fatalf("%+v", end)
	}
	w.runningOn(t, "db", "h1")
}
