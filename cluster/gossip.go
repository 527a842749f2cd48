package cluster

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
	"golang.org/x/crypto/ssh"
)

// metaLimit is memberlist's limit on node metadata.
const metaLimit = memberlist.MetaMaxSize

// nodeMeta is what each agent gossips about itself. Keys are one or two
// letters to stay under 512 bytes; labels are dropped (Trunc set) when they
// do not fit, and /v1/self serves the full set.
type nodeMeta struct {
	Raft       string            `json:"r,omitempty"`
	API        string            `json:"a,omitempty"`
	Transfer   string            `json:"t,omitempty"`
	Engine     string            `json:"e,omitempty"`
	Arch       string            `json:"ar,omitempty"` // GOARCH: checkpoints restore only on the same architecture
	CRIU       string            `json:"c,omitempty"`
	Kernel     string            `json:"k,omitempty"`
	CPUs       int               `json:"n,omitempty"`
	MemTotal   int64             `json:"m,omitempty"` // bytes
	MemUsed    int64             `json:"u,omitempty"` // bytes
	Containers int               `json:"x,omitempty"`
	InRaft     bool              `json:"b,omitempty"` // has raft state: do not bootstrap with it
	HostKey    []byte            `json:"h,omitempty"` // raw ed25519 public key
	ClientKey  []byte            `json:"ck,omitempty"`
	Labels     map[string]string `json:"l,omitempty"`
	Trunc      bool              `json:"tr,omitempty"`
	// Leaving is set just before a graceful leave, so that peers can tell
	// "left" from "dead": memberlist v0.5.4 does not update Node.State.
	Leaving bool `json:"lv,omitempty"`
}

// encode returns the meta as JSON of at most limit bytes, dropping labels
// when needed.
func (m nodeMeta) encode(limit int) []byte {
	b, _ := json.Marshal(m)
	if len(b) <= limit {
		return b
	}
	m.Labels, m.Trunc = nil, true
	b, _ = json.Marshal(m)
	if len(b) > limit {
		return nil // cannot happen with sane addresses; gossip without meta
	}
	return b
}

// Member statuses.
const (
	StatusAlive   = "alive"
	StatusSuspect = "suspect"
	StatusLeft    = "left"
	StatusDead    = "dead"
)

// Raft roles.
const (
	RoleLeader   = "leader"
	RoleVoter    = "voter"
	RoleNonvoter = "nonvoter"
	RoleNone     = "none"
)

// Member is one agent as this agent sees it: gossip plus raft role plus the
// replicated host state.
type Member struct {
	Name               string            `json:"name"`
	Addr               string            `json:"addr"` // gossip address
	Status             string            `json:"status"`
	Role               string            `json:"role"`
	Cordoned           bool              `json:"cordoned"`
	Draining           bool              `json:"draining"`
	Containers         int               `json:"containers"`
	MemoryTotal        int64             `json:"memory_total"`
	MemoryUsed         int64             `json:"memory_used"`
	CPUs               int               `json:"cpus"`
	RaftAddr           string            `json:"raft_addr,omitempty"`
	APIAddr            string            `json:"api_addr,omitempty"`
	TransferAddr       string            `json:"transfer_addr,omitempty"`
	Engine             string            `json:"engine,omitempty"`
	Arch               string            `json:"arch,omitempty"`
	CRIUVersion        string            `json:"criu_version,omitempty"`
	Kernel             string            `json:"kernel,omitempty"`
	Labels             map[string]string `json:"labels,omitempty"`
	LabelsTruncated    bool              `json:"labels_truncated,omitempty"`
	HostKey            string            `json:"host_key,omitempty"`   // authorized_keys format
	ClientKey          string            `json:"client_key,omitempty"` // authorized_keys format
	HostKeyFingerprint string            `json:"host_key_fingerprint,omitempty"`
	Since              time.Time         `json:"since"` // when the status last changed
}

// MemberEvent is sent on Config.Events when a member joins, updates, leaves
// or dies.
type MemberEvent struct {
	Name   string
	Status string // alive, left, dead
	Update bool   // metadata changed, status did not
}

// memberEntry is one row of the member table. Unlike memberlist.Members, the
// table remembers dead and left members until DeadRemoveAfter.
type memberEntry struct {
	name      string
	addr      string
	meta      nodeMeta
	hostKey   ssh.PublicKey
	clientKey ssh.PublicKey
	status    string
	since     time.Time
}

// delegate adapts memberlist callbacks to the Cluster (serf style).
type delegate struct{ c *Cluster }

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
	_ memberlist.PingDelegate  = (*delegate)(nil)
)

func (d *delegate) NodeMeta(limit int) []byte {
	d.c.mu.Lock()
	defer d.c.mu.Unlock()
	return d.c.meta.encode(limit)
}

func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

func (d *delegate) NotifyJoin(n *memberlist.Node)   { d.c.observe(n, StatusAlive, false) }
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.c.observe(n, StatusAlive, true) }
func (d *delegate) NotifyLeave(n *memberlist.Node) {
	status := StatusDead
	var m nodeMeta
	if json.Unmarshal(n.Meta, &m) == nil && m.Leaving {
		status = StatusLeft
	}
	d.c.observe(n, status, false)
}

// AckPayload and NotifyPingComplete implement memberlist.PingDelegate: the
// time of each member's last direct ack is how we report "suspect".
func (d *delegate) AckPayload() []byte { return nil }
func (d *delegate) NotifyPingComplete(n *memberlist.Node, rtt time.Duration, payload []byte) {
	d.c.mu.Lock()
	d.c.acks[n.Name] = time.Now()
	d.c.mu.Unlock()
}

// observe records a memberlist event in the member table and wakes the
// bootstrapper and reconciler.
func (c *Cluster) observe(n *memberlist.Node, status string, update bool) {
	e := &memberEntry{
		name: n.Name, addr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))),
		status: status, since: time.Now(),
	}
	if err := json.Unmarshal(n.Meta, &e.meta); err != nil && len(n.Meta) > 0 {
		c.logger.Warn("bad gossip metadata", "member", n.Name, "err", err)
	}
	if k, err := keyFromRaw(e.meta.HostKey); err == nil {
		e.hostKey = k
	}
	if k, err := keyFromRaw(e.meta.ClientKey); err == nil {
		e.clientKey = k
	}
	c.mu.Lock()
	if old, ok := c.members[n.Name]; ok && old.status == status {
		e.since = old.since
	}
	c.members[n.Name] = e
	c.mu.Unlock()
	if !update {
		c.logger.Info("member "+status, "member", n.Name, "addr", e.addr)
	}
	c.poke()
	if c.cfg.Events != nil {
		select {
		case c.cfg.Events <- MemberEvent{Name: n.Name, Status: status, Update: update}:
		default:
			c.logger.Warn("member event dropped: channel full", "member", n.Name)
		}
	}
}

// poke wakes the bootstrap, reconcile and reconnect loops without
// blocking.
func (c *Cluster) poke() {
	for _, ch := range []chan struct{}{c.wakeBootstrap, c.wakeReconcile, c.wakePeers} {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// suspects returns the alive members that have not acked a direct probe for
// longer than two full probe rounds plus one interval: memberlist suspects
// them, or will at its next probe. (memberlist v0.5.4 does not expose its
// own suspect state: Node.State is never updated.)
func (c *Cluster) suspects() map[string]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	alive := 0
	for _, e := range c.members {
		if e.status == StatusAlive {
			alive++
		}
	}
	// memberlist probes members in a list it reshuffles after each pass: a
	// member first in one pass and last in the next waits almost two
	// passes for our next probe (seen as false suspects with 10 agents;
	// internal/scale).
	window := 2*time.Duration(alive+1)*c.cfg.ProbeInterval + c.cfg.ProbeTimeout
	out := map[string]bool{}
	for name, e := range c.members {
		if e.status != StatusAlive || name == c.cfg.NodeName {
			continue
		}
		last := e.since
		if a := c.acks[name]; a.After(last) {
			last = a
		}
		if time.Since(last) > window {
			out[name] = true
		}
	}
	return out
}

// Members returns every member this agent knows, including dead and left
// ones not yet forgotten, sorted by name.
func (c *Cluster) Members() []Member {
	roles := c.raftRoles()
	suspect := c.suspects()
	c.mu.Lock()
	entries := slices.Collect(maps.Values(c.members))
	c.mu.Unlock()
	out := make([]Member, 0, len(entries))
	for _, e := range entries {
		m := Member{
			Name: e.name, Addr: e.addr, Status: e.status, Since: e.since,
			Role: RoleNone, Containers: e.meta.Containers, MemoryTotal: e.meta.MemTotal, MemoryUsed: e.meta.MemUsed,
			CPUs: e.meta.CPUs, RaftAddr: e.meta.Raft, APIAddr: e.meta.API, TransferAddr: e.meta.Transfer,
			Engine: e.meta.Engine, Arch: e.meta.Arch, CRIUVersion: e.meta.CRIU, Kernel: e.meta.Kernel,
			Labels: maps.Clone(e.meta.Labels), LabelsTruncated: e.meta.Trunc,
		}
		if m.Status == StatusAlive && suspect[e.name] {
			m.Status = StatusSuspect
		}
		if r, ok := roles[e.name]; ok {
			m.Role = r
		}
		if h, ok := c.fsm.host(e.name); ok {
			m.Cordoned, m.Draining = h.Cordoned, h.Draining
		}
		if e.hostKey != nil {
			m.HostKey = string(trimNL(ssh.MarshalAuthorizedKey(e.hostKey)))
			m.HostKeyFingerprint = ssh.FingerprintSHA256(e.hostKey)
		}
		if e.clientKey != nil {
			m.ClientKey = string(trimNL(ssh.MarshalAuthorizedKey(e.clientKey)))
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func trimNL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		return b[:n-1]
	}
	return b
}

// member returns a copy of one member's entry.
func (c *Cluster) member(name string) (memberEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.members[name]
	if !ok {
		return memberEntry{}, false
	}
	return *e, true
}

// HostKey returns the SSH host key gossiped by the alive member whose
// transfer address, or name, is addr. The transfer layer trusts exactly
// these keys.
func (c *Cluster) HostKey(addr string) (ssh.PublicKey, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.members {
		if (e.meta.Transfer == addr || e.name == addr) && e.status == StatusAlive && e.hostKey != nil {
			return e.hostKey, nil
		}
	}
	return nil, fmt.Errorf("host key for %s: %w", addr, ErrNotFound)
}

// HostKeyCallback is an ssh.HostKeyCallback that accepts exactly the host
// key gossiped for the address dialled.
func (c *Cluster) HostKeyCallback() ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		want, err := c.HostKey(hostname)
		if err != nil && remote != nil {
			want, err = c.HostKey(remote.String())
		}
		if err != nil {
			return err
		}
		if string(want.Marshal()) != string(key.Marshal()) {
			return fmt.Errorf("host key for %s does not match the gossiped one", hostname)
		}
		return nil
	}
}

// Authorized reports which alive member gossips key as its SSH client key.
// Host keys are not accepted as client keys.
func (c *Cluster) Authorized(key ssh.PublicKey) (node string, ok bool) {
	want := string(key.Marshal())
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.members {
		if e.status == StatusAlive && e.clientKey != nil && string(e.clientKey.Marshal()) == want {
			return e.name, true
		}
	}
	return "", false
}

// PeerKeys returns each alive member's host and client keys by name.
func (c *Cluster) PeerKeys() map[string][2]ssh.PublicKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string][2]ssh.PublicKey{}
	for _, e := range c.members {
		if e.status == StatusAlive {
			out[e.name] = [2]ssh.PublicKey{e.hostKey, e.clientKey}
		}
	}
	return out
}
