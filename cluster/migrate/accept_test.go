package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
)

func TestAcceptance(t *testing.T) {
	local := []engine.Container{{ID: "id-web", Name: "web"}, {ID: "id-old", Name: "old", State: "exited"}}
	has := func(img string) bool { return img == "sha256:have" }
	for _, tc := range []struct {
		name    string
		req     []AcceptItem
		mem     int64
		ok      bool
		reason  string
		missing []string
	}{
		{"fits", []AcceptItem{{ID: "a", Name: "a", ImageID: "sha256:have", MemoryBytes: 1 << 30}}, 2 << 30, true, "", nil},
		{"missing images do not refuse", []AcceptItem{{ID: "a", Name: "a", ImageID: "sha256:b"}, {ID: "c", Name: "c", ImageID: "sha256:a"}, {ID: "d", Name: "d", ImageID: "sha256:a"}},
			1 << 30, true, "", []string{"sha256:a", "sha256:b"}},
		{"same name here, even stopped", []AcceptItem{{ID: "x", Name: "old"}}, 1 << 30, false, "named old", nil},
		{"same ID here", []AcceptItem{{ID: "id-web", Name: "renamed"}}, 1 << 30, false, "named renamed", nil},
		{"too big together", []AcceptItem{{ID: "a", Name: "a", MemoryBytes: 600 << 20}, {ID: "b", Name: "b", MemoryBytes: 600 << 20}}, 1 << 30,
			false, "1024 MiB available, 1200 MiB needed", nil},
		{"memory unknown", []AcceptItem{{ID: "a", Name: "a", MemoryBytes: 1 << 40}}, -1, true, "", nil},
	} {
		got := Acceptance(AcceptRequest{From: "h1", Containers: tc.req}, local, tc.mem, has)
		if got.Accepted != tc.ok || !strings.Contains(got.Reason, tc.reason) || !slices.Equal(got.MissingImages, tc.missing) {
			t.Errorf("%s: %+v", tc.name, got)
		}
	}
}

// countingAgents counts the agent calls of a coordinator by path.
type countingAgents struct {
	*world
	mu    sync.Mutex
	calls map[string]int
}

func (a *countingAgents) Call(ctx context.Context, host, path string, in, out any) error {
	a.mu.Lock()
	a.calls[path]++
	a.mu.Unlock()
	return a.world.Call(ctx, host, path, in, out)
}

func (a *countingAgents) count(path string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[path]
}

// leaderCounting runs a coordinator term over counting agents.
func (w *world) leaderCounting(t *testing.T) (*Coordinator, *countingAgents) {
	ag := &countingAgents{world: w, calls: map[string]int{}}
	cfg := DefaultConfig()
	cfg.StepTimeout, cfg.MigrationTimeout, cfg.Tick = 5*time.Second, 20*time.Second, 50*time.Millisecond
	co := NewCoordinator(cfg, w.store, ag)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = co.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	for !co.leading() {
		time.Sleep(time.Millisecond)
	}
	return co, ag
}

// stoppedCopy leaves a stopped container named name on host (a copy that
// the reports may not show yet).
func (w *world) stoppedCopy(t *testing.T, host, name string) {
	c := w.hosts[host].eng.Run(name, "img:1", 1<<20, nil)
	if _, err := w.hosts[host].eng.Checkpoint(context.Background(), c.ID, io.Discard, engine.CheckpointOptions{}); err != nil {
		t.Fatal(err)
	}
}

// Planning reads the replicated reports and asks no host; committing asks
// only the chosen target, and a refusal moves placement to the next one.
func TestPlacementConfirmsWithTheTarget(t *testing.T) {
	ctx := context.Background()
	var names []string
	for i := range 20 {
		names = append(names, fmt.Sprintf("h%02d", i))
	}
	w := newWorld(t, names...)
	for i := range 5 {
		w.hosts["h00"].eng.Run(fmt.Sprintf("c%d", i), "img:1", 1<<20, nil)
	}
	co, ag := w.leaderCounting(t)
	res, err := co.Drain(ctx, DrainRequest{Host: "h00", DryRun: true})
	if err != nil || len(res.Moves) != 5 {
		t.Fatalf("dry run: %+v, %v", res, err)
	}
	if n := len(ag.calls); n != 0 {
		t.Fatalf("a dry-run drain of 5 containers over 20 hosts made agent calls: %v", ag.calls)
	}

	// h01 would be first (by name among equals) but holds a stopped copy
	// named c0: it refuses, and placement asks the next host.
	w.stoppedCopy(t, "h01", "c0")
	rec, err := co.Migrate(ctx, MigrateRequest{Container: "c0"})
	if err != nil {
		t.Fatal(err)
	}
	if rec.To == "h01" || ag.count("/v1/agent/accept") != 2 {
		t.Fatalf("placed on %s after %d accept calls", rec.To, ag.count("/v1/agent/accept"))
	}
	if end := w.waitEnd(t, rec.ID); end.Phase != Done {
		t.Fatalf("%+v", end)
	}
	// Asked for by name, a refusing target fails the request untouched.
	w.stoppedCopy(t, "h01", "c1")
	if _, err := co.Migrate(ctx, MigrateRequest{Container: "c1", To: "h01"}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "named c1") {
		t.Fatalf("migrate to a refusing target: %v", err)
	}
	if len(w.store.recs) != 1 {
		t.Fatalf("refusals left records: %d", len(w.store.recs))
	}
}

// A drain whose target refuses plans those containers again without it.
func TestDrainReplansRefusedMoves(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t, "h1", "h2", "h3")
	for i := range 4 {
		w.hosts["h1"].eng.Run(fmt.Sprintf("c%d", i), "img:1", 1<<20, nil)
	}
	// Make h2 the planner's choice (emptier), then have it refuse.
	for i := range w.store.members {
		if w.store.members[i].Name == "h3" {
			w.store.members[i].MemoryUsed = 4 << 30
		}
	}
	w.stoppedCopy(t, "h2", "c2")
	co, ag := w.leaderCounting(t)
	res, err := co.Drain(ctx, DrainRequest{Host: "h1", Parallel: 4})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range res.Moves {
		if m.To != "h3" || m.Migration == "" {
			t.Fatalf("move %+v: want every container replanned to h3", m)
		}
		if end := w.waitEnd(t, m.Migration); end.Phase != Done {
			t.Fatalf("%+v", end)
		}
	}
	if len(res.Moves) != 4 || ag.count("/v1/agent/accept") != 2 {
		t.Fatalf("%d moves, %d accept calls", len(res.Moves), ag.count("/v1/agent/accept"))
	}

	// Nobody accepts: everything is skipped with the reason, nothing recorded.
	w2 := newWorld(t, "h1", "h2")
	w2.hosts["h1"].eng.Run("x", "img:1", 1<<20, nil)
	w2.stoppedCopy(t, "h2", "x")
	co2, _ := w2.leaderCounting(t)
	res, err = co2.Drain(ctx, DrainRequest{Host: "h1"})
	if err != nil || len(res.Moves) != 1 || !strings.Contains(res.Moves[0].Skipped, "named x") || len(w2.store.recs) != 0 {
		t.Fatalf("drain with no accepting target: %+v, %v, %d records", res, err, len(w2.store.recs))
	}
}

// A host that has not reported its containers is not drained blind.
func TestDrainNeedsAReport(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	w.hosts["h1"].eng.Run("x", "img:1", 1<<20, nil)
	w.store.inventory = func() []cluster.HostContainers { return nil }
	co, _ := w.leaderCounting(t)
	if _, err := co.Drain(context.Background(), DrainRequest{Host: "h1"}); err == nil || !strings.Contains(err.Error(), "not reported") {
		t.Fatalf("drain without a report: %v", err)
	}
}

// A host that gossip suspects (slow to ack under load) still runs its
// containers: a drain of it plans them all, and it is never a target.
func TestDrainOfASuspectHost(t *testing.T) {
	w := newWorld(t, "h1", "h2", "h3")
	for i := range 3 {
		w.hosts["h1"].eng.Run(fmt.Sprintf("c%d", i), "img:1", 1<<20, nil)
	}
	w.hosts["h3"].eng.Run("other", "img:1", 1<<20, nil)
	for i := range w.store.members {
		if n := w.store.members[i].Name; n == "h1" || n == "h2" {
			w.store.members[i].Status = cluster.StatusSuspect
		}
	}
	co, _ := w.leaderCounting(t)
	res, err := co.Drain(context.Background(), DrainRequest{Host: "h1", DryRun: true})
	if err != nil || len(res.Moves) != 3 {
		t.Fatalf("dry-run drain of a suspect host: %+v, %v", res, err)
	}
	for _, m := range res.Moves {
		if m.To != "h3" {
			t.Errorf("%s planned to %q, want h3 (h2 is suspect)", m.Name, m.To)
		}
	}
}
