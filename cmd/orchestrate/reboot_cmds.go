package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgemigrate/orchestrate/cluster/migrate"
	"github.com/edgemigrate/orchestrate/cluster/reboot"
	"github.com/edgemigrate/orchestrate/policy"
)

func newRebootCmd() *cobra.Command {
	var f clientFlags
	var local, drain, auto, noWait, showStatus bool
	var req migrate.RebootRequest
	var command string
	cmd := &cobra.Command{
		Use:   "reboot [--local|--drain|--auto] [--dry-run] [--command CMD]",
		Short: "Reboot this host and keep its containers' state",
		Long: `Reboot this host, for a kernel upgrade, keeping its containers' state. The
command talks to the agent's local socket: an agent refuses a reboot asked
for over the cluster's TLS API (--dry-run and --status work from anywhere).

  --drain  live-migrate every movable container to other hosts first
  --local  checkpoint every movable container to this host's disk
           (node.data_dir/reboot), highest orchestrate.priority first; the
           agent restores them when it starts after the boot
  --auto   drain when other hosts have room for everything, else local

Without a flag, policy.reboot.mode decides. The sequence is the automatic
one (reboot lock, cordon, drain or save, reboot command), but it ignores the
maintenance window. Containers labelled orchestrate.migrate=false are left
to their engine. --dry-run shows the plan and changes nothing. --command
replaces policy.reboot.command for this reboot (only over the local socket).

The command returns once the reboot command ran (exit 0), or when the
sequence was called off (exit 1: the containers run here as before).
--status shows the host's sequence, its local save and the checkpoints kept
after failed restores (retry them with orchestrate restore ID).`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			n := 0
			for _, m := range []struct {
				on   bool
				mode policy.RebootMode
			}{{local, policy.RebootModeLocal}, {drain, policy.RebootModeDrain}, {auto, policy.RebootModeAuto}} {
				if m.on {
					n++
					req.Mode = m.mode
				}
			}
			if n > 1 {
				return usageError{errors.New("--local, --drain and --auto exclude each other")}
			}
			req.Command = strings.Fields(command)
			cl, err := f.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if showStatus {
				var st migrate.RebootStatus
				if err := cl.Do(ctx, http.MethodGet, "/v1/agent/reboot", nil, &st); err != nil {
					return err
				}
				if f.output == "json" {
					return printJSON(cmd.OutOrStdout(), st)
				}
				printRebootStatus(cmd.OutOrStdout(), st)
				return nil
			}
			var plan migrate.RebootPlan
			if err := cl.Do(ctx, http.MethodPost, "/v1/agent/reboot", req, &plan); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if f.output == "json" && (req.DryRun || noWait) {
				return printJSON(out, plan)
			}
			if f.output != "json" {
				printRebootPlan(out, plan)
			}
			if req.DryRun || noWait {
				return nil
			}
			// Follow the sequence until the reboot command runs, or the
			// sequence is called off.
			errOut := cmd.OutOrStderr()
			last := ""
			var st migrate.RebootStatus
			for {
				err := cl.Do(ctx, http.MethodGet, "/v1/agent/reboot", nil, &st)
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					if last == reboot.PhaseRebooting {
						fmt.Fprintln(errOut, "the agent went away: the host is going down")
						return nil
					}
					return err
				}
				seq := st.Sequence
				if seq != nil {
					line := seq.Phase
					if seq.Mode != "" {
						line += " (" + string(seq.Mode) + ")"
					}
					if seq.Stuck != "" {
						line += ": " + seq.Stuck
					}
					if line != last && f.output != "json" {
						fmt.Fprintf(errOut, "%s %s\n", time.Now().Format("15:04:05"), line)
					}
					last = line
					switch {
					case seq.Phase == reboot.PhaseRebooting || seq.Phase == reboot.PhaseBack:
						if f.output == "json" {
							return printJSON(out, st)
						}
						fmt.Fprintf(out, "reboot command run on %s: %s\n", st.Host, strings.Join(plan.Command, " "))
						return nil
					case seq.Phase == reboot.PhaseDone:
						if f.output == "json" {
							_ = printJSON(out, st)
						}
						return fmt.Errorf("%s did not reboot: %s", st.Host, seq.Outcome)
					}
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(500 * time.Millisecond):
				}
			}
		},
	}
	cmd.Flags().BoolVar(&local, "local", false, "checkpoint containers to this host's disk and restore them after the boot")
	cmd.Flags().BoolVar(&drain, "drain", false, "live-migrate containers to other hosts first")
	cmd.Flags().BoolVar(&auto, "auto", false, "drain when other hosts have room, else local")
	cmd.Flags().BoolVar(&req.DryRun, "dry-run", false, "show the plan; change nothing")
	cmd.Flags().StringVar(&command, "command", "", "reboot command for this reboot (default policy.reboot.command)")
	cmd.Flags().StringVar(&req.Reason, "reason", "", "why, for the event log")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the sequence started")
	cmd.Flags().BoolVar(&showStatus, "status", false, "show this host's reboot sequence and kept checkpoints")
	f.add(cmd)
	return cmd
}

func printRebootPlan(w io.Writer, p migrate.RebootPlan) {
	head := fmt.Sprintf("%s: %s reboot", p.Host, p.Chosen)
	if p.Mode != p.Chosen {
		head += fmt.Sprintf(" (asked: %s)", p.Mode)
	}
	if p.Why != "" {
		head += ": " + p.Why
	}
	if p.DryRun {
		head += " [dry run]"
	}
	fmt.Fprintln(w, head)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if p.Chosen == policy.RebootModeLocal && p.Local != nil {
		fmt.Fprintln(tw, "ORDER\tCONTAINER\tPRIORITY\tMEMORY")
		for i, c := range p.Local.Save {
			fmt.Fprintf(tw, "%d\t%s\t%d\t%s\n", i+1, c.Name, policy.Priority(c.Labels), bytesHuman(c.MemoryBytes))
		}
		for _, s := range p.Local.Skipped {
			fmt.Fprintf(tw, "-\t%s\t\tleft alone: %s\n", s.Name, s.Reason)
		}
		_ = tw.Flush()
		fmt.Fprintf(w, "disk: about %s needed, %s free\n", bytesHuman(p.Local.NeedBytes), bytesHuman(p.Local.FreeBytes))
	}
	if p.Chosen == policy.RebootModeDrain && p.Drain != nil {
		fmt.Fprintln(tw, "CONTAINER\tTO\tNOTE")
		for _, m := range p.Drain.Moves {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", m.Name, m.To, m.Skipped)
		}
		_ = tw.Flush()
	}
	fmt.Fprintf(w, "command: %s\n", strings.Join(p.Command, " "))
}

func printRebootStatus(w io.Writer, st migrate.RebootStatus) {
	if seq := st.Sequence; seq == nil {
		fmt.Fprintf(w, "%s: no reboot sequence\n", st.Host)
	} else {
		fmt.Fprintf(w, "%s: %s reboot, %s since %s (%s)\n", st.Host, seq.Mode, seq.Phase, seq.Started.Format(time.RFC3339), seq.Reason)
		if seq.Stuck != "" {
			fmt.Fprintf(w, "  stuck: %s\n", seq.Stuck)
		}
		if seq.Outcome != "" {
			fmt.Fprintf(w, "  outcome: %s\n", seq.Outcome)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if st.Save != nil && len(st.Save.Entries) > 0 {
		fmt.Fprintln(tw, "SAVED\tSTATE\tSIZE\tCHECKPOINT")
		for _, e := range st.Save.Entries {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Name, e.State, bytesHuman(e.Size), e.ID)
		}
	}
	if len(st.Kept) > 0 {
		fmt.Fprintln(tw, "KEPT\tCHECKPOINT\tERROR")
		for _, e := range st.Kept {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", e.Name, e.ID, e.Error)
		}
	}
	_ = tw.Flush()
}
