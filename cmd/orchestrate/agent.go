package main

import (
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/config"
	"github.com/edgemigrate/orchestrate/engine"
)

func newAgentCmd() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the agent on this host",
		Long: `Run the agent: gossip, raft, the replicated state and the API.

Every configuration key can be set in the YAML file (--config), as an
ORCHESTRATE_ environment variable (ORCHESTRATE_CLUSTER_BOOTSTRAP_EXPECT) or
as a flag (--cluster-bootstrap-expect). Flags win over the environment,
which wins over the file.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(file, cmd.Flags())
			if err != nil {
				return err
			}
			logger := newLogger(cfg)
			secret, err := cluster.LoadSecret(cfg.Cluster.SecretFile)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			cc := cfg.ClusterConfig()
			cc.Secret, cc.Logger = secret, logger
			var eng engine.Engine
			if cfg.Engine.Type != cluster.EngineNone { // none: a witness, gossip and raft only
				if eng, err = newTestEngine(cfg, logger); err == nil && eng == nil {
					eng, err = newEngine(ctx, cfg, logger)
				}
				if err != nil {
					return err
				}
				cc.Engine = eng
			}
			return runAgent(ctx, cfg, cc, eng, logger)
		},
	}
	cmd.Flags().StringVarP(&file, "config", "c", "", "YAML configuration file")
	config.AddFlags(cmd.Flags())
	return cmd
}
