package cluster

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
	"golang.org/x/sync/errgroup"

	"github.com/edgemigrate/orchestrate/internal/clock"
	"github.com/edgemigrate/orchestrate/internal/netguard"
)

// raftStore owns raft's storage and transport so Shutdown can close them.
type raftStore struct {
	bolt  *raftboltdb.BoltStore
	trans *raft.NetworkTransport
}

func (s *raftStore) close() error {
	var errs []error
	if s.trans != nil {
		errs = append(errs, s.trans.Close())
	}
	if s.bolt != nil {
		errs = append(errs, s.bolt.Close())
	}
	return errors.Join(errs...)
}

// tlsLayer is raft's stream layer: mutual TLS with the CA derived from the
// cluster secret, so only holders of the secret can speak raft.
type tlsLayer struct {
	net.Listener
	addr net.Addr
	tls  *clusterTLS
	n    *netCounters
}

var _ raft.StreamLayer = (*tlsLayer)(nil)

func newTLSLayer(bind string, t *clusterTLS, n *netCounters) (*tlsLayer, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("raft listen %s: %w", bind, err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	if addr.IP.IsUnspecified() {
		ln.Close()
		return nil, fmt.Errorf("raft bind %s: need a concrete IP that peers can dial: %w", bind, ErrInvalid)
	}
	counted := countingListener{ln, &n.raftIn, &n.raftOut} // netstats.go
	return &tlsLayer{Listener: guardRaft(counted, t.mutualServerConfig()), addr: addr, tls: t, n: n}, nil
}

func (l *tlsLayer) Addr() net.Addr { return l.addr }

func (l *tlsLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	raw, err := netguard.DialFrom(l.addr.String(), timeout)(context.Background(), "tcp", string(addr))
	if err != nil {
		return nil, err
	}
	conn := tls.Client(countingConn{raw, &l.n.raftIn, &l.n.raftOut}, l.tls.clientConfig())
	conn.SetDeadline(time.Now().Add(timeout))
	if err := conn.Handshake(); err != nil {
		raw.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// raftConfig returns the raft settings both the agent and the in-memory
// tests use.
func raftConfig(id string, heartbeat, election time.Duration) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(id)
	if heartbeat > 0 {
		rc.HeartbeatTimeout = heartbeat
		// The lease is how long a leader that hears from no quorum of
		// voters keeps leading. Failover time does not depend on it (the
		// followers' heartbeat timeout does), and writes need a quorum
		// either way; half the heartbeat made a leader of 100 agents on a
		// starved CPU step down again and again (internal/scale).
		rc.LeaderLeaseTimeout = heartbeat
	}
	if election > 0 {
		rc.ElectionTimeout = election
	}
	rc.SnapshotThreshold = 1024
	return rc
}

// raftStoreLockWait bounds how long an agent waits for the raft store's
// file lock (a variable for tests).
var raftStoreLockWait = 15 * time.Second

func (c *Cluster) startRaft() error {
	dir := filepath.Join(c.cfg.DataDir, "raft")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("raft dir: %w", err)
	}
	logger := raftLogger(c.logger)
	c.store = &raftStore{}
	var err error
	// bolt locks its file; another agent on this data_dir (or one still
	// shutting down) holds it. Wait a while for it, then say so.
	path := filepath.Join(dir, "raft.db")
	if c.store.bolt, err = raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: &bbolt.Options{Timeout: raftStoreLockWait}}); err != nil {
		if errors.Is(err, bbolt.ErrTimeout) {
			return fmt.Errorf("raft store %s is locked after %s: is another orchestrate agent running with this data_dir?", path, raftStoreLockWait)
		}
		return fmt.Errorf("raft store: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, logger)
	if err != nil {
		c.store.close()
		return fmt.Errorf("raft snapshots: %w", err)
	}
	layer, err := newTLSLayer(c.cfg.RaftBindAddr, c.tls, &c.net)
	if err != nil {
		c.store.close()
		return err
	}
	c.store.trans = raft.NewNetworkTransportWithLogger(layer, 3, 10*time.Second, logger)
	rc := raftConfig(c.cfg.NodeName, c.cfg.RaftHeartbeatTimeout, c.cfg.RaftElectionTimeout)
	rc.Logger = logger
	c.leaderCh = make(chan bool, 16)
	rc.NotifyCh = c.leaderCh
	logs, err := raft.NewLogCache(256, c.store.bolt)
	if err != nil {
		c.store.close()
		return err
	}
	if c.raft, err = raft.NewRaft(rc, c.fsm, logs, c.store.bolt, snaps, c.store.trans); err != nil {
		c.store.close()
		return fmt.Errorf("raft: %w", err)
	}
	return nil
}

// hasRaftState reports whether this agent is part of a raft cluster already
// (bootstrapped, restored, or added by a leader).
func (c *Cluster) hasRaftState() bool {
	if c.raft == nil {
		return false
	}
	f := c.raft.GetConfiguration()
	return f.Error() == nil && len(f.Configuration().Servers) > 0
}

// bootstrapLoop waits until BootstrapExpect agents gossip, none of them
// already in a raft cluster, then bootstraps raft with all of them (the
// first MaxVoters by name as voters). Every agent computes the same set, so
// their bootstraps agree.
//
// It waits for the first join to complete: a join merges the seed's whole
// member table at once, but delivers it one member at a time, and an agent
// that looked in between could see three newcomers and no member of the
// existing cluster, and bootstrap a second one (seen with 50 agents
// starting together; internal/scale).
func (c *Cluster) bootstrapLoop(ctx context.Context) error {
	for {
		if c.hasRaftState() {
			// Added by a leader: the flag rides on the next stats
			// refresh. A hundred agents joining at once each made a
			// fleet-wide broadcast of it while the fleet converged
			// (internal/scale), and what it guards against, a second
			// bootstrap, is already guarded by the leader that added this
			// agent, which gossips the flag itself (leaderTerm).
			c.noteMeta(func(m *nodeMeta) { m.InRaft = true })
			return nil
		}
		select {
		case <-c.joined:
		case <-ctx.Done():
			return nil
		}
		c.tryBootstrap()
		select {
		case <-ctx.Done():
			return nil
		case <-c.wakeBootstrap:
		case <-time.After(jitter(time.Second)):
		}
	}
}

func (c *Cluster) tryBootstrap() {
	c.mu.Lock()
	var names []string
	addrs := map[string]string{}
	for _, e := range c.members {
		if e.status != StatusAlive || e.meta.Raft == "" {
			continue
		}
		if e.meta.InRaft && e.name != c.cfg.NodeName {
			c.mu.Unlock()
			return // a cluster exists: its leader will add us
		}
		names = append(names, e.name)
		addrs[e.name] = e.meta.Raft
	}
	c.mu.Unlock()
	if len(names) < max(c.cfg.BootstrapExpect, 1) {
		return
	}
	sort.Strings(names)
	var cfg raft.Configuration
	for i, n := range names {
		s := raft.Server{ID: raft.ServerID(n), Address: raft.ServerAddress(addrs[n]), Suffrage: raft.Voter}
		if i >= c.cfg.MaxVoters {
			s.Suffrage = raft.Nonvoter
		}
		cfg.Servers = append(cfg.Servers, s)
	}
	if _, ok := addrs[c.cfg.NodeName]; !ok {
		return
	}
	err := c.raft.BootstrapCluster(cfg).Error()
	if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		c.logger.Error("raft bootstrap failed", "err", err)
		return
	}
	c.logger.Info("raft bootstrapped", "servers", names)
	c.setMeta(func(m *nodeMeta) { m.InRaft = true })
}

// leadershipLoop runs one leader term at a time: Barrier, then the
// reconciler and Config.LeaderLoop under a context cancelled when raft
// reports leadership lost.
func (c *Cluster) leadershipLoop(ctx context.Context) error {
	type term struct {
		cancel context.CancelFunc
		done   chan struct{}
	}
	var cur *term
	stop := func() {
		if cur != nil {
			cur.cancel()
			<-cur.done
			cur = nil
		}
	}
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case leader := <-c.leaderCh:
			switch {
			case leader && cur == nil:
				tctx, cancel := context.WithCancel(ctx)
				cur = &term{cancel: cancel, done: make(chan struct{})}
				go func(done chan struct{}) {
					defer close(done)
					c.leaderTerm(tctx)
				}(cur.done)
			case !leader && cur != nil:
				stop()
				c.logger.Info("leadership lost")
			}
		}
	}
}

func (c *Cluster) leaderTerm(ctx context.Context) {
	start := time.Now()
	if err := c.raft.Barrier(30 * time.Second).Error(); err != nil {
		c.logger.Error("leader barrier failed", "err", err)
		return
	}
	c.logger.Info("leadership acquired", "barrier", time.Since(start))
	c.setMeta(func(m *nodeMeta) { m.InRaft = true })
	if err := c.startTerm(ctx); err != nil {
		c.logger.Error("leader term not started", "err", err)
		return
	}
	defer c.endTerm()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.reconcileLoop(gctx) })
	g.Go(func() error { return c.housekeepingLoop(gctx) })
	if c.cfg.LeaderLoop != nil {
		g.Go(func() error {
			if err := c.cfg.LeaderLoop(gctx); err != nil && gctx.Err() == nil {
				c.logger.Error("leader loop failed", "err", err)
			}
			return nil
		})
	}
	_ = g.Wait()
}

func (c *Cluster) reconcileLoop(ctx context.Context) error {
	for {
		if err := c.reconcile(); err != nil {
			c.logger.Warn("reconcile raft membership", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-c.wakeReconcile:
		case <-time.After(jitter(2 * time.Second)):
		}
	}
}

// reconcile makes raft's configuration follow gossip: alive members are
// added (voters up to MaxVoters); members that are dead, or left, for
// DeadRemoveAfter are removed; non-voters are promoted when voters are
// missing. A graceful leave does not remove a server at once: a host that
// reboots comes back with its raft data, and removing it would only churn
// voters (and with two of three voters leaving, could lose quorum).
func (c *Cluster) reconcile() error {
	f := c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	inCfg := map[raft.ServerID]raft.Server{}
	voters := 0
	for _, s := range f.Configuration().Servers {
		inCfg[s.ID] = s
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	c.mu.Lock()
	entries := make([]memberEntry, 0, len(c.members))
	for _, e := range c.members {
		entries = append(entries, *e)
	}
	c.mu.Unlock()
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	alive := map[raft.ServerID]bool{}
	var errs []error
	for _, e := range entries {
		id := raft.ServerID(e.name)
		s, in := inCfg[id]
		switch {
		case e.status == StatusAlive && e.meta.Raft != "":
			alive[id] = true
			addr := raft.ServerAddress(e.meta.Raft)
			if in && s.Address == addr {
				continue
			}
			if voters < c.cfg.MaxVoters || (in && s.Suffrage == raft.Voter) {
				if !in {
					voters++
				}
				c.logger.Info("adding raft voter", "member", e.name, "addr", addr)
				errs = append(errs, c.raft.AddVoter(id, addr, 0, 10*time.Second).Error())
			} else {
				c.logger.Info("adding raft non-voter", "member", e.name, "addr", addr)
				errs = append(errs, c.raft.AddNonvoter(id, addr, 0, 10*time.Second).Error())
			}
		case !in || e.name == c.cfg.NodeName:
		case (e.status == StatusLeft || e.status == StatusDead) && time.Since(e.since) > c.cfg.DeadRemoveAfter:
			c.logger.Info("removing raft server", "member", e.name, "status", e.status)
			errs = append(errs, c.raft.RemoveServer(id, 0, 10*time.Second).Error())
			if s.Suffrage == raft.Voter {
				voters--
			}
		}
	}
	for _, s := range f.Configuration().Servers {
		if voters >= c.cfg.MaxVoters {
			break
		}
		if s.Suffrage == raft.Nonvoter && alive[s.ID] {
			c.logger.Info("promoting raft non-voter", "member", s.ID)
			errs = append(errs, c.raft.AddVoter(s.ID, s.Address, 0, 10*time.Second).Error())
			voters++
		}
	}
	return errors.Join(errs...)
}

// raftRoles maps server IDs to leader/voter/nonvoter from the local copy of
// the raft configuration.
func (c *Cluster) raftRoles() map[string]string {
	out := map[string]string{}
	if c.raft == nil {
		return out
	}
	f := c.raft.GetConfiguration()
	if f.Error() != nil {
		return out
	}
	_, leader := c.raft.LeaderWithID()
	for _, s := range f.Configuration().Servers {
		switch {
		case s.ID == leader:
			out[string(s.ID)] = RoleLeader
		case s.Suffrage == raft.Voter:
			out[string(s.ID)] = RoleVoter
		default:
			out[string(s.ID)] = RoleNonvoter
		}
	}
	return out
}

// IsLeader reports whether this agent is the raft leader.
func (c *Cluster) IsLeader() bool { return c.raft != nil && c.raft.State() == raft.Leader }

// Leader returns the leader's node name, or "" when none is known.
func (c *Cluster) Leader() string {
	if c.raft == nil {
		return ""
	}
	_, id := c.raft.LeaderWithID()
	return string(id)
}

// Status is a summary of this agent's raft view.
type Status struct {
	Node      string            `json:"node"`
	Leader    string            `json:"leader"`
	State     string            `json:"state"`
	Term      string            `json:"term"`
	LastIndex uint64            `json:"last_index"`
	Stats     map[string]string `json:"stats"`
}

// Status reports this agent's raft state.
func (c *Cluster) Status() Status {
	if c.raft == nil {
		return Status{Node: c.cfg.NodeName, State: "not started"}
	}
	st := c.raft.Stats()
	return Status{
		Node: c.cfg.NodeName, Leader: c.Leader(), State: c.raft.State().String(),
		Term: st["term"], LastIndex: c.raft.LastIndex(), Stats: st,
	}
}

// applyTimeout bounds writes whose context has no deadline.
const applyTimeout = 15 * time.Second

// apply frames a command and applies it on the leader: directly when this
// agent leads, else forwarded over the API (for the types members may
// forward; the others fail with ErrNotLeader). While no leader is known (an
// election) it waits, until ctx ends. The command is validated first:
// nothing malformed reaches raft.
func (c *Cluster) apply(ctx context.Context, t MessageType, req any) error {
	b, err := encodeCommand(t, req)
	if err != nil {
		return err
	}
	if _, _, err := decodeCommand(b); err != nil {
		return err
	}
	if err := c.applyRaw(ctx, b, false); err != nil {
		return fmt.Errorf("%s: %w", t, err)
	}
	return nil
}

// applyRaw applies a framed, validated command. forwarded marks one that
// another agent sent here (POST /v1/apply): it is applied only if this
// agent leads, and never forwarded again.
func (c *Cluster) applyRaw(ctx context.Context, b []byte, forwarded bool) error {
	if len(b) == 0 {
		return ErrInvalid
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, applyTimeout)
		defer cancel()
	}
	leaderOnly := !commands[MessageType(b[0])&^IgnoreUnknownTypeFlag].forwarding
	for {
		err := c.tryApply(ctx, b, forwarded || leaderOnly)
		if !errors.Is(err, ErrNotLeader) && !errors.Is(err, ErrNoLeader) && !errors.Is(err, errUnreachable) || forwarded || leaderOnly {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// errUnreachable: the leader's API could not be dialled; the write was not
// sent, so it is safe to retry.
var errUnreachable = errors.New("leader unreachable")

func (c *Cluster) tryApply(ctx context.Context, b []byte, forwarded bool) error {
	if c.raft == nil {
		return fmt.Errorf("agent not started: %w", ErrNoLeader)
	}
	if c.raft.State() == raft.Leader {
		deadline, _ := ctx.Deadline()
		f := c.raft.Apply(b, time.Until(deadline))
		if err := f.Error(); err != nil {
			if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
				return fmt.Errorf("%w: %v", ErrNotLeader, err)
			}
			return err
		}
		if err, ok := f.Response().(error); ok {
			return err
		}
		return nil
	}
	if forwarded {
		return ErrNotLeader
	}
	_, id := c.raft.LeaderWithID()
	if id == "" {
		return ErrNoLeader
	}
	e, ok := c.member(string(id))
	if !ok || e.meta.API == "" {
		return fmt.Errorf("leader %s has no API address: %w", id, ErrNoLeader)
	}
	return c.peerClient(e.meta.API).forward(ctx, b)
}

// EventID is a content hash of parts, for Event.ID dedup keys.
func EventID(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(h[:16])
}

// Writes. Each stamps missing times before Apply and returns the FSM's rule
// violation (ErrCordoned, ErrLockHeld, ...) wrapped.

// SetHost applies a host change.
func (c *Cluster) SetHost(ctx context.Context, req SetHostRequest) error {
	if req.At.IsZero() {
		req.At = clock.Now().UTC()
	}
	return c.apply(ctx, SetHostType, req)
}

// Cordon marks a host unschedulable (or schedulable again with false).
func (c *Cluster) Cordon(ctx context.Context, host string, cordoned bool, reason string) error {
	return c.SetHost(ctx, SetHostRequest{Name: host, Cordoned: &cordoned, Reason: reason})
}

// SetDraining marks a host draining.
func (c *Cluster) SetDraining(ctx context.Context, host string, draining bool, reason string) error {
	return c.SetHost(ctx, SetHostRequest{Name: host, Draining: &draining, Reason: reason})
}

// PutMigration stores a migration record computed by the caller.
func (c *Cluster) PutMigration(ctx context.Context, req PutMigrationRequest) error {
	return c.apply(ctx, PutMigrationType, req)
}

// DeleteMigration forgets a migration record.
func (c *Cluster) DeleteMigration(ctx context.Context, id string) error {
	return c.apply(ctx, DeleteMigrationType, DeleteMigrationRequest{ID: id})
}

// AcquireLock takes a slot of a counted lock; ErrLockHeld when full.
func (c *Cluster) AcquireLock(ctx context.Context, req AcquireLockRequest) error {
	if req.At.IsZero() {
		req.At = clock.Now().UTC()
	}
	return c.apply(ctx, AcquireLockType, req)
}

// ReleaseLock gives a slot back.
func (c *Cluster) ReleaseLock(ctx context.Context, name, holder string) error {
	return c.apply(ctx, ReleaseLockType, ReleaseLockRequest{Name: name, Holder: holder})
}

// AppendEvent adds an event to the log; ErrDuplicate when its ID is there.
func (c *Cluster) AppendEvent(ctx context.Context, ev Event) error {
	if ev.At.IsZero() {
		ev.At = clock.Now().UTC()
	}
	return c.apply(ctx, AppendEventType, AppendEventRequest{Event: ev})
}

// Reads from the local replica (possibly slightly behind the leader). Every
// one returns copies.

func (c *Cluster) Hosts() []Host { return c.fsm.hosts() }

func (c *Cluster) Host(name string) (Host, error) {
	h, ok := c.fsm.host(name)
	if !ok {
		return Host{}, fmt.Errorf("host %s: %w", name, ErrNotFound)
	}
	return h, nil
}

func (c *Cluster) Migrations() []MigrationRecord { return c.fsm.migrations() }

func (c *Cluster) Migration(id string) (MigrationRecord, error) { return c.fsm.migration(id) }

func (c *Cluster) Locks() []Lock { return c.fsm.locks() }

// Events returns events with a raft index above since.
func (c *Cluster) Events(since uint64) []Event { return c.fsm.events(since) }
