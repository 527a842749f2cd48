package cluster

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/edgemigrate/orchestrate/engine"
)

func TestGossipGaps(t *testing.T) {
	known := map[string]bool{"a1": true, "a2": true, "a4": true}
	for _, tc := range []struct {
		servers []string
		want    []string
	}{
		{nil, nil},
		{[]string{"a1", "a2"}, nil},
		{[]string{"a3", "a1", "a2"}, []string{"a3"}},
		{[]string{"a5", "a3", "a4"}, []string{"a3", "a5"}},
		{[]string{"self"}, nil}, // this agent is never a gap
	} {
		got := gossipGaps(tc.servers, func(n string) bool { return known[n] }, "self")
		if !slices.Equal(got, tc.want) {
			t.Errorf("gossipGaps(%v) = %v, want %v", tc.servers, got, tc.want)
		}
	}
}

func TestGapRepairDue(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var g gapRepair
	steps := []struct {
		at   time.Duration
		gap  bool
		want bool
	}{
		{0, false, false},
		{1 * time.Second, true, false},              // first seen: ordinary gossip gets gapGrace
		{1*time.Second + gapGrace - 1, true, false}, // still within the grace
		{1*time.Second + gapGrace, true, true},      // repair
		{1*time.Second + gapGrace + time.Second, true, false},
		{1*time.Second + gapGrace + repairInterval*5/4 + 1, true, true},                           // next one, after the jittered interval
		{1*time.Second + gapGrace + repairInterval*5/4 + 1 + repairInterval*3/2 - 1, true, false}, // the gap stays: the interval doubled
		{1*time.Second + gapGrace + repairInterval*5/4 + 1 + repairInterval*10/4 + 1, true, true},
		{60 * time.Second, false, false}, // closed: the grace and the interval start again
		{61 * time.Second, true, false},
		{61*time.Second + gapGrace, true, true},
		{61*time.Second + gapGrace + repairInterval*5/4 + 1, true, true},
	}
	for i, s := range steps {
		if got := g.due(s.gap, t0.Add(s.at)); got != s.want {
			t.Fatalf("step %d (at %s, gap %v): due = %v, want %v", i, s.at, s.gap, got, s.want)
		}
	}
}

// lossyTransport drops every incoming gossip packet while drop is set;
// streams (push/pull) pass. Its relay goroutine ends with Shutdown.
type lossyTransport struct {
	memberlist.NodeAwareTransport
	drop    atomic.Bool
	packets chan *memberlist.Packet
	done    chan struct{}
	once    sync.Once
}

func newLossyTransport(t memberlist.NodeAwareTransport) *lossyTransport {
	l := &lossyTransport{NodeAwareTransport: t, packets: make(chan *memberlist.Packet), done: make(chan struct{})}
	go func() {
		for {
			select {
			case p := <-t.PacketCh():
				if l.drop.Load() {
					continue
				}
				select {
				case l.packets <- p:
				case <-l.done:
					return
				}
			case <-l.done:
				return
			}
		}
	}()
	return l
}

func (l *lossyTransport) PacketCh() <-chan *memberlist.Packet { return l.packets }

func (l *lossyTransport) Shutdown() error {
	err := l.NodeAwareTransport.Shutdown() // first: see countingTransport.Shutdown
	l.once.Do(func() { close(l.done) })
	return err
}

// gossipOnly is an agent with real memberlist gossip on loopback and
// nothing else.
func gossipOnly(t *testing.T, name, addr string, lossy bool) (*Cluster, *lossyTransport) {
	t.Helper()
	c := &Cluster{
		cfg: Config{NodeName: name, BindAddr: addr, Secret: []byte("antientropy-test-secret-0123456789"),
			ProbeInterval: time.Second, ProbeTimeout: 500 * time.Millisecond, SuspicionMult: 8},
		logger: slog.New(slog.DiscardHandler), members: map[string]*memberEntry{}, acks: map[string]time.Time{},
		wakeBootstrap: make(chan struct{}, 1), wakeReconcile: make(chan struct{}, 1),
	}
	mc, err := c.gossipConfig()
	if err != nil {
		t.Fatal(err)
	}
	var lt *lossyTransport
	ml, err := createGossip(mc, func(nt memberlist.NodeAwareTransport) memberlist.NodeAwareTransport {
		if lossy {
			lt = newLossyTransport(nt)
			return lt
		}
		return nt
	})
	if err != nil {
		t.Fatal(err)
	}
	c.ml = ml
	t.Cleanup(func() { _ = ml.Shutdown() })
	return c, lt
}

func (c *Cluster) knows(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.members[name]
	return ok
}

// missedJoiner is g1 (the seed), g2 and g3 gossiping on loopback, where
// g2 missed every gossiped copy of g3's alive message: its incoming
// packets were dropped while g3 joined. It returns g2 and the seed's
// address.
func missedJoiner(t *testing.T) (*Cluster, string) {
	t.Helper()
	g1, _ := gossipOnly(t, "g1", "127.0.0.1:0", false) // memberlist picks free ports
	g2, lossy := gossipOnly(t, "g2", "127.0.0.1:0", true)
	seed := g1.ml.LocalNode().Address()
	if _, err := g2.ml.Join([]string{seed}); err != nil {
		t.Fatal(err)
	}
	// g1 answers a push/pull with its own table before it merges the
	// joiner's, so g2's Join can return before g1 knows g2; g3 must find
	// g2 in g1's table below.
	waitFor(t, 5*time.Second, "g1 to know g2", func() bool { return g1.knows("g2") })
	lossy.drop.Store(true)
	g3, _ := gossipOnly(t, "g3", "127.0.0.1:0", false)
	if _, err := g3.ml.Join([]string{seed}); err != nil {
		t.Fatal(err)
	}
	if !g3.knows("g2") {
		t.Fatal("g1's table did not reach g3 in the join")
	}
	// The same for g3's Join.
	waitFor(t, 5*time.Second, "g1 to know g3", func() bool { return g1.knows("g3") })
	time.Sleep(2 * time.Second) // g1 and g3 gossip g3's alive message: g2 drops every copy
	lossy.drop.Store(false)
	time.Sleep(time.Second)
	if g2.knows("g3") {
		t.Fatal("g2 learnt of g3 by gossip: the test did not make it miss the joiner")
	}
	return g2, seed
}

// A member that missed every gossiped copy of a joiner's alive message
// (here: its incoming packets dropped while the joiner joins) does not see
// the joiner until a push/pull; the repair does one at once.
func TestRepairGossipFindsAMissedJoiner(t *testing.T) {
	g2, seed := missedJoiner(t)
	servers := []string{"g1", "g2", "g3"}
	gaps, with := g2.repairGossip(servers)
	if !slices.Equal(gaps, []string{"g3"}) || with != seed {
		t.Fatalf("repair: gaps %v, with %q; want [g3] with %s", gaps, with, seed)
	}
	if !g2.knows("g3") {
		t.Fatal("after the repair g2 still does not know g3")
	}
	if gaps, with := g2.repairGossip(servers); len(gaps) != 0 || with != "" {
		t.Fatalf("second repair: gaps %v, with %q; want nothing to do", gaps, with)
	}
}

// The exchange shortly after a join finds a member that joined meanwhile
// and whose announcement this agent missed, without waiting for raft to
// name it (here: g2's packets dropped while g3 joins).
func TestSettleGossipFindsAConcurrentJoiner(t *testing.T) {
	g2, _ := missedJoiner(t)
	g2.settleGossip() // g1 is the only alive member g2 knows
	if !g2.knows("g3") {
		t.Fatal("after the exchange g2 still does not know g3")
	}
}

// Concurrent metadata updates never leave the others with stale metadata
// (memberlist pairs metadata and incarnation non-atomically; setMeta
// serialises them).
func TestSetMetaConcurrentUpdatesConverge(t *testing.T) {
	g1, _ := gossipOnly(t, "m1", "127.0.0.1:0", false)
	g2, _ := gossipOnly(t, "m2", "127.0.0.1:0", false)
	if _, err := g2.ml.Join([]string{g1.ml.LocalNode().Address()}); err != nil {
		t.Fatal(err)
	}
	// 400 updates at once, each raising the count to its value. Without
	// setMeta's lock about one run in five ended stale.
	var wg sync.WaitGroup
	for i := 1; i <= 400; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g2.setMeta(func(m *nodeMeta) { m.Containers = max(m.Containers, i) })
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for {
		e, ok := g1.member("m2")
		if ok && e.meta.Containers == 400 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("m1 sees m2 with %d containers, want 400 (a stale update won)", e.meta.Containers)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A change noted with noteMeta is not broadcast on its own (a joiner's
// InRaft flag, which a hundred joiners made a fleet-wide broadcast each);
// it goes out with the next setMeta, even one that changes nothing else.
func TestNotedMetaRidesOnTheNextUpdate(t *testing.T) {
	g1, _ := gossipOnly(t, "m1", "127.0.0.1:0", false)
	g2, _ := gossipOnly(t, "m2", "127.0.0.1:0", false)
	if _, err := g2.ml.Join([]string{g1.ml.LocalNode().Address()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "m1 to know m2", func() bool { return g1.knows("m2") })
	sees := func(want bool) bool {
		e, ok := g1.member("m2")
		return ok && e.meta.InRaft == want
	}
	g2.noteMeta(func(m *nodeMeta) { m.InRaft = true })
	time.Sleep(time.Second)
	if !sees(false) {
		t.Fatal("a noted change was broadcast on its own")
	}
	g2.setMeta(func(*nodeMeta) {})
	deadline := time.Now().Add(5 * time.Second)
	for !sees(true) {
		if time.Now().After(deadline) {
			t.Fatal("the noted change did not go out with the next update")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// statsEngine answers List and Features (all refreshStats asks), after
// delay; nothing else of engine.Engine is called.
type statsEngine struct {
	engine.Engine
	delay time.Duration
}

func (e statsEngine) List(ctx context.Context) ([]engine.Container, error) {
	select {
	case <-time.After(e.delay):
		return make([]engine.Container, 3), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (e statsEngine) Features(ctx context.Context) (engine.Features, error) {
	select {
	case <-time.After(e.delay):
		return engine.Features{CRIUVersion: "4.2.1"}, nil
	case <-ctx.Done():
		return engine.Features{}, ctx.Err()
	}
}

// The stats an agent joins with are in the metadata its peers first see,
// with no update of their own; an engine that does not answer delays the
// start by firstStatsWait at most.
func TestJoinStatsGoInTheFirstMetadata(t *testing.T) {
	slow := &Cluster{cfg: Config{NodeName: "slow", Engine: statsEngine{delay: time.Hour}}, logger: slog.New(slog.DiscardHandler)}
	start := time.Now()
	slow.joinStats(context.Background())
	if took := time.Since(start); took > firstStatsWait+time.Second {
		t.Fatalf("joinStats with a hung engine took %s", took)
	}
	if slow.meta.MemTotal == 0 || slow.meta.Containers != 0 || slow.meta.CRIU != "" {
		t.Fatalf("hung engine: meta %+v (memory known, nothing from the engine)", slow.meta)
	}

	g1, _ := gossipOnly(t, "j1", "127.0.0.1:0", false)
	j2 := &Cluster{
		cfg: Config{NodeName: "j2", BindAddr: "127.0.0.1:0", Secret: []byte("antientropy-test-secret-0123456789"), Engine: statsEngine{},
			ProbeInterval: time.Second, ProbeTimeout: 500 * time.Millisecond, SuspicionMult: 8},
		logger: slog.New(slog.DiscardHandler), members: map[string]*memberEntry{}, acks: map[string]time.Time{},
		wakeBootstrap: make(chan struct{}, 1), wakeReconcile: make(chan struct{}, 1),
	}
	j2.joinStats(context.Background())
	if err := j2.startGossip(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = j2.ml.Shutdown() })
	if _, err := j2.ml.Join([]string{g1.ml.LocalNode().Address()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "j1 to know j2", func() bool { return g1.knows("j2") })
	e, _ := g1.member("j2")
	if e.meta.Containers != 3 || e.meta.CRIU != "4.2.1" || e.meta.MemTotal == 0 {
		t.Fatalf("j1 first saw j2 with %+v, want its stats", e.meta)
	}
}
