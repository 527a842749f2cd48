package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/edgemigrate/orchestrate/engine/enginetest"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

type inmemNode struct {
	id    string
	fsm   *fsm
	raft  *raft.Raft
	trans *raft.InmemTransport
}

func newInmemNode(t *testing.T, id string) *inmemNode {
	t.Helper()
	rc := raftConfig(id, 100*time.Millisecond, 100*time.Millisecond)
	rc.TrailingLogs, rc.SnapshotThreshold = 2, 1<<20 // snapshots only on request; then install them
	rc.Logger = raftLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	_, trans := raft.NewInmemTransport(raft.ServerAddress(id))
	store := raft.NewInmemStore()
	n := &inmemNode{id: id, fsm: newFSM(), trans: trans}
	r, err := raft.NewRaft(rc, n.fsm, store, store, raft.NewInmemSnapshotStore(), trans)
	if err != nil {
		t.Fatal(err)
	}
	n.raft = r
	t.Cleanup(func() { _ = r.Shutdown().Error() })
	return n
}

func connect(nodes ...*inmemNode) {
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				a.trans.Connect(b.trans.LocalAddr(), b.trans)
			}
		}
	}
}

func leaderOf(nodes []*inmemNode) *inmemNode {
	for _, n := range nodes {
		if n.raft.State() == raft.Leader {
			return n
		}
	}
	return nil
}

// TestInmemRaftReplicationFailoverSnapshot runs the FSM under real raft on
// the in-memory transport: writes replicate, survive the leader's death, and
// reach a late member through an installed snapshot.
func TestInmemRaftReplicationFailoverSnapshot(t *testing.T) {
	nodes := []*inmemNode{newInmemNode(t, "a"), newInmemNode(t, "b"), newInmemNode(t, "c")}
	connect(nodes...)
	var cfg raft.Configuration
	for _, n := range nodes {
		cfg.Servers = append(cfg.Servers, raft.Server{ID: raft.ServerID(n.id), Address: n.trans.LocalAddr(), Suffrage: raft.Voter})
	}
	if err := nodes[0].raft.BootstrapCluster(cfg).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a leader", func() bool { return leaderOf(nodes) != nil })
	leader := leaderOf(nodes)
	applyOn := func(n *inmemNode, mt MessageType, req any) error {
		b, err := encodeCommand(mt, req)
		if err != nil {
			return err
		}
		f := n.raft.Apply(b, 5*time.Second)
		if err := f.Error(); err != nil {
			return err
		}
		if err, ok := f.Response().(error); ok {
			return err
		}
		return nil
	}
	for i := range 5 {
		ev := Event{ID: fmt.Sprintf("e%d", i), Kind: "trigger", At: t0}
		if err := applyOn(leader, AppendEventType, AppendEventRequest{Event: ev}); err != nil {
			t.Fatal(err)
		}
	}
	if err := applyOn(leader, AcquireLockType, AcquireLockRequest{Name: "reboot", Holder: "a", Limit: 1, At: t0}); err != nil {
		t.Fatal(err)
	}
	if err := applyOn(leader, AcquireLockType, AcquireLockRequest{Name: "reboot", Holder: "b", Limit: 1, At: t0}); err == nil {
		t.Fatal("second holder got a lock of limit 1")
	}
	for _, n := range nodes {
		waitFor(t, 5*time.Second, "replication to "+n.id, func() bool { return len(n.fsm.events(0)) == 5 })
	}

	if err := leader.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := leader.raft.Shutdown().Error(); err != nil {
		t.Fatal(err)
	}
	var rest []*inmemNode
	for _, n := range nodes {
		if n != leader {
			rest = append(rest, n)
		}
	}
	waitFor(t, 5*time.Second, "a new leader", func() bool { return leaderOf(rest) != nil })
	t.Logf("in-memory failover: new leader after %s", time.Since(start))
	newLeader := leaderOf(rest)
	if len(newLeader.fsm.events(0)) != 5 || len(newLeader.fsm.locks()) != 1 {
		t.Fatalf("state lost in failover: %d events, %d locks", len(newLeader.fsm.events(0)), len(newLeader.fsm.locks()))
	}
	if err := newLeader.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 { // more than TrailingLogs: a new member needs the snapshot
		if err := applyOn(newLeader, SetHostType, SetHostRequest{Name: fmt.Sprintf("h%d", i), Cordoned: ptr(true), At: t0}); err != nil {
			t.Fatal(err)
		}
	}
	if err := newLeader.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	late := newInmemNode(t, "d")
	connect(append(rest, late)...)
	if err := newLeader.raft.AddNonvoter("d", late.trans.LocalAddr(), 0, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "snapshot installed on the late member", func() bool {
		return len(late.fsm.hosts()) == 5 && len(late.fsm.events(0)) == 5 && len(late.fsm.locks()) == 1
	})
}

// TestLeaderTermContext checks the per-term contract with a real Cluster
// pair on loopback: LeaderLoop runs on the leader only, and its context ends
// when leadership moves.
func TestLeaderTermContext(t *testing.T) {
	if testing.Short() {
		t.Skip("starts agents")
	}
	secret := []byte("0123456789abcdef0123456789abcdef")
	type term struct {
		node string
		ctx  context.Context
	}
	terms := make(chan term, 10)
	var cs []*Cluster
	fake := enginetest.NewFake()
	web := fake.Run("web", "docker.io/library/nginx:1", 1<<10, nil)
	for i := 1; i <= 3; i++ {
		cfg := DefaultConfig()
		name := fmt.Sprintf("t%d", i)
		ip := fmt.Sprintf("127.0.91.%d", i)
		cfg.NodeName, cfg.DataDir, cfg.Secret = name, t.TempDir(), secret
		cfg.BindAddr, cfg.RaftBindAddr, cfg.APIBindAddr = ip+":17946", ip+":17947", ip+":17948"
		cfg.APISocket = ""
		cfg.TransferAddr = ip + ":17922"
		cfg.Join = []string{"127.0.91.1:17946"}
		cfg.BootstrapExpect = 3
		cfg.ProbeInterval, cfg.ProbeTimeout = 200*time.Millisecond, 100*time.Millisecond
		cfg.RaftHeartbeatTimeout, cfg.RaftElectionTimeout = 300*time.Millisecond, 300*time.Millisecond
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		cfg.LeaderLoop = func(ctx context.Context) error {
			terms <- term{name, ctx}
			<-ctx.Done()
			return nil
		}
		if i == 2 {
			cfg.Engine, cfg.EngineType = fake, "fake"
		}
		c, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		c.HandleFunc("POST /v1/test/step", c.LeaderStep(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
		cs = append(cs, c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, len(cs))
	for _, c := range cs {
		go func() { errc <- c.Run(ctx) }()
	}
	t.Cleanup(func() {
		cancel()
		for range cs {
			if err := <-errc; err != nil {
				t.Errorf("run: %v", err)
			}
		}
		for _, c := range cs {
			if err := c.Shutdown(); err != nil { // again: idempotent
				t.Errorf("second shutdown: %v", err)
			}
		}
	})
	var first term
	select {
	case first = <-terms:
	case <-time.After(15 * time.Second):
		t.Fatal("no leader term started")
	}
	var leader *Cluster
	for _, c := range cs {
		if c.Name() == first.node {
			leader = c
		}
	}
	if !leader.IsLeader() {
		t.Fatalf("term started on %s, which does not lead", first.node)
	}
	waitFor(t, 10*time.Second, "all voters", func() bool {
		n := 0
		for _, m := range leader.Members() {
			if m.Role == RoleVoter || m.Role == RoleLeader {
				n++
			}
		}
		return n == 3
	})
	// Gossip carries each agent's architecture, engine and CRIU version.
	waitFor(t, 5*time.Second, "arch and engine in gossip", func() bool {
		for _, m := range leader.Members() {
			if m.Arch != runtime.GOARCH || m.Engine == "" || m.Name == "t2" && (m.Engine != "fake" || m.CRIUVersion != "4.2.1") {
				return false
			}
		}
		return true
	})
	// ps reads the container report the agent with the engine wrote into
	// the replicated state; the witnesses (no engine) report nothing.
	for _, c := range cs {
		waitFor(t, 10*time.Second, "the report of t2 on "+c.Name(), func() bool {
			res := c.PS(context.Background())
			if len(res.Errors) != 0 || len(res.Containers) != 1 {
				return false
			}
			got := res.Containers[0]
			got.ListedAt = time.Time{}
			return got == (PSEntry{Host: "t2", Name: "web", ID: web.ID, Image: web.Image, State: "running"})
		})
	}

	// The transfer layer's trust: gossiped SSH keys.
	other := cs[0]
	if other == leader {
		other = cs[1]
	}
	hk, err := leader.HostKey(other.cfg.TransferAddr)
	if err != nil || string(hk.Marshal()) != string(other.HostSigner().PublicKey().Marshal()) {
		t.Fatalf("HostKey(%s) = %v, %v", other.cfg.TransferAddr, hk, err)
	}
	if err := leader.HostKeyCallback()(other.cfg.TransferAddr, nil, other.HostSigner().PublicKey()); err != nil {
		t.Fatal(err)
	}
	if err := leader.HostKeyCallback()(other.cfg.TransferAddr, nil, other.ClientSigner().PublicKey()); err == nil {
		t.Fatal("host key callback accepted the wrong key")
	}
	if name, ok := leader.Authorized(other.ClientSigner().PublicKey()); !ok || name != other.Name() {
		t.Fatalf("Authorized(client key of %s) = %q, %v", other.Name(), name, ok)
	}
	// Steps: the leader's signed requests are accepted, a member's are not.
	step := func(from *Cluster, to string) error {
		cl, err := from.StepClient(to)
		if err != nil {
			return err
		}
		return cl.Do(context.Background(), http.MethodPost, "/v1/test/step", map[string]int{"x": 1}, nil)
	}
	waitFor(t, 5*time.Second, "the term key everywhere", func() bool {
		for _, c := range cs {
			if k, ok := c.TermKey(); !ok || k.Leader != leader.Name() {
				return false
			}
		}
		return true
	})
	if err := step(leader, other.Name()); err != nil {
		t.Fatalf("the leader's step: %v", err)
	}
	if err := step(other, leader.Name()); !errors.Is(err, ErrForbidden) {
		t.Fatalf("a member's step: %v", err)
	}
	oldLeader, _ := leader.StepClient(other.Name())
	if err := leader.raft.LeadershipTransfer().Error(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-first.ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("old term's context not cancelled after leadership moved")
	}
	select {
	case second := <-terms:
		if second.node == first.node {
			t.Fatalf("new term on the old leader %s", second.node)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no new term")
	}
	// The deposed leader's signature no longer counts anywhere once the
	// new term's key is replicated.
	waitFor(t, 5*time.Second, "the new term key everywhere", func() bool {
		for _, c := range cs {
			if k, ok := c.TermKey(); !ok || k.Leader == leader.Name() {
				return false
			}
		}
		return true
	})
	if err := oldLeader.Do(context.Background(), http.MethodPost, "/v1/test/step", map[string]int{"x": 1}, nil); !errors.Is(err, ErrForbidden) {
		t.Fatalf("the old leader's step: %v", err)
	}
	// A write through the old leader is forwarded to the new one.
	if err := leader.AppendEvent(context.Background(), Event{ID: "fwd", Kind: "test"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		waitFor(t, 5*time.Second, "forwarded event on "+c.Name(), func() bool { return len(c.Events(0)) == 1 })
	}
}
