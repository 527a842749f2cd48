package main

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/copies"
	"github.com/edgemigrate/orchestrate/cluster/forensics"
	"github.com/edgemigrate/orchestrate/cluster/migrate"
	"github.com/edgemigrate/orchestrate/cluster/reboot"
	"github.com/edgemigrate/orchestrate/config"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/internal/netguard"
	"github.com/edgemigrate/orchestrate/policy"
	"github.com/edgemigrate/orchestrate/policy/spot"
	"github.com/edgemigrate/orchestrate/transfer"
)

// clusterAuthorizer lets the transfer server accept exactly the client keys
// the cluster's members publish over authenticated gossip, and tells stream
// handlers which member sent a stream.
type clusterAuthorizer struct{ c *cluster.Cluster }

var _ transfer.Identifier = clusterAuthorizer{}

func (a clusterAuthorizer) Authorized(key ssh.PublicKey) bool {
	_, ok := a.c.Authorized(key)
	return ok
}

// Identify names the member a client key belongs to (transfer.Identifier):
// stream handlers check the sender against the replicated state.
func (a clusterAuthorizer) Identify(key ssh.PublicKey) (string, bool) { return a.c.Authorized(key) }

// runAgent wires one agent: the cluster (gossip, raft, API), the transfer
// endpoint, and the migration steps and coordinator, and runs them until
// ctx ends. Every part's goroutines belong to the errgroup.
func runAgent(ctx context.Context, cfg config.Config, cc cluster.Config, eng engine.Engine, logger *slog.Logger) error {
	var co *migrate.Coordinator
	cc.LeaderLoop = func(ctx context.Context) error { return co.Run(ctx) }
	c, err := cluster.New(cc)
	if err != nil {
		return err
	}
	mcfg := migrate.DefaultConfig()
	mcfg.Logger, mcfg.Rebalance = logger.With("part", "migrate"), cfg.RebalanceConfig()
	co = migrate.NewCoordinator(mcfg, c, migrate.ClusterAgents{Peers: c})
	co.Register(c, c)
	forensics.NewService(c, cfg.Forensics.StoreHost).Register(c)
	if cfg.Policy.Forensics.BeforeEvacuation {
		co.Snapshots = &forensics.Snapshotter{C: c, StoreHost: cfg.Forensics.StoreHost,
			Budget: migrate.SnapshotBudget{Share: cfg.Policy.Forensics.BeforeEvacuationShare, Parallel: cfg.Policy.Forensics.BeforeEvacuationParallel}}
	}
	co.RegisterPolicy(c, c)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	co.Metrics = migrate.NewMetrics(reg)
	reg.MustRegister(migrate.ClusterCollector{C: c}, netCollector{c})
	c.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	registerDebug(c)

	pa := &migrate.PolicyAgent{Host: cfg.Node.Name, Store: c, Lead: c, Steps: c, Log: logger.With("part", "policy"),
		Reboot: cfg.RebootConfig(), CheckInterval: cfg.Policy.Reboot.CheckInterval, Dir: filepath.Join(cfg.Node.DataDir, "reboot")}
	pa.Checker = policy.NewRebootChecker(pa.Reboot)
	if eng != nil {
		rcfg := reboot.DefaultConfig()
		rcfg.Dir, rcfg.Host, rcfg.Logger, rcfg.Metrics = pa.Dir, cfg.Node.Name, logger.With("part", "reboot"), reboot.NewMetrics(reg)
		pa.Local, pa.Containers = reboot.NewStore(rcfg, eng), eng
	}
	pa.RegisterReboot(c)
	if cfg.Policy.Spot.Provider != spot.None {
		sc := cfg.SpotConfig()
		sc.Logger = logger.With("part", "spot")
		src, err := spot.Open(ctx, sc)
		switch {
		case errors.Is(err, spot.ErrNoProvider):
			logger.Info("no cloud metadata service answered; spot notices are off", "provider", sc.Provider)
		case err != nil:
			return err
		default:
			pa.Spot = src
		}
	}

	cpcfg := copies.Config{Host: cfg.Node.Name, DataDir: cfg.Node.DataDir, Logger: logger.With("part", "copies")}
	var copier *copies.Agent

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.Run(gctx) })
	g.Go(func() error { return pa.Run(gctx) })
	if eng != nil {
		scfg := transfer.DefaultServerConfig()
		scfg.Addr, scfg.HostKey, scfg.Authorizer = cfg.Transfer.Bind, c.HostSigner(), clusterAuthorizer{c}
		scfg.SpoolDir = filepath.Join(cfg.Node.DataDir, "spool")
		scfg.StallTimeout = cfg.Transfer.StallTimeout
		scfg.MaxFileBytes, scfg.MinFreeBytes = int64(cfg.Transfer.MaxFileBytes), int64(cfg.Transfer.MinFreeBytes)
		scfg.MaxStreamBytes = map[string]int64{forensics.KindSnapshot: int64(cfg.Transfer.MaxFileBytes), migrate.KindPreflight: 1 << 20}
		scfg.PageLinks = cfg.Transfer.PageLinks
		scfg.Logger = logger.With("part", "transfer")
		srv, err := transfer.NewServer(scfg)
		if err != nil {
			return err
		}
		ccfg := transfer.DefaultClientConfig()
		ccfg.Signer, ccfg.HostKeys, ccfg.Logger = c.ClientSigner(), c, logger.With("part", "transfer")
		ccfg.Dial = netguard.DialFrom(cfg.Transfer.Bind, 0) // from our own address: peers cap per source IP, page links accept only it
		ccfg.PageLinks = cfg.Transfer.PageLinks
		// Fault injection, in test builds only (faults_testhooks.go).
		if err := applyFaults(&ccfg, logger); err != nil {
			return err
		}
		client, err := transfer.NewClient(ccfg)
		if err != nil {
			return err
		}
		defer client.Close()
		ma := migrate.NewAgent(cfg.Node.Name, eng, client, logger.With("part", "migrate"))
		pc := migrate.DefaultPrecopyConfig()
		pc.Dir, pc.MaxBaseBytes = filepath.Join(cfg.Node.DataDir, "precopy"), int64(cfg.Transfer.MaxFileBytes)
		ma.SetPrecopy(pc)
		ma.SetPages(migrate.PagesConfig{Dir: filepath.Join(cfg.Node.DataDir, "pages")})
		ma.SetImageStage(filepath.Join(cfg.Node.DataDir, "stage"))
		ma.SetAuthority(c)
		ma.Register(c, srv)
		g.Go(func() error { return ma.ReconcileLoop(gctx, c, time.Minute) })
		fcfg := forensics.Config{Host: cfg.Node.Name, DataDir: cfg.Node.DataDir, Logger: logger.With("part", "forensics"),
			Retention:     forensics.Retention{Count: cfg.Forensics.Retention.Count, MaxAge: cfg.Forensics.Retention.MaxAge},
			ImageRegistry: cfg.Forensics.ImageRegistry, InsecureRegistry: !cfg.Forensics.ImageRegistryTLSVerify}
		fa := forensics.NewAgent(fcfg, eng, client, c)
		fa.SetStage(filepath.Join(cfg.Node.DataDir, "stage"))
		fa.Register(c, srv)
		g.Go(func() error { return fa.Run(gctx) })
		g.Go(func() error { return srv.Run(gctx) })
		copier = copies.NewAgent(cpcfg, c, eng, srv, client)
	} else {
		copier = copies.NewAgent(cpcfg, c, nil, nil, nil)
	}
	copier.Register(c)
	copies.NewService(c, copier).Register(c, int64(cfg.Transfer.MaxFileBytes))
	return g.Wait()
}
