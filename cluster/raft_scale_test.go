package cluster

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// A hundred raft members, as a fleet of a hundred agents has: three voters
// (max_voters) and 97 non-voters, on raft's in-memory transport. The leader
// dies; one of the two other voters takes over, every write acknowledged
// before is on it and on every non-voter, and writes go on. (The same with
// real agent processes over TLS: internal/scale's TestBenchScale, make
// bench.)
func TestHundredMembersFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 100 raft nodes")
	}
	const n, voters, writes = 100, 3, 200
	var nodes []*inmemNode
	for i := range n {
		// The agents' default heartbeat timeout.
		nodes = append(nodes, newInmemNodeWith(t, fmt.Sprintf("n%03d", i), DefaultConfig().RaftHeartbeatTimeout))
	}
	connect(nodes...)
	var cfg raft.Configuration
	for _, nd := range nodes[:voters] {
		cfg.Servers = append(cfg.Servers, raft.Server{ID: raft.ServerID(nd.id), Address: nd.trans.LocalAddr(), Suffrage: raft.Voter})
	}
	if err := nodes[0].raft.BootstrapCluster(cfg).Error(); err != nil {
		t.Fatal(err)
	}
	// onLeader runs f on whoever leads, again if leadership moves (this
	// test is about the failover below, not about a stable setup).
	onLeader := func(what string, f func(l *inmemNode) raft.Future) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			l := leaderOf(nodes[:voters])
			if l != nil {
				err := f(l).Error()
				if err == nil {
					return
				}
				if !errors.Is(err, raft.ErrLeadershipLost) && !errors.Is(err, raft.ErrNotLeader) {
					t.Fatalf("%s: %v", what, err)
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no stable leader", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, nd := range nodes[voters:] {
		onLeader("add "+nd.id, func(l *inmemNode) raft.Future {
			return l.raft.AddNonvoter(raft.ServerID(nd.id), nd.trans.LocalAddr(), 0, 10*time.Second)
		})
	}
	for i := range writes {
		b, err := encodeCommand(AppendEventType, AppendEventRequest{Event: Event{ID: fmt.Sprintf("e%d", i), Kind: "k", At: t0}})
		if err != nil {
			t.Fatal(err)
		}
		onLeader(fmt.Sprintf("write %d", i), func(l *inmemNode) raft.Future { return l.raft.Apply(b, 5*time.Second) })
	}
	waitFor(t, 10*time.Second, "a leader", func() bool { return leaderOf(nodes[:voters]) != nil })
	leader := leaderOf(nodes[:voters])
	f := leader.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	suffrage := map[raft.ServerSuffrage]int{}
	for _, s := range f.Configuration().Servers {
		suffrage[s.Suffrage]++
	}
	if suffrage[raft.Voter] != voters || suffrage[raft.Nonvoter] != n-voters {
		t.Fatalf("configuration: %v", suffrage)
	}

	start := time.Now()
	if err := leader.raft.Shutdown().Error(); err != nil {
		t.Fatal(err)
	}
	var rest []*inmemNode
	for _, nd := range nodes {
		if nd != leader {
			rest = append(rest, nd)
		}
	}
	waitFor(t, 10*time.Second, "a new leader", func() bool { return leaderOf(rest) != nil })
	newLeader := leaderOf(rest)
	t.Logf("MEASURE 100 in-memory raft members, 3 voters: new leader %s after %s", newLeader.id, time.Since(start))
	isVoter := false
	for _, nd := range nodes[:voters] {
		isVoter = isVoter || nd == newLeader
	}
	if !isVoter {
		t.Fatalf("non-voter %s leads", newLeader.id)
	}
	b, _ := encodeCommand(AppendEventType, AppendEventRequest{Event: Event{ID: "after", Kind: "k", At: t0}})
	onLeader("write after failover", func(l *inmemNode) raft.Future { return l.raft.Apply(b, 5*time.Second) })
	for _, nd := range rest {
		waitFor(t, 10*time.Second, "every write on "+nd.id, func() bool { return len(nd.fsm.events(0)) == writes+1 })
	}
}

// newInmemNodeWith is newInmemNode with a given heartbeat and election
// timeout.
func newInmemNodeWith(t *testing.T, id string, timeout time.Duration) *inmemNode {
	t.Helper()
	rc := raftConfig(id, timeout, timeout)
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
