package cluster

import (
	"math/rand/v2"
	"slices"
	"time"
)

// Gossip anti-entropy. memberlist spreads a joiner's alive message by
// gossip only; a member that misses every copy learns of the joiner at
// its next full push/pull, 30 s or more later (seen in CI: of five agents
// started together, three never heard of the fifth within 25 s, so the
// cluster had a raft server nobody but the leader could see). The raft
// configuration, which every member replicates, names every server: a
// member that has been missing from this agent's gossip view for a while
// is repaired at once by one push/pull with a random alive member.

const (
	// gapGrace is how long a raft server may be missing from the gossip
	// view before a repair: ordinary gossip needs a few rounds.
	gapGrace = 2 * time.Second
	// repairInterval spaces one agent's repairs (jittered): a push/pull
	// carries the whole member table. While a gap stays open (a server no
	// member it asks has heard of) the interval doubles up to
	// maxRepairInterval.
	repairInterval    = 5 * time.Second
	maxRepairInterval = time.Minute
)

// gossipGaps returns the raft servers, other than self, that the gossip
// view does not hold in any state. A server gossip saw dead or left is not
// a gap: raft removal is the leader's business.
func gossipGaps(servers []string, known func(string) bool, self string) []string {
	var out []string
	for _, s := range servers {
		if s != self && !known(s) {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// gapRepair is the timing state of one agent's repairs, owned by
// reconnectLoop.
type gapRepair struct {
	since time.Time     // when the current gap was first seen; zero when none
	next  time.Time     // earliest next repair
	wait  time.Duration // interval after the next repair; zero: repairInterval
}

// due reports whether a repair should run now, given whether there is a
// gap; it updates the state. Pure but for the random jitter.
func (g *gapRepair) due(gap bool, now time.Time) bool {
	if !gap {
		g.since, g.wait = time.Time{}, 0
		return false
	}
	if g.since.IsZero() {
		g.since = now
	}
	if now.Sub(g.since) < gapGrace || now.Before(g.next) {
		return false
	}
	if g.wait == 0 {
		g.wait = repairInterval
	}
	g.next = now.Add(jitter(g.wait))
	g.wait = min(2*g.wait, maxRepairInterval)
	return true
}

// raftServers returns the IDs in this agent's copy of the raft
// configuration, or nil before raft runs.
func (c *Cluster) raftServers() []string {
	roles := c.raftRoles()
	out := make([]string, 0, len(roles))
	for id := range roles {
		out = append(out, id)
	}
	return out
}

// gossipGaps is gossipGaps over this agent's member table.
func (c *Cluster) gossipGaps(servers []string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return gossipGaps(servers, func(n string) bool { _, ok := c.members[n]; return ok }, c.cfg.NodeName)
}

// repairGossip exchanges the full member table with one random alive
// member when servers holds members this agent's gossip view lacks. It
// returns the gaps it saw and the address it exchanged with ("" when none
// was needed or no member is alive). A failed exchange is logged; the next
// due repair tries another member.
func (c *Cluster) repairGossip(servers []string) (gaps []string, with string) {
	gaps = c.gossipGaps(servers)
	if len(gaps) == 0 {
		return gaps, ""
	}
	with, err := c.exchangeWithRandomPeer()
	if err != nil {
		c.logger.Warn("gossip repair failed", "missing", gaps, "with", with, "err", err)
		return gaps, ""
	}
	if with == "" {
		return gaps, ""
	}
	c.logger.Info("gossip view lacked raft members; exchanged state", "missing", gaps, "with", with)
	return gaps, with
}

// exchangeWithRandomPeer does one push/pull (the full member table both
// ways) with a random alive member other than this agent, and returns its
// address: "" when gossip is not running or no other member is alive.
func (c *Cluster) exchangeWithRandomPeer() (string, error) {
	c.mu.Lock()
	var alive []string
	for _, e := range c.members {
		if e.status == StatusAlive && e.name != c.cfg.NodeName {
			alive = append(alive, e.addr)
		}
	}
	c.mu.Unlock()
	if len(alive) == 0 || c.ml == nil {
		return "", nil
	}
	with := alive[rand.IntN(len(alive))]
	_, err := c.ml.Join([]string{with})
	return with, err
}

// settleAfter is how long after its join an agent exchanges state once
// more (jittered; settleGossip).
const settleAfter = 1500 * time.Millisecond

// settleGossip is one push/pull with a random alive member shortly after
// joining. Members that joined while this agent did were announced by
// gossip before anyone knew to send it to this agent; their announcements
// then ran out of retransmits, and this agent learnt of them only from a
// repair seconds later (internal/scale: with 100 agents starting
// together, 90% of the fleet knew each joiner within a second and one
// agent or two 4-5 s later). By now the member asked has them.
func (c *Cluster) settleGossip() {
	if with, err := c.exchangeWithRandomPeer(); err != nil {
		c.logger.Debug("gossip exchange after join failed", "with", with, "err", err)
	}
}
