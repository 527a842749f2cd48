package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/config"
)

// newMetricsTokenCmd prints the read-only scrape credential derived from
// the cluster secret (cluster.MetricsToken).
func newMetricsTokenCmd() *cobra.Command {
	var secretFile, configFile, caFile string
	cmd := &cobra.Command{
		Use:   "metrics-token [--secret-file FILE | -c CONFIG] [--ca-file OUT]",
		Short: "Print the read-only token Prometheus scrapes /metrics with",
		Long: `Print the metrics token derived from the cluster secret. The agents accept
it as a bearer token for GET /metrics and for nothing else: give it to
Prometheus instead of the API token, which can drain hosts and start
containers. Every agent with the same secret accepts the same token; rotating
the secret rotates it.

--ca-file writes the certificate of the cluster's TLS CA (public, derived
from the secret): Prometheus verifies the agents with it, for the server name
"orchestrate" (tls_config: ca_file, server_name). See docs/operations.md.

The secret is read from --secret-file, $ORCHESTRATE_SECRET_FILE, or the
config file's cluster.secret_file.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := firstNonEmpty(secretFile, os.Getenv("ORCHESTRATE_SECRET_FILE"))
			if path == "" && configFile != "" {
				c, err := config.Load(configFile, nil)
				if err != nil && !errors.Is(err, config.ErrInvalid) || c.Cluster.SecretFile == "" {
					if err == nil {
						err = fmt.Errorf("%w: %s sets no cluster.secret_file", config.ErrInvalid, configFile)
					}
					return err
				}
				path = c.Cluster.SecretFile
			}
			if path == "" {
				return usageError{errors.New("name the cluster secret: --secret-file FILE, $ORCHESTRATE_SECRET_FILE or -c CONFIG")}
			}
			secret, err := cluster.LoadSecret(path)
			if err != nil {
				return err
			}
			if caFile != "" {
				pem, err := cluster.CACertificatePEM(secret)
				if err != nil {
					return err
				}
				if err := os.WriteFile(caFile, pem, 0o644); err != nil {
					return fmt.Errorf("write the CA certificate: %w", err)
				}
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), cluster.MetricsToken(secret))
			return err
		},
	}
	cmd.Flags().StringVar(&secretFile, "secret-file", "", "cluster secret (env ORCHESTRATE_SECRET_FILE; else the config file's)")
	cmd.Flags().StringVarP(&configFile, "config", "c", "", "agent config file, for its cluster.secret_file")
	cmd.Flags().StringVar(&caFile, "ca-file", "", "also write the cluster CA's certificate (PEM) here, for the scraper's tls_config")
	return cmd
}
