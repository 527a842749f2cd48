package main

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/edgemigrate/orchestrate/config"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "orchestrate",
		Short:         "Live-migrate containers between edge hosts",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newAgentCmd(), newMembersCmd(), newPSCmd(), newKeygenCmd(), newMetricsTokenCmd(), newConfigCmd(), newVersionCmd())
	root.AddCommand(newMigrateCmd(), newDrainCmd(), newCordonCmd(true), newCordonCmd(false), newMigrationsCmd(), newEventsCmd(), newRebalanceCmd(), newStatusCmd())
	root.AddCommand(newCheckpointCmd(), newSnapshotsCmd(), newInspectCmd())
	root.AddCommand(newUICmd(), newRebootCmd(), newRestoreCmd())
	return root
}

// args wraps a cobra argument check so that its failure exits 2.
func args(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if err := check(cmd, a); err != nil {
			return usageError{err}
		}
		return nil
	}
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "orchestrate %s (%s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}

func newLogger(c config.Config) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Log.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
