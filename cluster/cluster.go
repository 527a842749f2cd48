package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/internal/safefs"
	"github.com/edgemigrate/orchestrate/transfer"
)

// Config configures one agent's view of the cluster. cmd fills it from the
// config package; tests fill it directly.
type Config struct {
	NodeName string
	DataDir  string
	Labels   map[string]string

	// BindAddr is the memberlist (gossip) address, host:port.
	BindAddr string
	// RaftBindAddr is raft's address; its host must be a concrete IP, which
	// peers dial.
	RaftBindAddr string
	// Join lists seed gossip addresses. Joining retries until one answers.
	Join []string
	// BootstrapExpect is how many agents must gossip before the first ones
	// bootstrap raft together. Start exactly that many agents with it first,
	// as with Consul.
	BootstrapExpect int
	// MaxVoters caps raft voters; further members join as non-voters.
	MaxVoters int
	// DeadRemoveAfter is how long a dead member stays in raft and in the
	// member table before it is removed.
	DeadRemoveAfter time.Duration

	// Secret is the cluster secret (LoadSecret). Required.
	Secret []byte

	// APIBindAddr is the TLS API address (empty: no TCP API).
	APIBindAddr string
	// APISocket is the unix socket for the local CLI (empty: none).
	APISocket string

	// TransferAddr is gossiped for the transfer layer.
	TransferAddr string

	// Engine lists local containers. Nil means a control-plane-only agent
	// (reported as engine "none", 0 containers).
	Engine     engine.Engine
	EngineType string

	// Gossip timings. Dead detection takes about ProbeInterval plus
	// SuspicionMult*ProbeInterval (up to twice that without confirmations).
	ProbeInterval time.Duration
	ProbeTimeout  time.Duration
	SuspicionMult int
	// Raft timings.
	RaftHeartbeatTimeout time.Duration
	RaftElectionTimeout  time.Duration
	// StatsInterval is how often local capacity and container counts are
	// refreshed into gossip, and the local containers checked against their
	// replicated report (inventory.go).
	StatsInterval time.Duration
	// Retention bounds the replicated history (retention.go); the leader
	// prunes to its own.
	Retention Retention

	// LeaderLoop, when set, runs once per leadership term, after Barrier,
	// with a context cancelled when leadership is lost. An error ends the
	// term's loop (it is logged), not leadership.
	LeaderLoop func(ctx context.Context) error
	// Events, when set, receives member events; sends never block (a full
	// channel drops events).
	Events chan<- MemberEvent

	Logger *slog.Logger
}

// DefaultConfig returns the defaults that config documents.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		NodeName:             host,
		DataDir:              "/var/lib/orchestrate",
		BindAddr:             "0.0.0.0:7946",
		RaftBindAddr:         "127.0.0.1:7947",
		BootstrapExpect:      1,
		MaxVoters:            3,
		DeadRemoveAfter:      time.Hour,
		APISocket:            "/run/orchestrate/agent.sock",
		EngineType:           "podman",
		ProbeInterval:        time.Second,
		ProbeTimeout:         500 * time.Millisecond,
		SuspicionMult:        3,
		RaftHeartbeatTimeout: 800 * time.Millisecond,
		RaftElectionTimeout:  800 * time.Millisecond,
		StatsInterval:        10 * time.Second,
		Retention:            DefaultRetention(),
		Logger:               slog.Default(),
	}
}

// Cluster is one agent's membership, raft node, replicated state and API.
type Cluster struct {
	cfg    Config
	logger *slog.Logger
	tls    *clusterTLS
	token  string

	hostKey   ssh.Signer
	clientKey ssh.Signer

	fsm   *fsm
	raft  *raft.Raft
	store *raftStore
	ml    *memberlist.Memberlist
	api   *API

	leaderCh      chan bool
	wakeBootstrap chan struct{}
	// joined is closed once the first join succeeded (or there is nothing
	// to join): only then is the member table complete enough to bootstrap.
	joined        chan struct{}
	wakeReconcile chan struct{}
	// wakePeers wakes reconnectLoop on a member change, so that peers.json
	// is saved at once, not up to a second later.
	wakePeers chan struct{}

	// metaMu serialises setMeta's UpdateNode calls: UpdateNode reads the
	// metadata and then takes the next incarnation, so two at once can pair
	// the newer metadata with the older incarnation, which memberlist then
	// drops; the stale metadata wins and the caller times out.
	metaMu sync.Mutex
	// sentMeta is the metadata encoding memberlist last gossiped (set by
	// startGossip and setMeta, under metaMu).
	sentMeta []byte
	mu       sync.Mutex
	meta     nodeMeta
	members  map[string]*memberEntry
	acks     map[string]time.Time // last direct probe ack, by member

	signer *stepSigner // this leader's step key, while it leads (mu)
	// invWake is poked on every applied entry, for the inventory loop.
	invWake <-chan struct{}
	net     netCounters

	peerOnce sync.Once
	peerHTTP *http.Client

	shutdownOnce sync.Once
	shutdownErr  error
}

// New checks the config, loads or creates the SSH keys and opens the raft
// store. Nothing listens until Run.
func New(cfg Config) (*Cluster, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if len(cfg.Secret) == 0 {
		return nil, ErrNoSecret
	}
	if cfg.NodeName == "" || cfg.DataDir == "" {
		return nil, fmt.Errorf("node name and data dir are required: %w", ErrInvalid)
	}
	if cfg.MaxVoters < 1 {
		cfg.MaxVoters = 3
	}
	if cfg.Retention == (Retention{}) {
		cfg.Retention = DefaultRetention()
	}
	if err := cfg.Retention.Validate(); err != nil {
		return nil, err
	}
	if err := safefs.PrivateDir(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	t, err := newClusterTLS(cfg.Secret)
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		cfg: cfg, logger: cfg.Logger.With("node", cfg.NodeName), tls: t, token: APIToken(cfg.Secret),
		fsm: newFSM(), wakeBootstrap: make(chan struct{}, 1), joined: make(chan struct{}), wakeReconcile: make(chan struct{}, 1), wakePeers: make(chan struct{}, 1), members: map[string]*memberEntry{}, acks: map[string]time.Time{},
	}
	if c.hostKey, err = transfer.LoadOrCreateKey(filepath.Join(cfg.DataDir, HostKeyFile)); err != nil {
		return nil, err
	}
	if c.clientKey, err = transfer.LoadOrCreateKey(filepath.Join(cfg.DataDir, ClientKeyFile)); err != nil {
		return nil, err
	}
	engineType := cfg.EngineType
	if cfg.Engine == nil {
		engineType = "none"
	}
	c.meta = nodeMeta{
		Raft: cfg.RaftBindAddr, API: cfg.APIBindAddr, Transfer: cfg.TransferAddr, Engine: engineType, Arch: runtime.GOARCH,
		CPUs: runtime.NumCPU(), Kernel: kernelRelease(), Labels: cfg.Labels,
		HostKey: rawKey(c.hostKey.PublicKey()), ClientKey: rawKey(c.clientKey.PublicKey()),
	}
	c.fsm.log = c.logger.With("part", "fsm")
	c.invWake = c.fsm.watch()
	c.api = newAPI(c)
	return c, nil
}

// StateChanged is poked (at most one pending) whenever the replicated state
// changes on this replica. The leader's migration reconciler is its one
// reader.
func (c *Cluster) StateChanged() <-chan struct{} { return c.fsm.changed }

// Name is this agent's node name.
func (c *Cluster) Name() string { return c.cfg.NodeName }

// HostSigner and ClientSigner are this agent's SSH keys, for the transfer
// layer.
func (c *Cluster) HostSigner() ssh.Signer   { return c.hostKey }
func (c *Cluster) ClientSigner() ssh.Signer { return c.clientKey }

// Run starts raft, gossip and the API, and blocks until ctx ends or a part
// fails; then it leaves the cluster gracefully and shuts down.
func (c *Cluster) Run(ctx context.Context) error {
	if err := c.startRaft(); err != nil {
		return err
	}
	c.joinStats(ctx)
	if err := c.startGossip(); err != nil {
		c.Shutdown()
		return err
	}
	lns, err := c.api.listen()
	if err != nil {
		c.Shutdown()
		return err
	}
	c.logger.Info("agent started", "gossip", c.cfg.BindAddr, "raft", c.cfg.RaftBindAddr, "api", c.cfg.APIBindAddr, "socket", c.cfg.APISocket)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.api.serve(gctx, lns) })
	g.Go(func() error { return c.joinLoop(gctx) })
	g.Go(func() error { return c.bootstrapLoop(gctx) })
	g.Go(func() error { return c.leadershipLoop(gctx) })
	g.Go(func() error { return c.statsLoop(gctx) })
	g.Go(func() error { return c.reapLoop(gctx) })
	g.Go(func() error { return c.inventoryLoop(gctx) })
	g.Go(func() error { return c.reconnectLoop(gctx) })
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	if serr := c.Shutdown(); err == nil {
		err = serr
	}
	return err
}

// Shutdown leaves gossip gracefully and stops raft. It is safe to call more
// than once and from several goroutines.
func (c *Cluster) Shutdown() error {
	c.shutdownOnce.Do(func() {
		var errs []error
		if c.ml != nil {
			c.setMeta(func(m *nodeMeta) { m.Leaving = true })
			// A leave that nobody acknowledges (the last agent, or all of
			// them stopping at once) is not a failure: peers will mark
			// us dead instead of left.
			if err := c.ml.Leave(2 * time.Second); err != nil {
				c.logger.Warn("graceful leave not confirmed", "err", err)
			}
			if err := c.ml.Shutdown(); err != nil {
				errs = append(errs, err)
			}
		}
		if c.raft != nil {
			if err := c.raft.Shutdown().Error(); err != nil {
				errs = append(errs, fmt.Errorf("raft shutdown: %w", err))
			}
		}
		if c.store != nil {
			errs = append(errs, c.store.close())
		}
		c.shutdownErr = errors.Join(errs...)
		c.logger.Info("agent stopped")
	})
	return c.shutdownErr
}

func (c *Cluster) startGossip() error {
	mc, err := c.gossipConfig()
	if err != nil {
		return err
	}
	ml, err := createGossip(mc, func(t memberlist.NodeAwareTransport) memberlist.NodeAwareTransport {
		return newCountingTransport(t, &c.net) // netstats.go
	})
	if err != nil {
		return fmt.Errorf("gossip on %s: %w", c.cfg.BindAddr, err)
	}
	c.metaMu.Lock()
	c.sentMeta = c.applyMeta(func(*nodeMeta) {}) // what Create asked NodeMeta for
	c.ml = ml
	c.metaMu.Unlock()
	return nil
}

// gossipConfig is this agent's memberlist configuration.
func (c *Cluster) gossipConfig() (*memberlist.Config, error) {
	mc := memberlist.DefaultLANConfig()
	tuneGossip(mc) // gossip_tuning.go
	mc.Name = c.cfg.NodeName
	host, port, err := splitHostPort(c.cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("cluster bind %q: %w", c.cfg.BindAddr, err)
	}
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertisePort = port
	mc.SecretKey = GossipKey(c.cfg.Secret)
	mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	mc.ProbeInterval, mc.ProbeTimeout = c.cfg.ProbeInterval, c.cfg.ProbeTimeout
	mc.SuspicionMult, mc.SuspicionMaxTimeoutMult = max(c.cfg.SuspicionMult, 1), 2
	mc.Delegate, mc.Events, mc.Ping = &delegate{c}, &delegate{c}, &delegate{c}
	mc.Logger = memberlistLogger(c.logger)
	return mc, nil
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return host, port, nil
}

// joinLoop joins the seeds, retrying with jitter until at least one answers.
func (c *Cluster) joinLoop(ctx context.Context) error {
	seeds := c.seeds() // rejoin.go: the configured seeds and a few peers known before a restart
	if len(seeds) == 0 {
		close(c.joined)
		<-ctx.Done()
		return nil
	}
	backoff := 200 * time.Millisecond
	for {
		n, err := c.ml.Join(seeds)
		if n > 0 {
			c.logger.Info("joined cluster", "contacted", n)
			close(c.joined)
			break
		}
		c.logger.Warn("join failed, retrying", "seeds", seeds, "err", err)
		if err := sleepCtx(ctx, jitter(backoff)); err != nil {
			return nil
		}
		seeds = c.seeds()
		backoff = min(backoff*2, 5*time.Second)
	}
	if err := sleepCtx(ctx, jitter(settleAfter)); err != nil {
		return nil
	}
	c.settleGossip() // antientropy.go
	<-ctx.Done()
	return nil
}

// jitter returns d ± 25%.
func jitter(d time.Duration) time.Duration {
	return d - d/4 + time.Duration(rand.Int64N(int64(d)/2+1))
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// setMeta changes the gossiped metadata and pushes it out when it differs
// from what was last gossiped (including changes noteMeta held back).
func (c *Cluster) setMeta(f func(*nodeMeta)) {
	c.metaMu.Lock()
	defer c.metaMu.Unlock()
	now := c.applyMeta(f)
	if c.ml == nil || string(now) == string(c.sentMeta) {
		return
	}
	// UpdateNode changes the local node at once; a timeout only means the
	// broadcast was not sent yet, so what it carries counts as gossiped.
	if err := c.ml.UpdateNode(2 * time.Second); err != nil {
		c.logger.Warn("gossip metadata update failed", "err", err)
	}
	c.sentMeta = now
}

// noteMeta changes the metadata without a broadcast of its own: the
// change goes out with the next setMeta (statsLoop's refresh at the
// latest). For changes nobody waits for, so that a burst of agents does
// not make a fleet-wide broadcast each.
func (c *Cluster) noteMeta(f func(*nodeMeta)) {
	c.metaMu.Lock()
	defer c.metaMu.Unlock()
	c.applyMeta(f)
}

// applyMeta applies f to the metadata under mu and returns its encoding.
// The caller holds metaMu.
func (c *Cluster) applyMeta(f func(*nodeMeta)) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(&c.meta)
	return c.meta.encode(metaLimit)
}

// Self returns this agent's full member record (labels untruncated).
func (c *Cluster) Self() Member {
	for _, m := range c.Members() {
		if m.Name == c.cfg.NodeName {
			m.Labels, m.LabelsTruncated = c.cfg.Labels, false
			return m
		}
	}
	return Member{Name: c.cfg.NodeName, Status: StatusAlive, Labels: c.cfg.Labels}
}

// firstStatsWait bounds the engine calls of the stats an agent joins with.
const firstStatsWait = 2 * time.Second

// joinStats reads the first stats into the metadata this agent joins with,
// before gossip starts: read after joining, they were a second alive
// message per joiner for the whole fleet to gossip while it converged
// (internal/scale). A slow engine delays the start by at most
// firstStatsWait; what it did not answer, statsLoop reads later.
func (c *Cluster) joinStats(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, firstStatsWait)
	defer cancel()
	c.refreshStats(ctx)
}

// statsLoop refreshes capacity, use and container count into gossip, the
// first time one interval after Run read them before joining.
func (c *Cluster) statsLoop(ctx context.Context) error {
	for {
		if err := sleepCtx(ctx, jitter(c.cfg.StatsInterval)); err != nil {
			return nil
		}
		c.refreshStats(ctx)
	}
}

func (c *Cluster) refreshStats(ctx context.Context) {
	total, avail := memInfo()
	var n int
	var criu string
	if c.cfg.Engine != nil {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if cs, err := c.cfg.Engine.List(lctx); err != nil {
			c.logger.Warn("list containers", "err", err)
		} else {
			n = len(cs)
		}
		if ft, err := c.cfg.Engine.Features(lctx); err == nil {
			criu = ft.CRIUVersion
		} else {
			c.logger.Warn("engine features", "err", err)
			c.mu.Lock()
			criu = c.meta.CRIU // keep what was known until it answers
			c.mu.Unlock()
		}
	}
	c.setMeta(func(m *nodeMeta) {
		m.MemTotal, m.MemUsed, m.Containers, m.CRIU = total, gossipedMemUsed(m.MemUsed, total-avail, total), n, criu
		m.InRaft = m.InRaft || c.hasRaftState()
	})
}

// memInfo reads MemTotal and MemAvailable (bytes) from /proc/meminfo.
func memInfo() (total, avail int64) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "MemTotal:":
			total = v * 1024
		case "MemAvailable:":
			avail = v * 1024
		}
	}
	return total, avail
}

func kernelRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

// reapLoop forgets members that have been dead or gone for DeadRemoveAfter,
// once they are out of raft: the leader's reconciler removes them from raft
// on the same clock, and needs the entry until then.
func (c *Cluster) reapLoop(ctx context.Context) error {
	for {
		if err := sleepCtx(ctx, jitter(max(c.cfg.DeadRemoveAfter/4, time.Second))); err != nil {
			return nil
		}
		inRaft := c.raftRoles()
		c.mu.Lock()
		for name, e := range c.members {
			if _, ok := inRaft[name]; ok {
				continue
			}
			if (e.status == StatusDead || e.status == StatusLeft) && time.Since(e.since) > c.cfg.DeadRemoveAfter {
				delete(c.members, name)
				delete(c.acks, name)
			}
		}
		c.mu.Unlock()
	}
}

// Containers lists this agent's local containers (none without an engine).
func (c *Cluster) Containers(ctx context.Context) ([]engine.Container, error) {
	if c.cfg.Engine == nil {
		return []engine.Container{}, nil
	}
	return c.cfg.Engine.List(ctx)
}
