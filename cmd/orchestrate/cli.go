package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/config"
)

// clientFlags are the flags of every command that talks to an agent.
type clientFlags struct {
	agent      string
	secretFile string
	configFile string
	output     string
}

func (f *clientFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.agent, "agent", "", "agent: a unix socket path or https://host:port (env ORCHESTRATE_AGENT; default "+cluster.DefaultSocket+")")
	cmd.Flags().StringVar(&f.secretFile, "secret-file", "", "cluster secret, for https agents (env ORCHESTRATE_SECRET_FILE; else the config file's)")
	cmd.Flags().StringVarP(&f.configFile, "config", "c", "", "agent config file, for its socket and secret")
	cmd.Flags().StringVarP(&f.output, "output", "o", "table", "output format: table or json")
}

// client finds the agent: --agent, $ORCHESTRATE_AGENT, the config file's
// socket, then the default socket.
func (f *clientFlags) client() (*cluster.Client, error) {
	if f.output != "table" && f.output != "json" {
		return nil, usageError{fmt.Errorf("--output %q: expected table or json", f.output)}
	}
	var cfg *config.Config
	if f.configFile != "" {
		c, err := config.Load(f.configFile, nil)
		if err != nil && !errors.Is(err, config.ErrInvalid) {
			return nil, err
		}
		if err != nil && c.Cluster.SecretFile == "" && c.API.Socket == "" {
			return nil, err
		}
		cfg = &c
	}
	agent := firstNonEmpty(f.agent, os.Getenv("ORCHESTRATE_AGENT"))
	if agent == "" && cfg != nil {
		agent = cfg.API.Socket
	}
	if agent == "" {
		agent = cluster.DefaultSocket
	}
	var secret []byte
	if strings.HasPrefix(agent, "https://") {
		path := firstNonEmpty(f.secretFile, os.Getenv("ORCHESTRATE_SECRET_FILE"))
		if path == "" && cfg != nil {
			path = cfg.Cluster.SecretFile
		}
		var err error
		if secret, err = cluster.LoadSecret(path); err != nil {
			return nil, err
		}
	}
	return cluster.NewClient(agent, secret)
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newMembersCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "members",
		Short: "List cluster members: status, raft role, cordon, containers, memory",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := f.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			ms, err := cl.Members(ctx)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if f.output == "json" {
				return printJSON(out, ms)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tADDR\tSTATUS\tROLE\tCORDONED\tCONTAINERS\tMEMORY")
			for _, m := range ms {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\t%d\t%s/%s\n", m.Name, m.Addr, m.Status, m.Role, m.Cordoned, m.Containers,
					bytesHuman(m.MemoryUsed), bytesHuman(m.MemoryTotal))
			}
			return tw.Flush()
		},
	}
	f.add(cmd)
	return cmd
}

func newPSCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List containers across the cluster",
		Long: `List containers across the cluster, from the container reports every agent
writes into the replicated state: no host is asked. A report is at most one
raft commit old for changes orchestrate made (migrations), and at most
cluster.stats_interval (default 10 s) old for changes made outside it (podman
run, a crash). Dead hosts and hosts that have not reported are named on stderr.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := f.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			res, err := cl.PS(ctx)
			if err != nil {
				return err
			}
			for _, he := range res.Errors {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s: %s\n", he.Host, he.Error)
			}
			out := cmd.OutOrStdout()
			if f.output == "json" {
				if res.Containers == nil {
					res.Containers = []cluster.PSEntry{}
				}
				return printJSON(out, res.Containers)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "HOST\tNAME\tID\tIMAGE\tSTATE")
			for _, c := range res.Containers {
				fmt.Fprintf(tw, "%s\t%s\t%.12s\t%s\t%s\n", c.Host, c.Name, c.ID, c.Image, c.State)
			}
			return tw.Flush()
		},
	}
	f.add(cmd)
	return cmd
}

func bytesHuman(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for x := n / unit; x >= unit; x /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ci", float64(n)/float64(div), "KMGTPE"[exp])
}

func newKeygenCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "keygen [FILE]",
		Short: "Write a new cluster secret (mode 0600) to FILE, or print it",
		Long: `Write a new cluster secret. Every host's config points to the same file
(cluster.secret_file). The secret encrypts gossip, authenticates the API and
raft. keygen never overwrites an existing file.`,
		Args: args(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if len(a) == 0 {
				_, err := cmd.OutOrStdout().Write(cluster.GenerateSecret())
				return err
			}
			return cluster.WriteSecret(a[0])
		},
	}
}

// checkEngineSocket pings the engine service, so that a config pointing at
// a socket nobody serves is caught before the agent starts.
func checkEngineSocket(ctx context.Context, typ, uri string) error {
	if typ == "none" {
		return nil
	}
	path, ok := strings.CutPrefix(uri, "unix://")
	if !ok {
		return fmt.Errorf("%w: engine.socket: %q (expected unix:///path/to/socket)", config.ErrInvalid, uri)
	}
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://engine/_ping", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w: engine.socket: %s: the %s service does not answer (%v); is it running? (podman: systemctl enable --now podman.socket)", config.ErrInvalid, uri, typ, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: engine.socket: %s: ping answered %s", config.ErrInvalid, uri, resp.Status)
	}
	return nil
}

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Configuration tools"}
	cmd.AddCommand(&cobra.Command{
		Use:   "validate [FILE]",
		Short: "Check a configuration file (plus environment) and its secret",
		Args:  args(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			file := ""
			if len(a) == 1 {
				file = a[0]
			}
			c, err := config.Load(file, nil)
			if err != nil {
				return err
			}
			if _, err := cluster.LoadSecret(c.Cluster.SecretFile); err != nil {
				return err
			}
			if err := checkEngineSocket(cmd.Context(), c.Engine.Type, c.Engine.Socket); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "configuration ok: node %s, gossip %s, raft %s, api %s\n", c.Node.Name, c.Cluster.Bind, c.Cluster.RaftBind, c.API.Bind)
			return nil
		},
	})
	return cmd
}
