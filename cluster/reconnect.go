package cluster

import (
	"context"
	"math/rand/v2"
	"time"
)

// reconnectInterval is how often an agent considers reconnecting to a dead
// member (serf's reconnect, scaled down for faster rejoins).
const reconnectInterval = 5 * time.Second

// reconnectLoop tries, now and then, to reach a member it sees dead, until
// DeadRemoveAfter forgets it: memberlist never contacts a dead member, so
// an agent that restarts after it was declared dead, with no seed of its
// own up (or only itself as seed), would stay alone. A successful join
// pushes our view (which says it is dead) to it; it refutes, and everyone
// sees it alive again. Each agent tries one random dead member with a
// probability of dead/alive, so the cluster as a whole makes about one
// attempt per dead member and interval, whatever its size.
//
// The same loop keeps peers.json (rejoin.go) up to date, checking every
// second, and saving the first peers as soon as they are seen: an agent
// killed within a second of its join, whose only seed was itself, came
// back knowing nobody (seen in CI). It also repairs gaps in the gossip
// view (antientropy.go).
func (c *Cluster) reconnectLoop(ctx context.Context) error {
	var saved []string
	var repair gapRepair
	next := time.Now().Add(jitter(reconnectInterval))
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.wakePeers:
			if len(saved) == 0 {
				saved = c.savePeers(saved)
			}
			continue
		case <-tick.C:
		}
		saved = c.savePeers(saved)
		servers := c.raftServers()
		if repair.due(len(c.gossipGaps(servers)) > 0, time.Now()) {
			c.repairGossip(servers)
		}
		if time.Now().Before(next) {
			continue
		}
		next = time.Now().Add(jitter(reconnectInterval))
		var dead []string
		alive := 0
		c.mu.Lock()
		for _, e := range c.members {
			switch {
			case e.status == StatusAlive:
				alive++
			case e.status == StatusDead && time.Since(e.since) < c.cfg.DeadRemoveAfter:
				dead = append(dead, e.addr)
			}
		}
		c.mu.Unlock()
		if len(dead) == 0 || rand.Float64() > float64(len(dead))/float64(max(alive, 1)) {
			continue
		}
		addr := dead[rand.IntN(len(dead))]
		if n, err := c.ml.Join([]string{addr}); n > 0 {
			c.logger.Info("reconnected to a member seen dead", "addr", addr)
		} else {
			c.logger.Debug("dead member still unreachable", "addr", addr, "err", err)
		}
	}
}
