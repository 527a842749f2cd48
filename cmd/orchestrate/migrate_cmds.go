package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/migrate"
)

// migrationJSON is the `migrations -o json` shape (a documented contract).
type migrationJSON struct {
	ID          string    `json:"id"`
	Container   string    `json:"container"`
	Name        string    `json:"name,omitempty"`
	From        string    `json:"from"`
	To          string    `json:"to"`
	Phase       string    `json:"phase"`
	Started     time.Time `json:"started"`
	Finished    time.Time `json:"finished"`
	DowntimeMS  int64     `json:"downtime_ms"`
	Bytes       int64     `json:"bytes"`
	Compression string    `json:"compression,omitempty"`
	Method      string    `json:"method,omitempty"` // direct, precopy-content, full-after-precopy
	BytesSaved  int64     `json:"bytes_saved,omitempty"`
	Error       string    `json:"error"`
}

func toJSON(m cluster.MigrationRecord) migrationJSON {
	var saved int64
	if m.Precopy != nil {
		saved = m.Precopy.BytesSaved
	}
	return migrationJSON{ID: m.ID, Container: m.Container, Name: m.Name, From: m.From, To: m.To, Phase: m.Phase,
		Started: m.StartedAt, Finished: m.FinishedAt, DowntimeMS: m.Downtime.Milliseconds(), Bytes: m.Bytes,
		Compression: m.Compression, Method: methodOf(m), BytesSaved: saved, Error: m.Error}
}

// methodOf is the transfer method that ran, as the built-in methods' variant
// (direct, precopy-content, full-after-precopy; pages,
// precopy-content+pages, pages-after-precopy).
func methodOf(m cluster.MigrationRecord) string {
	if m.Precopy != nil && m.Precopy.Method != "" && (m.Method == "" || m.Method == migrate.MethodDirect || m.Method == migrate.MethodPages) {
		return m.Precopy.Method
	}
	return m.Method
}

func recName(m cluster.MigrationRecord) string {
	if m.Name != "" {
		return m.Name
	}
	return shortID(m.Container)
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// progress prints migrations as they move: one rewritten line per poll on a
// terminal, a plain line per phase change elsewhere.
type progress struct {
	w     io.Writer
	tty   bool
	seen  map[string]string
	start time.Time
}

func newProgress(w io.Writer) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	return &progress{w: w, tty: tty, seen: map[string]string{}, start: time.Now()}
}

func (p *progress) update(recs []cluster.MigrationRecord) {
	if p.tty {
		var parts []string
		for _, m := range recs {
			s := fmt.Sprintf("%s %s", recName(m), m.Phase)
			if m.Bytes > 0 {
				s += " " + bytesHuman(m.Bytes)
			}
			parts = append(parts, s)
		}
		line := fmt.Sprintf("[%5.1fs] %s", time.Since(p.start).Seconds(), strings.Join(parts, " | "))
		if w, _, err := term.GetSize(int(os.Stdout.Fd())); err == nil && len(line) > w-1 && w > 4 {
			line = line[:w-4] + "..."
		}
		fmt.Fprintf(p.w, "\r\033[K%s", line)
		return
	}
	for _, m := range recs {
		if m.From == "" || p.seen[m.ID] == m.Phase {
			continue // not replicated here yet, or nothing new
		}
		p.seen[m.ID] = m.Phase
		extra := ""
		if m.Bytes > 0 {
			extra = " " + bytesHuman(m.Bytes)
			if d := m.Checkpoint.Duration; d > 0 {
				extra += fmt.Sprintf(" (%.0f MB/s)", float64(m.Bytes)/d.Seconds()/1e6)
			}
		}
		fmt.Fprintf(p.w, "%s %s -> %s: %s%s\n", recName(m), m.From, m.To, m.Phase, extra)
	}
}

func (p *progress) done() {
	if p.tty {
		fmt.Fprintln(p.w)
	}
}

// printResults prints the final table and returns an error naming the
// migrations that did not finish Done.
func printResults(w io.Writer, recs []cluster.MigrationRecord, skipped []migrate.DrainMove) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONTAINER\tFROM\tTO\tRESULT\tDOWNTIME\tBYTES\tDETAIL")
	var failed []string
	for _, m := range recs {
		detail := m.Error
		if m.Phase == migrate.Done {
			detail = m.Compression
		} else {
			failed = append(failed, recName(m))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", recName(m), m.From, m.To, m.Phase,
			m.Downtime.Round(time.Millisecond), bytesHuman(m.Bytes), detail)
	}
	for _, s := range skipped {
		fmt.Fprintf(tw, "%s\t\t\tskipped\t\t\t%s\n", s.Name, s.Skipped)
		if !strings.HasPrefix(s.Skipped, "orchestrate.migrate=false") {
			failed = append(failed, s.Name)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d container(s) did not move and still run on the source: %s", len(failed), strings.Join(failed, ", "))
	}
	return nil
}

func newMigrateCmd() *cobra.Command {
	var f clientFlags
	var to, method string
	var noWait bool
	cmd := &cobra.Command{
		Use:   "migrate CONTAINER",
		Short: "Live-migrate a running container to another host",
		Long: `Live-migrate a running container: it is checkpointed on its host, streamed to
the target and restored there with its memory. Without --to the leader picks
the target. On any failure before the target confirms, the container is
resumed on its source. Exit 0 when it moved, 1 when it did not.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			cl, err := f.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			var rec cluster.MigrationRecord
			if err := cl.Do(ctx, http.MethodPost, "/v1/migrate", migrate.MigrateRequest{Container: a[0], To: to, Method: method}, &rec); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if noWait {
				if f.output == "json" {
					return printJSON(out, toJSON(rec))
				}
				fmt.Fprintf(out, "migration %s: %s %s -> %s\n", rec.ID, a[0], rec.From, rec.To)
				return nil
			}
			var p *progress
			if f.output != "json" {
				p = newProgress(cmd.OutOrStderr())
			}
			recs, err := migrate.Wait(ctx, cl, []string{rec.ID}, 200*time.Millisecond, func(r []cluster.MigrationRecord) {
				if p != nil {
					p.update(r)
				}
			})
			if p != nil {
				p.done()
			}
			if err != nil {
				return err
			}
			if f.output == "json" {
				if err := printJSON(out, toJSON(recs[0])); err != nil {
					return err
				}
				if recs[0].Phase != migrate.Done {
					return fmt.Errorf("%s did not move: %s", a[0], recs[0].Error)
				}
				return nil
			}
			return printResults(out, recs, nil)
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "target host (default: the leader's choice)")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the migration is recorded")
	cmd.Flags().StringVar(&method, "method", "", "transfer method: "+migrate.MethodPages+" (memory pages cross while CRIU dumps; never falls back) or "+
		migrate.MethodDirect+" (Podman's export and import); default: the source's, "+migrate.MethodPages+" where it can run, else "+migrate.MethodDirect+" (both judge pre-copy)")
	f.add(cmd)
	return cmd
}

func newDrainCmd() *cobra.Command {
	var f clientFlags
	var req migrate.DrainRequest
	cmd := &cobra.Command{
		Use:   "drain HOST",
		Short: "Cordon a host and live-migrate every container off it",
		Long: `Drain cordons HOST (nothing new lands on it) and live-migrates every running
container elsewhere, --parallel at a time, starting none after --deadline.
Containers labelled orchestrate.migrate=false stay and are reported as
skipped. Exit 0 when everything that should move moved; 1 otherwise, and
those containers still run on HOST.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			cl, err := f.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			req.Host = a[0]
			var res migrate.DrainResult
			if err := cl.Do(ctx, http.MethodPost, "/v1/drain", req, &res); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			var ids []string
			var skipped []migrate.DrainMove
			for _, m := range res.Moves {
				if m.Migration != "" {
					ids = append(ids, m.Migration)
				} else if m.Skipped != "" {
					skipped = append(skipped, m)
				}
			}
			if req.DryRun {
				if f.output == "json" {
					return printJSON(out, res)
				}
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintf(tw, "drain %s (dry run, %d at a time):\nCONTAINER\tTO\tNOTE\n", res.Host, res.Parallel)
				for _, m := range res.Moves {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", m.Name, m.To, m.Skipped)
				}
				return tw.Flush()
			}
			var p *progress
			if f.output != "json" {
				p = newProgress(cmd.OutOrStderr())
				fmt.Fprintf(cmd.OutOrStderr(), "draining %s: %d to move, %d staying, %d at a time\n", res.Host, len(ids), len(skipped), res.Parallel)
			}
			recs, err := migrate.Wait(ctx, cl, ids, 250*time.Millisecond, func(r []cluster.MigrationRecord) {
				if p != nil {
					p.update(r)
				}
			})
			if p != nil {
				p.done()
			}
			if err != nil {
				return err
			}
			if f.output == "json" {
				rows := make([]migrationJSON, 0, len(recs))
				for _, m := range recs {
					rows = append(rows, toJSON(m))
				}
				if err := printJSON(out, map[string]any{"host": res.Host, "migrations": rows, "skipped": skipped}); err != nil {
					return err
				}
				return drainErr(recs, skipped)
			}
			return printResults(out, recs, skipped)
		},
	}
	cmd.Flags().DurationVar(&req.Deadline, "deadline", 5*time.Minute, "start no migration after this long")
	cmd.Flags().IntVar(&req.Parallel, "parallel", 2, "migrations at a time")
	cmd.Flags().BoolVar(&req.DryRun, "dry-run", false, "show the plan, move nothing, cordon nothing")
	f.add(cmd)
	return cmd
}

// get reads one API resource into out, with a timeout.
func (f *clientFlags) get(cmd *cobra.Command, path string, out any) error {
	cl, err := f.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
	defer cancel()
	return cl.Do(ctx, http.MethodGet, path, nil, out)
}

func drainErr(recs []cluster.MigrationRecord, skipped []migrate.DrainMove) error {
	return printResults(io.Discard, recs, skipped)
}

func newCordonCmd(on bool) *cobra.Command {
	var f clientFlags
	use, short, path := "cordon HOST", "Mark a host unschedulable: nothing migrates onto it", "/v1/cordon"
	if !on {
		use, short, path = "uncordon HOST", "Make a cordoned host schedulable again", "/v1/uncordon"
	}
	cmd := &cobra.Command{
		Use: use, Short: short, Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			cl, err := f.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			var h cluster.Host
			if err := cl.Do(ctx, http.MethodPost, path, migrate.HostRequest{Host: a[0]}, &h); err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(cmd.OutOrStdout(), h)
			}
			state := "cordoned"
			if !on {
				state = "uncordoned"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", a[0], state)
			return nil
		},
	}
	f.add(cmd)
	return cmd
}

func newMigrationsCmd() *cobra.Command {
	var f clientFlags
	var pg pageFlags
	cmd := &cobra.Command{
		Use:   "migrations",
		Short: "List migrations with their phase, downtime, bytes and error (the newest 100; see --limit, --since)",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var recs []cluster.MigrationRecord
			if err := pg.read(cmd, &f, "/v1/migrations", &recs); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if f.output == "json" {
				rows := make([]migrationJSON, 0, len(recs))
				for _, m := range recs {
					rows = append(rows, toJSON(m))
				}
				return printJSON(out, rows)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tCONTAINER\tFROM\tTO\tPHASE\tSTARTED\tDOWNTIME\tBYTES\tMETHOD\tERROR")
			for _, m := range recs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, recName(m), m.From, m.To, m.Phase,
					m.StartedAt.Local().Format("15:04:05"), m.Downtime.Round(time.Millisecond), bytesHuman(m.Bytes), methodOf(m), m.Error)
			}
			return tw.Flush()
		},
	}
	f.add(cmd)
	pg.add(cmd, "migrations")
	return cmd
}

// eventJSON is the `events -o json` shape.
type eventJSON struct {
	Time    time.Time `json:"time"`
	Host    string    `json:"host"`
	Kind    string    `json:"kind"`
	ID      string    `json:"id"`
	Action  string    `json:"action"`
	Result  string    `json:"result"`
	Message string    `json:"message,omitempty"`
}

func newEventsCmd() *cobra.Command {
	var f clientFlags
	var pg pageFlags
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Show policy triggers and the actions taken (the replicated event log; the newest 100, see --limit, --since)",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var evs []cluster.Event
			if err := pg.read(cmd, &f, "/v1/events", &evs); err != nil {
				return err
			}
			rows := make([]eventJSON, 0, len(evs))
			for _, e := range evs {
				action, result := e.Data["action"], e.Data["result"]
				if action == "" {
					action = e.Message
				}
				rows = append(rows, eventJSON{Time: e.At, Host: e.Host, Kind: e.Kind, ID: e.ID, Action: action, Result: result, Message: e.Message})
			}
			out := cmd.OutOrStdout()
			if f.output == "json" {
				return printJSON(out, rows)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tHOST\tKIND\tID\tACTION\tRESULT")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Time.Local().Format("2006-01-02 15:04:05"), r.Host, r.Kind, shortID(r.ID), r.Action, r.Result)
			}
			return tw.Flush()
		},
	}
	f.add(cmd)
	pg.add(cmd, "events")
	return cmd
}

func newRebalanceCmd() *cobra.Command {
	var f clientFlags
	var req migrate.RebalanceRequest
	cmd := &cobra.Command{
		Use:   "rebalance",
		Short: "Move containers so hosts' memory use evens out (policy.rebalance.threshold, max_moves)",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := f.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			var res migrate.RebalanceResult
			if err := cl.Do(ctx, http.MethodPost, "/v1/rebalance", req, &res); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if f.output == "json" && req.DryRun {
				return printJSON(out, res)
			}
			var ids []string
			if f.output != "json" {
				fmt.Fprintf(out, "memory spread %.2f -> %.2f planned, %d move(s)\n", res.SpreadBefore, res.SpreadAfter, len(res.Moves))
				for _, m := range res.Moves {
					fmt.Fprintf(out, "  %s -> %s %s\n", m.Name, m.To, m.Skipped)
				}
			}
			for _, m := range res.Moves {
				if m.Migration != "" {
					ids = append(ids, m.Migration)
				}
			}
			if req.DryRun || len(ids) == 0 {
				return nil
			}
			recs, err := migrate.Wait(ctx, cl, ids, 250*time.Millisecond, nil)
			if err != nil {
				return err
			}
			if f.output == "json" {
				rows := make([]migrationJSON, 0, len(recs))
				for _, m := range recs {
					rows = append(rows, toJSON(m))
				}
				if err := printJSON(out, rows); err != nil {
					return err
				}
				return drainErr(recs, nil)
			}
			return printResults(out, recs, nil)
		},
	}
	cmd.Flags().BoolVar(&req.DryRun, "dry-run", false, "show the plan, move nothing")
	f.add(cmd)
	return cmd
}
