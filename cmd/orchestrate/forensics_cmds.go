package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/forensics"
	"github.com/edgemigrate/orchestrate/engine/archive"
)

func newCheckpointCmd() *cobra.Command {
	var f clientFlags
	var req forensics.CheckpointRequest
	var output string
	var keep int
	var maxAge time.Duration
	var asJSON bool
	f.output = "table"
	cmd := &cobra.Command{
		Use:   "checkpoint CONTAINER (--output FILE | --store)",
		Short: "Take a forensic snapshot of a container: to a local file or into the snapshot store",
		Long: `Take a consistent snapshot (a Podman checkpoint archive) of a container.

With --leave-running the container keeps running after a brief freeze; the
freeze (CRIU's frozen time) and the wall time of the checkpoint are reported.
Without it the checkpoint stops the container and keeps its checkpoint on its
host, where 'podman container restore NAME' resumes it. A snapshot that fails
leaves the container running.

--output FILE writes the archive here ("-": to stdout), streamed from the
container's host through the agents' API; FILE appears only once the whole
archive arrived and matched the sha256 the host computed.

--store keeps it in the cluster's snapshot store, under node.data_dir/snapshots
of --store-host (default: the agent's forensics.store_host, else the
container's own host), recorded in the replicated state. The store host keeps
at most forensics.retention.count snapshots of at most
forensics.retention.max_age (10, 168h); --keep and --max-age override them.
List them with 'orchestrate snapshots', read them with 'orchestrate inspect'.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if (output == "") == !req.Store {
				return usageError{errors.New("give exactly one of --output FILE and --store")}
			}
			if req.StoreHost != "" && !req.Store {
				return usageError{errors.New("--store-host needs --store")}
			}
			if asJSON {
				f.output = "json"
			}
			cl, err := f.client()
			if err != nil {
				return err
			}
			req.Container = a[0]
			if keep != 0 || maxAge != 0 {
				req.Retention = &forensics.Retention{Count: keep, MaxAge: maxAge}
			}
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			if req.Store {
				if req.Reason == "" {
					req.Reason = "operator"
				}
				rec, err := forensics.StoreCheckpoint(ctx, cl, req)
				if err != nil {
					return err
				}
				if f.output == "json" {
					return printJSON(out, rec)
				}
				fmt.Fprintf(out, "snapshot %s of %s on %s stored on %s: %s, sha256 %s\n", rec.ID, rec.Name, rec.Host, rec.StoreHost, bytesHuman(rec.Size), rec.SHA256)
				printFreeze(out, rec.LeaveRunning, rec.FrozenTime, rec.WallTime)
				return nil
			}
			stream := func(w io.Writer) (forensics.CheckpointResult, error) {
				return forensics.StreamCheckpoint(ctx, cl, req, w)
			}
			var res forensics.CheckpointResult
			if output == "-" {
				// The archive goes to stdout; what is said about it, to stderr.
				res, err = stream(out)
				out = cmd.ErrOrStderr()
			} else {
				res, err = writeArchive(output, stream)
			}
			if err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(out, struct {
					forensics.CheckpointResult
					File string `json:"file"`
				}{res, output})
			}
			fmt.Fprintf(out, "checkpoint of %s on %s written to %s: %s, sha256 %s\n", res.Name, res.Host, output, bytesHuman(res.Size), res.SHA256)
			printFreeze(out, res.LeaveRunning, res.Stats.FrozenTime, res.Stats.Duration)
			return nil
		},
	}
	// --output is the archive's path here, as podman's --export is; the
	// agent flags are the usual ones, and --json replaces "-o json".
	fl := cmd.Flags()
	fl.StringVar(&f.agent, "agent", "", "agent: a unix socket path or https://host:port (env ORCHESTRATE_AGENT; default "+cluster.DefaultSocket+")")
	fl.StringVar(&f.secretFile, "secret-file", "", "cluster secret, for https agents (env ORCHESTRATE_SECRET_FILE; else the config file's)")
	fl.StringVarP(&f.configFile, "config", "c", "", "agent config file, for its socket and secret")
	fl.BoolVar(&asJSON, "json", false, "print the result as JSON")
	fl.StringVar(&req.Host, "host", "", "the host the container runs on (default: ask every host)")
	fl.BoolVar(&req.LeaveRunning, "leave-running", false, "keep the container running after a brief freeze")
	fl.StringVar(&output, "output", "", "write the archive to this file (\"-\": stdout)")
	fl.BoolVar(&req.Store, "store", false, "keep the archive in the cluster's snapshot store")
	fl.StringVar(&req.StoreHost, "store-host", "", "the store host (default: forensics.store_host, else the container's host)")
	fl.StringVar(&req.Reason, "reason", "", "why, recorded with a stored snapshot")
	fl.IntVar(&keep, "keep", 0, "store retention: keep this many snapshots on the store host (default: its forensics.retention.count)")
	fl.DurationVar(&maxAge, "max-age", 0, "store retention: drop snapshots older than this (default: its forensics.retention.max_age)")
	return cmd
}

// writeArchive writes a streamed archive to path.partial and renames it
// once the stream is known to be whole; on error no file is left.
func writeArchive(path string, stream func(io.Writer) (forensics.CheckpointResult, error)) (forensics.CheckpointResult, error) {
	partial := path + ".partial"
	f, err := os.OpenFile(partial, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return forensics.CheckpointResult{}, err
	}
	res, err := stream(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(partial, path)
	}
	if err != nil {
		os.Remove(partial)
		return res, err
	}
	return res, nil
}

func printFreeze(w io.Writer, leaveRunning bool, frozen, wall time.Duration) {
	state := "stopped (checkpointed)"
	if leaveRunning {
		state = "left running"
	}
	fmt.Fprintf(w, "container %s: frozen %s (CRIU), checkpoint wall time %s\n", state, frozen.Round(time.Microsecond), wall.Round(time.Millisecond))
}

func newSnapshotsCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "snapshots",
		Short: "List the snapshots in the cluster's snapshot store",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := f.client()
			if err != nil {
				return err
			}
			recs, err := forensics.Snapshots(cmd.Context(), cl)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if f.output == "json" {
				if recs == nil {
					recs = []cluster.SnapshotRecord{}
				}
				return printJSON(out, recs)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tCONTAINER\tHOST\tSTORED ON\tTAKEN\tSIZE\tFROZEN\tREASON")
			for _, s := range recs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, firstNonEmpty(s.Name, shortID(s.Container)), s.Host, s.StoreHost,
					s.At.Local().Format(time.DateTime), bytesHuman(s.Size), s.FrozenTime.Round(time.Microsecond), s.Reason)
			}
			return tw.Flush()
		},
	}
	f.add(cmd)
	cmd.AddCommand(newSnapshotsRmCmd())
	return cmd
}

func newSnapshotsRmCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "rm SNAPSHOT-ID...",
		Short: "Remove snapshots from the store: their records, then their files",
		Args:  args(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			cl, err := f.client()
			if err != nil {
				return err
			}
			var failed []string
			for _, id := range a {
				if err := forensics.RemoveSnapshot(cmd.Context(), cl, id); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: %v\n", id, err)
					failed = append(failed, id)
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", id)
			}
			if len(failed) > 0 {
				return fmt.Errorf("%d snapshot(s) not removed: %s", len(failed), strings.Join(failed, ", "))
			}
			return nil
		},
	}
	f.add(cmd)
	return cmd
}

// inspectJSON is `inspect -o json`: the report, and the memory matches
// when --grep was given.
type inspectJSON struct {
	*archive.Report
	Snapshot *cluster.SnapshotRecord `json:"snapshot,omitempty"`
	Matches  []archive.Match         `json:"matches,omitempty"`
}

func newInspectCmd() *cobra.Command {
	var f clientFlags
	var grep string
	var isRegexp, mappings bool
	cmd := &cobra.Command{
		Use:   "inspect ARCHIVE|SNAPSHOT-ID",
		Short: "Look inside a checkpoint archive offline: processes, memory, files, sockets",
		Long: `Read a Podman checkpoint archive offline (no Podman, no CRIU): the
container's metadata, the process tree, each process's open files, sockets
and (with --mappings) memory mappings, and the rootfs diff. --grep searches
the processes' dumped memory for a string (--regexp: a regular expression).

The argument is an archive file, or the ID of a snapshot in the cluster's
snapshot store ('orchestrate snapshots'), which is fetched from its store
host through the agent into a temporary file first.

A corrupted or truncated archive is an error (exit 1) naming what is wrong.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) (err error) {
			if f.output != "table" && f.output != "json" {
				return usageError{fmt.Errorf("--output %q: expected table or json", f.output)}
			}
			var re *regexp.Regexp
			if grep != "" && isRegexp {
				if re, err = regexp.Compile(grep); err != nil {
					return usageError{fmt.Errorf("--grep: %w", err)}
				}
			}
			// The archive reader promises errors, not panics, on bad input;
			// should it ever break that promise, say so and exit 1.
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("%w: reading %s failed: %v", archive.ErrCorrupt, a[0], r)
				}
			}()
			path := a[0]
			var rec *cluster.SnapshotRecord
			if _, serr := os.Stat(path); serr != nil {
				if !strings.HasPrefix(path, "snap-") || strings.ContainsRune(path, filepath.Separator) {
					return fmt.Errorf("inspect: %w", serr)
				}
				cl, err := f.client()
				if err != nil {
					return err
				}
				tmp, err := os.CreateTemp("", "orchestrate-inspect-*.tar")
				if err != nil {
					return err
				}
				defer os.Remove(tmp.Name())
				r, err := forensics.FetchSnapshot(cmd.Context(), cl, path, tmp)
				if cerr := tmp.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return err
				}
				rec, path = &r, tmp.Name()
			}
			ar, err := archive.Open(path, archive.DefaultConfig())
			if err != nil {
				return err
			}
			defer ar.Close()
			var matches []archive.Match
			if grep != "" {
				if re != nil {
					matches, err = ar.GrepRegexp(re)
				} else {
					matches, err = ar.Grep(grep)
				}
				if err != nil && !errors.Is(err, archive.ErrMatchLimit) {
					return err
				}
			}
			out := cmd.OutOrStdout()
			if f.output == "json" {
				return printJSON(out, inspectJSON{Report: ar.Report(), Snapshot: rec, Matches: matches})
			}
			if rec != nil {
				fmt.Fprintf(out, "snapshot %s: %s on %s at %s (%s), stored on %s\n", rec.ID, rec.Name, rec.Host,
					rec.At.Local().Format(time.DateTime), firstNonEmpty(rec.Reason, "no reason given"), rec.StoreHost)
			}
			opts := archive.RenderOptions{Files: true, Sockets: true, Diff: true, Mappings: mappings}
			if err := archive.RenderWith(out, ar.Report(), opts); err != nil {
				return err
			}
			if grep != "" {
				fmt.Fprintf(out, "\nMemory matches for %q: %d\n", grep, len(matches))
				if err := archive.RenderMatches(out, matches); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().StringVar(&grep, "grep", "", "search the dumped memory for this string")
	cmd.Flags().BoolVar(&isRegexp, "regexp", false, "--grep is a regular expression (RE2)")
	cmd.Flags().BoolVar(&mappings, "mappings", false, "list every memory mapping")
	return cmd
}
