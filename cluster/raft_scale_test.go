package cluster

import (
	"fmt"
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
		nodes = append(nodes, newInmemNode(t, fmt.Sprintf("n%03d", i)))
	}
	connect(nodes...)
	var cfg raft.Configuration
	for _, nd := range nodes[:voters] {
		cfg.Servers = append(cfg.Servers, raft.Server{ID: raft.ServerID(nd.id), Address: nd.trans.LocalAddr(), Suffrage: raft.Voter})
	}
	if err := nodes[0].raft.BootstrapCluster(cfg).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a leader", func() bool { return leaderOf(nodes[:voters]) != nil })
	leader := leaderOf(nodes[:voters])
	for _, nd := range nodes[voters:] {
		if err := leader.raft.AddNonvoter(raft.ServerID(nd.id), nd.trans.LocalAddr(), 0, 10*time.Second).Error(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range writes {
		b, err := encodeCommand(AppendEventType, AppendEventRequest{Event: Event{ID: fmt.Sprintf("e%d", i), Kind: "k", At: t0}})
		if err != nil {
			t.Fatal(err)
		}
		if err := leader.raft.Apply(b, 5*time.Second).Error(); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
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
	if err := newLeader.raft.Apply(b, 5*time.Second).Error(); err != nil {
		t.Fatalf("write after failover: %v", err)
	}
	for _, nd := range rest {
		waitFor(t, 10*time.Second, "every write on "+nd.id, func() bool { return len(nd.fsm.events(0)) == writes+1 })
	}
}
