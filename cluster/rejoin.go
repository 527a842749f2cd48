package cluster

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
)

// Rejoining after a restart. memberlist never contacts a member it declared
// dead, so an agent that restarts with no configured seed up (or only
// itself as seed, as the first of a cluster often has) would stay alone
// while the others, once it refutes its death, believe it back. Like serf's
// snapshot, each agent keeps the gossip addresses of the members it saw
// alive in node.data_dir/peers.json and, when it starts, joins a few of
// them as well as the configured seeds.

// peersFile lists the gossip addresses last seen alive, in node.data_dir.
const peersFile = "peers.json"

// maxRejoinPeers bounds the known peers one join attempt contacts: memberlist
// exchanges its whole state with each address it is given.
const maxRejoinPeers = 3

// seeds returns the configured seeds other than this agent, and up to
// maxRejoinPeers random peers from peers.json that are not among them.
func (c *Cluster) seeds() []string {
	var out []string
	for _, s := range c.cfg.Join {
		if s != "" && s != c.cfg.BindAddr && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	var known []string
	if b, err := os.ReadFile(filepath.Join(c.cfg.DataDir, peersFile)); err == nil {
		_ = json.Unmarshal(b, &known)
	}
	known = slices.DeleteFunc(known, func(a string) bool { return a == c.cfg.BindAddr || slices.Contains(out, a) })
	rand.Shuffle(len(known), func(i, j int) { known[i], known[j] = known[j], known[i] })
	return append(out, known[:min(len(known), maxRejoinPeers)]...)
}

// savePeers writes the gossip addresses of the members alive now, when
// they changed since last (last is the previous list; the new one is
// returned). A failed write is logged and retried at the next call.
func (c *Cluster) savePeers(last []string) []string {
	c.mu.Lock()
	var addrs []string
	for _, e := range c.members {
		if e.status == StatusAlive && e.name != c.cfg.NodeName {
			addrs = append(addrs, e.addr)
		}
	}
	c.mu.Unlock()
	sort.Strings(addrs)
	if len(addrs) == 0 || slices.Equal(addrs, last) {
		return last
	}
	b, _ := json.Marshal(addrs)
	path := filepath.Join(c.cfg.DataDir, peersFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		c.logger.Warn("save known peers", "err", err)
		return last
	}
	if err := os.Rename(tmp, path); err != nil {
		c.logger.Warn("save known peers", "err", err)
		return last
	}
	return addrs
}
