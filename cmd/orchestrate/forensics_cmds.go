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
	var asJSON, tlsVerify bool
	f.output = "table"
	cmd := &cobra.Command{
		Use:   "checkpoint CONTAINER (--output FILE | --store | --image NAME [--output FILE])",
		Short: "Take a forensic snapshot of a container: to a local file, into the snapshot store, or as a checkpoint image",
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
List them with 'orchestrate snapshots', read them with 'orchestrate inspect'.

--image NAME builds a checkpoint image, as 'podman container checkpoint
--create-image' does: an OCI image whose one layer holds the archive, with
Podman's checkpoint annotations. It is loaded into the Podman of the
container's host, and pushed when a registry is configured there
(forensics.image_registry) or given with --registry: the image is then named
REGISTRY/NAME. Plain Podman restores it anywhere with 'podman container
restore NAME' (after 'podman pull', or 'podman save --format oci-archive' and
'podman load': the default docker-archive format drops the annotations).
TLS is verified unless --tls-verify=false (or
forensics.image_registry_tls_verify: false), which also allows plain HTTP: for
a local test registry only. With --output FILE the image is written there as
an OCI archive ('podman load -i FILE') instead, and neither loaded nor pushed.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			switch {
			case req.Image != "" && req.Store:
				return usageError{errors.New("--image and --store exclude each other")}
			case req.Image != "" && output != "" && req.Registry != "":
				return usageError{errors.New("--registry pushes a loaded image; with --output the image is only written")}
			case req.Image == "" && (output == "") == !req.Store:
				return usageError{errors.New("give exactly one of --output FILE, --store and --image NAME")}
			case req.Image == "" && (req.Registry != "" || cmd.Flags().Changed("tls-verify")):
				return usageError{errors.New("--registry and --tls-verify need --image")}
			}
			if req.StoreHost != "" && !req.Store {
				return usageError{errors.New("--store-host needs --store")}
			}
			if cmd.Flags().Changed("tls-verify") {
				req.TLSVerify = &tlsVerify
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
			switch {
			case req.Image != "" && output == "":
				res, err := forensics.BuildImage(ctx, cl, req)
				if err != nil {
					return err
				}
				if f.output == "json" {
					return printJSON(out, res)
				}
				where := "loaded into Podman on " + res.Host
				if res.Pushed {
					where += " and pushed"
				}
				fmt.Fprintf(out, "checkpoint image %s of %s: %s (image ID %.12s, checkpoint %s)\n", res.Image, res.Name, where, res.ImageID, bytesHuman(res.LayerSize))
				printFreeze(out, res.LeaveRunning, res.Stats.FrozenTime, res.Stats.Duration)
				return nil
			case req.Image != "":
				var res forensics.ImageResult
				res, out, err = receiveArchive(output, out, cmd.ErrOrStderr(), func(w io.Writer) (forensics.ImageResult, error) {
					return forensics.StreamImage(ctx, cl, req, w)
				})
				if err != nil {
					return err
				}
				if f.output == "json" {
					return printJSON(out, struct {
						forensics.ImageResult
						File string `json:"file"`
					}{res, output})
				}
				fmt.Fprintf(out, "checkpoint image %s of %s on %s written to %s as an OCI archive: %s, sha256 %s\n", res.Image, res.Name, res.Host, output, bytesHuman(res.Size), res.SHA256)
				printFreeze(out, res.LeaveRunning, res.Stats.FrozenTime, res.Stats.Duration)
				return nil
			case req.Store:
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
			var res forensics.CheckpointResult
			res, out, err = receiveArchive(output, out, cmd.ErrOrStderr(), func(w io.Writer) (forensics.CheckpointResult, error) {
				return forensics.StreamCheckpoint(ctx, cl, req, w)
			})
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
	fl.StringVar(&output, "output", "", "write the archive (with --image: the image as an OCI archive) to this file (\"-\": stdout)")
	fl.BoolVar(&req.Store, "store", false, "keep the archive in the cluster's snapshot store")
	fl.StringVar(&req.StoreHost, "store-host", "", "the store host (default: forensics.store_host, else the container's host)")
	fl.StringVar(&req.Reason, "reason", "", "why, recorded with a stored snapshot")
	fl.IntVar(&keep, "keep", 0, "store retention: keep this many snapshots on the store host (default: its forensics.retention.count)")
	fl.DurationVar(&maxAge, "max-age", 0, "store retention: drop snapshots older than this (default: its forensics.retention.max_age)")
	fl.StringVar(&req.Image, "image", "", "build a checkpoint image by this name, loaded into Podman on the container's host")
	fl.StringVar(&req.Registry, "registry", "", "push the image to this registry, host[:port][/path] (default: the host's forensics.image_registry)")
	fl.BoolVar(&tlsVerify, "tls-verify", true, "verify the registry's TLS certificate; false also allows plain HTTP (a local test registry only; default: the host's forensics.image_registry_tls_verify)")
	return cmd
}

// writeArchive writes a streamed archive to path.partial and renames it
// once the stream is known to be whole; on error no file is left.
// receiveArchive runs stream into the file path, or into stdout when path
// is "-"; it returns the writer for what is said about the archive: out,
// or stderr when the archive itself went to stdout.
func receiveArchive[R any](path string, stdout, stderr io.Writer, stream func(io.Writer) (R, error)) (R, io.Writer, error) {
	if path == "-" {
		res, err := stream(stdout)
		return res, stderr, err
	}
	res, err := writeArchive(path, stream)
	return res, stdout, err
}

func writeArchive[R any](path string, stream func(io.Writer) (R, error)) (R, error) {
	partial := path + ".partial"
	f, err := os.OpenFile(partial, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		var zero R
		return zero, err
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
	cmd.AddCommand(newSnapshotsRmCmd(), newSnapshotsGrepCmd())
	return cmd
}

func newSnapshotsGrepCmd() *cobra.Command {
	var f clientFlags
	var req forensics.GrepRequest
	cmd := &cobra.Command{
		Use:   "grep PATTERN",
		Short: "Search the memory of every stored snapshot, where each is stored",
		Long: `Search the dumped memory (private, shared and /dev/shm) of every snapshot in
the cluster's snapshot store. Each store host searches the archives it holds;
no archive moves. Matches come back tagged with the snapshot, the host the
container ran on, the host that stores it, and the process. --regexp makes
PATTERN a regular expression (RE2); --max-matches bounds the matches per
snapshot, and a snapshot whose search stopped there is named.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			cl, err := f.client()
			if err != nil {
				return err
			}
			req.Pattern = a[0]
			res, err := forensics.GrepSnapshots(cmd.Context(), cl, req)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if f.output == "json" {
				return printJSON(out, res)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SNAPSHOT\tCONTAINER\tHOST\tSTORED ON\tMATCH")
			for _, m := range res.Matches {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.Snapshot, m.Container, m.Host, m.StoreHost, archive.MatchLine(m.Match))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(out, "%d matches in %d snapshots (%s of memory searched)\n", len(res.Matches), res.Searched, bytesHuman(res.Bytes))
			for _, id := range res.Truncated {
				fmt.Fprintf(out, "%s: stopped at --max-matches: there are more\n", id)
			}
			for id, e := range res.Errors {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", id, e)
			}
			for h, e := range res.HostErrors {
				fmt.Fprintf(cmd.ErrOrStderr(), "store host %s did not answer: %s\n", h, e)
			}
			if len(res.HostErrors) > 0 {
				return fmt.Errorf("%d store host(s) did not answer: their snapshots were not searched", len(res.HostErrors))
			}
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&req.Regexp, "regexp", false, "PATTERN is a regular expression (RE2)")
	cmd.Flags().IntVar(&req.MaxMatches, "max-matches", 1000, "stop each snapshot's search after this many matches")
	cmd.Flags().IntVar(&req.Context, "context", 24, "bytes of context either side of a match")
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
	// Truncated: the search stopped at --max-matches.
	Truncated bool `json:"matchesTruncated,omitempty"`
}

// inspectFlags are inspect's own flags.
type inspectFlags struct {
	grep       string
	isRegexp   bool
	mappings   bool
	pids       []uint
	context    int
	maxMatches int
	maxMemory  int64
	dumpPID    uint
	diff       bool
	coreDir    string
}

func (o *inspectFlags) config() archive.Config {
	cfg := archive.DefaultConfig()
	if o.maxMemory > 0 {
		cfg.MaxMemory = o.maxMemory << 20
	}
	if o.maxMatches > 0 {
		cfg.MaxMatches = o.maxMatches
	}
	return cfg
}

func (o *inspectFlags) pidList() []uint32 {
	var out []uint32
	for _, p := range o.pids {
		out = append(out, uint32(p))
	}
	return out
}

func (o *inspectFlags) query() (archive.Query, error) {
	q := archive.Query{Pattern: o.grep, PIDs: o.pidList(), Context: o.context, MaxMatches: o.maxMatches}
	if o.context == 0 {
		q.Context = -1 // --context 0: none
	}
	if o.isRegexp {
		re, err := regexp.Compile(o.grep)
		if err != nil {
			return q, usageError{fmt.Errorf("--grep: %w", err)}
		}
		q.Regexp = re
	}
	return q, nil
}

func newInspectCmd() *cobra.Command {
	var f clientFlags
	var o inspectFlags
	cmd := &cobra.Command{
		Use:   "inspect ARCHIVE|SNAPSHOT-ID  |  inspect --diff A B",
		Short: "Look inside a checkpoint archive offline: processes, memory, files, sockets",
		Long: `Read a checkpoint archive offline (no engine, no CRIU): Podman's, orchestrate's
own Docker archives, and the kubelet's from CRI-O and containerd. It shows the
container's metadata, environment and mounts, the CRIU and kernel versions, the
process tree with each process's state, environment, open files, sockets of
every family with their queued bytes and (with --mappings) memory mappings,
and the rootfs diff. --pid limits the tree, the search and the dump to some
processes.

--grep searches the dumped memory for a string (--regexp: a regular
expression): each process's private memory, shared memory (MAP_SHARED,
memfd, SysV) and the files of /dev/shm and other tmpfs mounts. --context N
shows N bytes either side. The search stops at --max-matches and says so.

--dump-memory PID -o FILE writes that process's dumped memory to FILE, page
runs one after the other, and FILE.maps beside it: one line per run,
"START-END PERMS OFFSET NAME", where OFFSET is the run's place in FILE.

--core DIR writes DIR/core.PID for each process (or those of --pid): ELF core
files with every thread's registers, which gdb loads with the container's
executable: gdb BINARY DIR/core.PID, then info registers, bt.
Otherwise -o chooses the output format (table or json).

--diff A B compares two checkpoints of one container, A the older: processes,
open files, sockets, environment, rootfs changes, and memory page by page (pages
changed, added and removed in each mapping). With --grep it searches only the
pages of B that changed or appeared since A: what arrived between the two.

An argument is an archive file, or the ID of a snapshot in the cluster's
snapshot store ('orchestrate snapshots'), which is fetched from its store
host through the agent into a temporary file first.

The analysis holds at most --max-memory MiB (default 256) of the archive in
memory and refuses an archive that needs more: a decompression bomb is an
error, not an outage. A corrupted or truncated archive is an error (exit 1)
naming what is wrong.`,
		Args: args(func(cmd *cobra.Command, a []string) error {
			if o.diff {
				return cobra.ExactArgs(2)(cmd, a)
			}
			return cobra.ExactArgs(1)(cmd, a)
		}),
		RunE: func(cmd *cobra.Command, a []string) (err error) {
			if o.diff {
				return runDiff(cmd, &f, &o, a[0], a[1])
			}
			dumpFile := ""
			if o.dumpPID != 0 {
				if f.output == "table" || f.output == "json" || f.output == "" {
					return usageError{errors.New("--dump-memory PID needs -o FILE")}
				}
				dumpFile, f.output = f.output, "table"
			}
			if f.output != "table" && f.output != "json" {
				return usageError{fmt.Errorf("--output %q: expected table or json (or a file with --dump-memory)", f.output)}
			}
			var q archive.Query
			if o.grep != "" {
				if q, err = o.query(); err != nil {
					return err
				}
			}
			// The archive reader promises errors, not panics, on bad input;
			// should it ever break that promise, say so and exit 1.
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("%w: reading %s failed: %v", archive.ErrCorrupt, a[0], r)
				}
			}()
			ar, rec, cleanup, err := openArchive(cmd, &f, a[0], o.config())
			if err != nil {
				return err
			}
			defer cleanup()
			out := cmd.OutOrStdout()
			if dumpFile != "" {
				return dumpMemory(out, ar, uint32(o.dumpPID), dumpFile)
			}
			if o.coreDir != "" {
				if err := os.MkdirAll(o.coreDir, 0o700); err != nil {
					return err
				}
				paths, err := ar.WriteCores(o.coreDir, o.pidList())
				for _, p := range paths {
					fmt.Fprintf(out, "wrote %s\n", p)
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "load one with: gdb EXECUTABLE %s (the container's binary, unstripped for symbols)\n", filepath.Join(o.coreDir, "core.PID"))
				return nil
			}
			var res archive.SearchResult
			if o.grep != "" {
				if res, err = ar.Search(q); err != nil {
					return err
				}
			}
			if f.output == "json" {
				return printJSON(out, inspectJSON{Report: ar.Report(), Snapshot: rec, Matches: res.Matches, Truncated: res.Truncated})
			}
			if rec != nil {
				fmt.Fprintf(out, "snapshot %s: %s on %s at %s (%s), stored on %s\n", rec.ID, rec.Name, rec.Host,
					rec.At.Local().Format(time.DateTime), firstNonEmpty(rec.Reason, "no reason given"), rec.StoreHost)
			}
			opts := archive.RenderOptions{Files: true, Sockets: true, Diff: true, Env: true, Mounts: true, Mappings: o.mappings, PIDs: o.pidList()}
			if err := archive.RenderWith(out, ar.Report(), opts); err != nil {
				return err
			}
			if o.grep != "" {
				printMatches(out, o.grep, res)
			}
			return nil
		},
	}
	f.add(cmd)
	fl := cmd.Flags()
	fl.StringVar(&o.grep, "grep", "", "search the dumped memory for this string")
	fl.BoolVar(&o.isRegexp, "regexp", false, "--grep is a regular expression (RE2)")
	fl.BoolVar(&o.mappings, "mappings", false, "list every memory mapping")
	fl.UintSliceVar(&o.pids, "pid", nil, "only these processes (pids inside the container; repeat or comma-separate)")
	fl.IntVar(&o.context, "context", 24, "bytes of context either side of a memory match")
	fl.IntVar(&o.maxMatches, "max-matches", 1000, "stop the search after this many matches")
	fl.Int64Var(&o.maxMemory, "max-memory", 256, "MiB of the archive the analysis may hold in memory")
	fl.UintVar(&o.dumpPID, "dump-memory", 0, "write this process's memory to -o FILE, with FILE.maps beside it")
	fl.StringVar(&o.coreDir, "core", "", "write an ELF core file per process into this directory, for gdb")
	fl.BoolVar(&o.diff, "diff", false, "compare two checkpoints A B of one container (A the older)")
	return cmd
}

// diffJSON is `inspect --diff -o json`.
type diffJSON struct {
	*archive.Diff
	Matches   []archive.Match `json:"matches,omitempty"`
	Truncated bool            `json:"matchesTruncated,omitempty"`
}

func runDiff(cmd *cobra.Command, f *clientFlags, o *inspectFlags, pathA, pathB string) error {
	if f.output != "table" && f.output != "json" {
		return usageError{fmt.Errorf("--output %q: expected table or json", f.output)}
	}
	var q archive.Query
	var err error
	if o.grep != "" {
		if q, err = o.query(); err != nil {
			return err
		}
	}
	a, _, cleanA, err := openArchive(cmd, f, pathA, o.config())
	if err != nil {
		return err
	}
	defer cleanA()
	b, _, cleanB, err := openArchive(cmd, f, pathB, o.config())
	if err != nil {
		return err
	}
	defer cleanB()
	d, err := archive.Compare(a, b)
	if err != nil {
		return err
	}
	var res archive.SearchResult
	if o.grep != "" {
		q.Pages = d.ChangedPages
		if res, err = b.Search(q); err != nil {
			return err
		}
	}
	out := cmd.OutOrStdout()
	if f.output == "json" {
		return printJSON(out, diffJSON{Diff: d, Matches: res.Matches, Truncated: res.Truncated})
	}
	if err := archive.RenderDiff(out, d); err != nil {
		return err
	}
	if o.grep != "" {
		printMatches(out, o.grep+" (on pages changed since A)", res)
	}
	return nil
}

// openArchive opens an archive file, or fetches a stored snapshot by ID
// into a temporary file first. cleanup closes and removes what it made.
func openArchive(cmd *cobra.Command, f *clientFlags, arg string, cfg archive.Config) (*archive.Archive, *cluster.SnapshotRecord, func(), error) {
	path := arg
	var rec *cluster.SnapshotRecord
	var tmpName string
	cleanup := func() {
		if tmpName != "" {
			os.Remove(tmpName)
		}
	}
	if _, serr := os.Stat(path); serr != nil {
		if !strings.HasPrefix(path, "snap-") || strings.ContainsRune(path, filepath.Separator) {
			return nil, nil, cleanup, fmt.Errorf("inspect: %w", serr)
		}
		cl, err := f.client()
		if err != nil {
			return nil, nil, cleanup, err
		}
		tmp, err := os.CreateTemp("", "orchestrate-inspect-*.tar")
		if err != nil {
			return nil, nil, cleanup, err
		}
		tmpName = tmp.Name()
		r, err := forensics.FetchSnapshot(cmd.Context(), cl, path, tmp)
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, nil, cleanup, err
		}
		rec, path = &r, tmpName
	}
	ar, err := archive.Open(path, cfg)
	if err != nil {
		return nil, nil, cleanup, err
	}
	if rec != nil {
		ar.Report().Checkpoint.Host = firstNonEmpty(ar.Report().Checkpoint.Host, rec.Host)
	}
	return ar, rec, func() { ar.Close(); cleanup() }, nil
}

func printMatches(w io.Writer, pattern string, res archive.SearchResult) {
	fmt.Fprintf(w, "\nMemory matches for %q: %d\n", pattern, len(res.Matches))
	archive.RenderMatches(w, res.Matches)
	if res.Truncated {
		fmt.Fprintf(w, "(stopped at %d matches: there are more; raise --max-matches or narrow with --pid)\n", res.MaxMatches)
	}
}

// dumpMemory writes one process's memory to file and file.maps, each
// through a .partial that is renamed once complete.
func dumpMemory(out io.Writer, ar *archive.Archive, pid uint32, file string) error {
	mapsFile := file + ".maps"
	raw, err := os.OpenFile(file+".partial", os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(raw.Name())
	maps, err := os.OpenFile(mapsFile+".partial", os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		raw.Close()
		return err
	}
	defer os.Remove(maps.Name())
	n, err := ar.DumpMemory(pid, raw, maps)
	for _, c := range []*os.File{raw, maps} {
		if cerr := c.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = os.Rename(raw.Name(), file)
	}
	if err == nil {
		err = os.Rename(maps.Name(), mapsFile)
	}
	if err != nil {
		return fmt.Errorf("dump memory of pid %d: %w", pid, err)
	}
	fmt.Fprintf(out, "pid %d: %s of memory written to %s, its map to %s\n", pid, bytesHuman(n), file, mapsFile)
	return nil
}
