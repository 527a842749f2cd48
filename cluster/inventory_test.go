package cluster

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
)

func TestReportsChanged(t *testing.T) {
	base := engine.Container{ID: "a", Name: "web", Image: "img", ImageID: "sha256:1", State: "running", Running: true,
		Labels: map[string]string{"k": "v"}, MemoryBytes: 256 << 20}
	with := func(f func(c *engine.Container)) []engine.Container {
		c := base
		c.Labels = map[string]string{"k": "v"}
		f(&c)
		return []engine.Container{c}
	}
	old := []engine.Container{base}
	for _, tc := range []struct {
		name string
		cur  []engine.Container
		want bool
	}{
		{"same", with(func(*engine.Container) {}), false},
		{"memory wiggles by 20 MiB", with(func(c *engine.Container) { c.MemoryBytes += 20 << 20 }), false},
		{"memory grows by a quarter, but under the slack", []engine.Container{{ID: "a", Name: "web", Image: "img", ImageID: "sha256:1", State: "running", Running: true, Labels: map[string]string{"k": "v"}, MemoryBytes: 256<<20 + 30<<20}}, false},
		{"memory doubles", with(func(c *engine.Container) { c.MemoryBytes *= 2 }), true},
		{"memory halves", with(func(c *engine.Container) { c.MemoryBytes /= 2 }), true},
		{"stopped", with(func(c *engine.Container) { c.Running, c.State = false, "exited" }), true},
		{"renamed", with(func(c *engine.Container) { c.Name = "web2" }), true},
		{"relabelled", with(func(c *engine.Container) { c.Labels["k"] = "w" }), true},
		{"label added", with(func(c *engine.Container) { c.Labels["k2"] = "v" }), true},
		{"checkpointed", with(func(c *engine.Container) { c.Checkpointed = true }), true},
		{"new image", with(func(c *engine.Container) { c.ImageID = "sha256:2" }), true},
		{"another container", with(func(c *engine.Container) { c.ID = "b" }), true},
		{"one more", append(with(func(*engine.Container) {}), engine.Container{ID: "b"}), true},
		{"gone", nil, true},
	} {
		if got := reportsChanged(old, tc.cur); got != tc.want {
			t.Errorf("%s: changed = %v", tc.name, got)
		}
	}
}

// One agent with an engine, alone in its cluster: its containers reach the
// replicated state at start; a migration record involving the host makes
// it list again at once (the periodic check is an hour away); the leader's
// housekeeping forgets the report of a host that left.
func TestContainerReports(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an agent")
	}
	fake := enginetest.NewFake()
	web := fake.Run("web", "img:1", 1<<10, nil)
	cfg := DefaultConfig()
	ip := "127.0.92.1"
	cfg.NodeName, cfg.DataDir, cfg.Secret = "r1", t.TempDir(), []byte("0123456789abcdef0123456789abcdef")
	cfg.BindAddr, cfg.RaftBindAddr, cfg.APIBindAddr, cfg.APISocket = ip+":17946", ip+":17947", ip+":17948", ""
	cfg.RaftHeartbeatTimeout, cfg.RaftElectionTimeout = 300*time.Millisecond, 300*time.Millisecond
	cfg.StatsInterval = time.Hour
	cfg.Engine, cfg.EngineType = fake, "fake"
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	names := func() map[string]bool {
		out := map[string]bool{}
		for _, e := range c.PS(ctx).Containers {
			out[e.Name] = true
		}
		return out
	}
	waitFor(t, 15*time.Second, "the first report", func() bool { return names()["web"] })

	db := fake.Run("db", "img:1", 1<<10, nil)
	start := time.Now()
	if err := c.PutMigration(ctx, PutMigrationRequest{Record: MigrationRecord{ID: "m1", Container: web.ID, From: "r1", To: "r2", Phase: "Planned", StartedAt: start}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a report after the migration record changed", func() bool { return names()["db"] })
	t.Logf("MEASURE report after a migration record involving the host: %s", time.Since(start))

	// A change made outside orchestrate waits for the periodic check,
	// whose body is this.
	if err := fake.Remove(ctx, db.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.reportContainers(ctx, false, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "db gone from the report", func() bool { return !names()["db"] })

	// A planner that needs fresh reports asks through raft and waits for
	// them: a container started a moment ago is there when it returns.
	fake.Run("late", "img:1", 1<<10, nil)
	start = time.Now()
	if err := c.RefreshReports(ctx, nil, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if !names()["late"] {
		t.Fatal("RefreshReports returned before the fresh report")
	}
	t.Logf("MEASURE RefreshReports on one host: %s", time.Since(start))
	if err := c.RefreshReports(ctx, []string{"nobody"}, 200*time.Millisecond); !errors.Is(err, ErrNoReport) {
		t.Fatalf("a report from a host that does not exist: %v", err)
	}

	// A report of a host that is neither a member nor a raft server is
	// listed as such, and forgotten by the leader's housekeeping.
	if err := c.apply(ctx, ReportContainersType, ReportContainersRequest{Host: "gone", Containers: []engine.Container{{ID: "x", Name: "x"}}, At: start}); err != nil {
		t.Fatal(err)
	}
	if res := c.PS(ctx); len(res.Errors) != 1 || res.Errors[0].Host != "gone" || names()["x"] {
		t.Fatalf("ps with a report of a host that left: %+v", res)
	}
	if err := c.housekeep(ctx); err != nil {
		t.Fatal(err)
	}
	if inv := c.Inventory(); len(inv) != 1 || inv[0].Host != "r1" || len(inv[0].Containers) != 2 {
		t.Fatalf("reports after housekeeping: %+v", inv)
	}
}

func TestGossipedMemUsed(t *testing.T) {
	const gib = int64(1) << 30
	for _, tc := range []struct {
		last, now, total, want int64
	}{
		{0, 3 * gib, 16 * gib, 3 * gib},               // first refresh
		{3 * gib, 3*gib + 200<<20, 16 * gib, 3 * gib}, // under 256 MiB (16 GiB / 64): kept
		{3 * gib, 3*gib + 300<<20, 16 * gib, 3*gib + 300<<20},
		{3 * gib, 3*gib - 300<<20, 16 * gib, 3*gib - 300<<20},
		{1 * gib, 1*gib + 20<<20, 1 * gib, 1 * gib}, // small host: at least memSlack
		{1 * gib, 1*gib + 40<<20, 1 * gib, 1*gib + 40<<20},
	} {
		if got := gossipedMemUsed(tc.last, tc.now, tc.total); got != tc.want {
			t.Errorf("gossipedMemUsed(%d, %d, %d) = %d, want %d", tc.last, tc.now, tc.total, got, tc.want)
		}
	}
}

func TestReportDeltas(t *testing.T) {
	a, b, c := engine.Container{ID: "a", Name: "a"}, engine.Container{ID: "b", Name: "b"}, engine.Container{ID: "c", Name: "c"}
	ids := func(f *fsm) (out []string) {
		h, _ := f.hostContainers("h1")
		for _, x := range h.Containers {
			out = append(out, x.ID+"="+x.Name)
		}
		return out
	}
	f := newFSM()
	steps := []struct {
		req     ReportContainersRequest
		wantErr error
		want    []string
	}{
		{ReportContainersRequest{Host: "h1", Containers: []engine.Container{b, a}}, nil, []string{"a=a", "b=b"}},
		{ReportContainersRequest{Host: "h1", Base: 1, Upsert: []engine.Container{c, {ID: "a", Name: "renamed"}}, Remove: []string{"b"}}, nil, []string{"a=renamed", "c=c"}},
		// A delta on a report that was replaced since is refused.
		{ReportContainersRequest{Host: "h1", Base: 1, Remove: []string{"a"}}, ErrConflict, []string{"a=renamed", "c=c"}},
		{ReportContainersRequest{Host: "h1", Base: 2, Remove: []string{"a", "nope"}}, nil, []string{"c=c"}},
		{ReportContainersRequest{Host: "h1", Upsert: []engine.Container{a}}, ErrInvalid, []string{"c=c"}},
		{ReportContainersRequest{Host: "h1", Base: 4, Containers: []engine.Container{a}}, ErrInvalid, []string{"c=c"}},
		{ReportContainersRequest{Host: "h1", Forget: true}, nil, nil},
		{ReportContainersRequest{Host: "h2", Base: 1}, ErrConflict, nil},
	}
	for i, s := range steps {
		err := apply(f, uint64(i+1), cmd(t, ReportContainersType, s.req))
		if !errors.Is(err, s.wantErr) || s.wantErr == nil && err != nil {
			t.Fatalf("step %d: %v, want %v", i+1, err, s.wantErr)
		}
		if got := ids(f); !slices.Equal(got, s.want) {
			t.Fatalf("step %d: report %v, want %v", i+1, got, s.want)
		}
	}
	// Reports travel with IgnoreUnknownTypeFlag (older agents skip them)
	// and may be forwarded; requests for reports come from the leader only.
	if err := checkForwarded(cmd(t, ReportContainersType|IgnoreUnknownTypeFlag, ReportContainersRequest{Host: "h1", Containers: []engine.Container{a}})); err != nil {
		t.Errorf("forwarded report: %v", err)
	}
	if err := checkForwarded(cmd(t, RequestReportsType|IgnoreUnknownTypeFlag, RequestReportsRequest{At: t0})); err == nil {
		t.Error("a forwarded report request was accepted")
	}
	if err := checkForwarded(cmd(t, ReportContainersType|IgnoreUnknownTypeFlag, ReportContainersRequest{Host: "h1", Forget: true})); !errors.Is(err, ErrInvalid) {
		t.Errorf("a forwarded forget: %v, want ErrInvalid", err)
	}
	if err := apply(f, 100, cmd(t, ReportContainersType|IgnoreUnknownTypeFlag, ReportContainersRequest{Host: "h3", Containers: []engine.Container{a}})); err != nil {
		t.Errorf("report with the flag: %v", err)
	}
	// The agent's side: the delta from what is stored to what runs.
	up, rm := reportDelta([]engine.Container{a, b}, []engine.Container{{ID: "a", Name: "a", MemoryBytes: 1 << 20}, c})
	if len(up) != 1 || up[0].ID != "c" || !slices.Equal(rm, []string{"b"}) {
		t.Errorf("reportDelta = %v, %v", up, rm)
	}
}
