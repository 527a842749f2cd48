package main

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/migrate"
)

// statusJSON is `status -o json`.
type statusJSON struct {
	Leader     string           `json:"leader"`
	Members    []cluster.Member `json:"members"`
	Cordoned   []string         `json:"cordoned"`
	Ongoing    []migrationJSON  `json:"ongoing"`
	Recent     []migrationJSON  `json:"recent"`
	Events     []cluster.Event  `json:"events"`
	Migrations map[string]int   `json:"migrations_by_phase"`
}

func newStatusCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "One screen: leader, members, cordoned hosts, ongoing migrations, recent events",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := f.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			var st statusJSON
			var s cluster.Status
			if err := cl.Do(ctx, http.MethodGet, "/v1/status", nil, &s); err != nil {
				return err
			}
			st.Leader = s.Leader
			if st.Members, err = cl.Members(ctx); err != nil {
				return err
			}
			var recs []cluster.MigrationRecord
			if err := cl.Do(ctx, http.MethodGet, "/v1/migrations", nil, &recs); err != nil {
				return err
			}
			if err := cl.Do(ctx, http.MethodGet, "/v1/events", nil, &st.Events); err != nil {
				return err
			}
			sort.Slice(recs, func(i, j int) bool { return recs[i].StartedAt.After(recs[j].StartedAt) })
			st.Migrations = map[string]int{}
			for _, m := range recs {
				st.Migrations[m.Phase]++
				if !migrate.Terminal(m.Phase) {
					st.Ongoing = append(st.Ongoing, toJSON(m))
				} else if len(st.Recent) < 5 {
					st.Recent = append(st.Recent, toJSON(m))
				}
			}
			for _, m := range st.Members {
				if m.Cordoned {
					st.Cordoned = append(st.Cordoned, m.Name)
				}
			}
			if len(st.Events) > 8 {
				st.Events = st.Events[len(st.Events)-8:]
			}
			out := cmd.OutOrStdout()
			if f.output == "json" {
				return printJSON(out, st)
			}
			leader := st.Leader
			if leader == "" {
				leader = "none (election in progress or no quorum)"
			}
			fmt.Fprintf(out, "Leader:    %s\n", leader)
			fmt.Fprintf(out, "Cordoned:  %s\n", orNone(strings.Join(st.Cordoned, ", ")))
			var phases []string
			for p, n := range st.Migrations {
				phases = append(phases, fmt.Sprintf("%s %d", p, n))
			}
			sort.Strings(phases)
			fmt.Fprintf(out, "Migrations: %s\n\n", orNone(strings.Join(phases, ", ")))
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "MEMBER\tSTATUS\tROLE\tCORDONED\tCONTAINERS\tMEMORY\tCRIU")
			for _, m := range st.Members {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%d\t%s/%s\t%s\n", m.Name, m.Status, m.Role, m.Cordoned, m.Containers,
					bytesHuman(m.MemoryUsed), bytesHuman(m.MemoryTotal), m.CRIUVersion)
			}
			tw.Flush()
			section := func(title string, rows []migrationJSON) {
				if len(rows) == 0 {
					return
				}
				fmt.Fprintf(out, "\n%s:\n", title)
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "  CONTAINER\tFROM\tTO\tPHASE\tDOWNTIME\tERROR")
				for _, m := range rows {
					name := m.Name
					if name == "" {
						name = shortID(m.Container)
					}
					fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%dms\t%s\n", name, m.From, m.To, m.Phase, m.DowntimeMS, m.Error)
				}
				tw.Flush()
			}
			section("Ongoing migrations", st.Ongoing)
			section("Recent migrations", st.Recent)
			if len(st.Events) > 0 {
				fmt.Fprintln(out, "\nRecent events:")
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				for _, e := range st.Events {
					fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", e.At.Local().Format("15:04:05"), e.Host, e.Kind, e.Message)
				}
				tw.Flush()
			}
			return nil
		},
	}
	f.add(cmd)
	return cmd
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
