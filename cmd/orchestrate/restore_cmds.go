package main

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgemigrate/orchestrate/cluster/copies"
)

func newRestoreCmd() *cobra.Command {
	var f clientFlags
	var req copies.RestoreRequest
	tlsVerify := true
	cmd := &cobra.Command{
		Use:   "restore SNAPSHOT-ID|CHECKPOINT-ID|ARCHIVE|--image IMAGE [--host H] [--name N] [--count K]",
		Short: "Start copies from a snapshot, archive or checkpoint image, or retry a kept checkpoint",
		Long: `Restore starts copies of a container from a stored snapshot (orchestrate
snapshots) or from a checkpoint archive file (orchestrate checkpoint --output):
each copy gets a new name (--name, numbered with --count; default NAME-copy)
and a new identity (ID, and IP and MAC on bridge networks) and the same
memory. Without --host the leader's placement rules spread the copies over
fitting hosts. Clashes are refused before anything starts: a name in use, a
checkpoint holding established TCP connections (a copy cannot take them
over), two copies of a container on the host's network that listens, or one
next to its original.

With --image, the argument is a checkpoint image (orchestrate checkpoint
--image): on --host's Podman (default: the agent's own host), or pulled
from its registry there (--tls-verify=false for a local registry without
TLS). It must carry Podman's checkpoint annotations and a single layer,
whose digest is checked before any copy starts.

Given the ID of a checkpoint kept after a failed local restore (orchestrate
reboot --status, orchestrate events), restore retries it: the container
comes back as itself on the host that keeps it.

Exit 0 when everything started, 1 otherwise.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			cl, err := f.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			var res copies.RestoreResult
			if req.Image || !tlsVerify {
				if !req.Image {
					return usageError{errors.New("--tls-verify applies to --image only")}
				}
				req.TLSVerify = &tlsVerify
			}
			if fi, err := os.Stat(a[0]); err == nil && fi.Mode().IsRegular() && !req.Image {
				file, err := os.Open(a[0])
				if err != nil {
					return err
				}
				defer file.Close()
				q := url.Values{}
				if req.Host != "" {
					q.Set("host", req.Host)
				}
				if req.Name != "" {
					q.Set("name", req.Name)
				}
				q.Set("count", strconv.Itoa(req.Count))
				err = cl.Post(ctx, "/v1/restore/archive?"+q.Encode(), "application/x-tar", file, &res)
				if err != nil {
					return err
				}
			} else {
				req.Source = a[0]
				if err := cl.Do(ctx, http.MethodPost, "/v1/restore", req, &res); err != nil {
					return err
				}
			}
			out := cmd.OutOrStdout()
			if f.output == "json" {
				if err := printJSON(out, res); err != nil {
					return err
				}
			} else if res.Restored != nil {
				fmt.Fprintf(out, "%s restored on %s as %s (%s)\n", res.Source, res.Host, res.Restored.Name, shortID(res.Restored.ID))
			} else {
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "COPY\tHOST\tID\tSTARTED IN")
				for _, c := range res.Copies {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Name, c.Host, shortID(c.ID), c.Duration.Round(time.Millisecond))
				}
				_ = tw.Flush()
				for _, p := range res.Pushes {
					if p.Verified != "local" && p.Attempts > 0 {
						fmt.Fprintf(out, "sent %s to %s in %d attempt(s) (%s)\n", bytesHuman(p.Bytes), p.Host, p.Attempts, p.Verified)
					}
				}
			}
			if res.Error != "" {
				return fmt.Errorf("not every copy started: %s", res.Error)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&req.Host, "host", "", "start the copies on this host (default: placement decides)")
	cmd.Flags().StringVar(&req.Name, "name", "", "the copy's name; with --count, NAME-1..NAME-K (default: the original's name with -copy)")
	cmd.Flags().IntVar(&req.Count, "count", 1, "how many copies")
	cmd.Flags().BoolVar(&req.Image, "image", false, "the argument is a checkpoint image (orchestrate checkpoint --image)")
	cmd.Flags().BoolVar(&tlsVerify, "tls-verify", true, "with --image: verify the registry's TLS certificate when pulling")
	f.add(cmd)
	return cmd
}
