package main

import (
	"context"
	"log/slog"
	"path/filepath"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/migrate"
	"github.com/edgemigrate/orchestrate/config"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/transfer"
)

// clusterAuthorizer lets the transfer server accept exactly the client keys
// the cluster's members publish over authenticated gossip.
type clusterAuthorizer struct{ c *cluster.Cluster }

func (a clusterAuthorizer) Authorized(key ssh.PublicKey) bool {
	_, ok := a.c.Authorized(key)
	return ok
}

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
	mcfg.Logger = logger.With("part", "migrate")
	co = migrate.NewCoordinator(mcfg, c, migrate.ClusterAgents{Peers: c})
	co.Register(c, c)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.Run(gctx) })
	if eng != nil {
		scfg := transfer.DefaultServerConfig()
		scfg.Addr, scfg.HostKey, scfg.Authorizer = cfg.Transfer.Bind, c.HostSigner(), clusterAuthorizer{c}
		scfg.SpoolDir = filepath.Join(cfg.Node.DataDir, "spool")
		scfg.Logger = logger.With("part", "transfer")
		srv, err := transfer.NewServer(scfg)
		if err != nil {
			return err
		}
		ccfg := transfer.DefaultClientConfig()
		ccfg.Signer, ccfg.HostKeys, ccfg.Logger = c.ClientSigner(), c, logger.With("part", "transfer")
		client, err := transfer.NewClient(ccfg)
		if err != nil {
			return err
		}
		defer client.Close()
		migrate.NewAgent(cfg.Node.Name, eng, client, logger.With("part", "migrate")).Register(c, srv)
		g.Go(func() error { return srv.Run(gctx) })
	}
	return g.Wait()
}
