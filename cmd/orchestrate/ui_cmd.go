package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/internal/console"
)

func newUICmd() *cobra.Command {
	var f clientFlags
	cfg := console.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "ui",
		Short: "Serve the web console on a local address and print its URL",
		Long: `Serve a web console: hosts, containers (migrate, drain), migrations with their
phases, downtime and bytes, events and triggers, a downtime chart, stored
snapshots, updated live.

Like kubectl proxy, it talks to the agent with your credentials (the local
socket, or --agent https://HOST:PORT with the cluster secret); the browser never
sees them. It listens on loopback only unless --allow-remote, and prints a URL
with a key that opens the console: share it only with whoever may drain hosts.
Ctrl-C stops it.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := f.client()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			// One read up front: a wrong socket or secret fails here, not in the page.
			pctx, cancel := context.WithTimeout(ctx, cfg.ReadTimeout)
			st, err := cl.Status(pctx)
			cancel()
			if err != nil {
				return err
			}
			cfg.Agent, cfg.Version = cl, version
			cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)).With("part", "console")
			srv, err := console.New(cfg)
			if err != nil {
				return err
			}
			ln, err := srv.Listen()
			if errors.Is(err, console.ErrNotLoopback) {
				return usageError{err}
			}
			if err != nil {
				return err
			}
			leader := st.Leader
			if leader == "" {
				leader = "none yet"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "orchestrate console for the cluster of %s (leader %s):\n\n    %s\n\nOpen it in a browser on this machine. Ctrl-C stops the console.\n", st.Node, leader, srv.URL())
			return srv.Serve(ctx, ln)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.agent, "agent", "", "agent: a unix socket path or https://host:port (env ORCHESTRATE_AGENT; default "+cluster.DefaultSocket+")")
	fl.StringVar(&f.secretFile, "secret-file", "", "cluster secret, for https agents (env ORCHESTRATE_SECRET_FILE; else the config file's)")
	fl.StringVarP(&f.configFile, "config", "c", "", "agent config file, for its socket and secret")
	f.output = "table"
	fl.StringVar(&cfg.Listen, "listen", console.DefaultListen, "address to serve the console on (loopback unless --allow-remote)")
	fl.BoolVar(&cfg.AllowRemote, "allow-remote", false, "allow a listen address other than loopback (plain HTTP: put a TLS proxy in front)")
	fl.StringSliceVar(&cfg.Hosts, "host", nil, "extra host name the console may be reached by (IP addresses and localhost always may)")
	fl.DurationVar(&cfg.Poll, "poll", cfg.Poll, "how often the agent is read while a page is open")
	fl.IntVar(&cfg.DowntimeWindow, "downtime-window", cfg.DowntimeWindow, "finished migrations the downtime chart covers")
	return cmd
}
