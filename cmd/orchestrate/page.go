package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgemigrate/orchestrate/cluster"
)

// pageFlags are --limit and --since of the history commands (migrations,
// events). The agent selects; the CLI says on stderr what it left out.
type pageFlags struct {
	limit int
	since string
}

func (p *pageFlags) add(cmd *cobra.Command, what string) {
	cmd.Flags().IntVar(&p.limit, "limit", 100, "show the newest N "+what+" (0: all that the cluster keeps)")
	cmd.Flags().StringVar(&p.since, "since", "", "only "+what+" since then: a duration back from now (90m, 24h) or a time (2026-01-02T15:04:05Z, 2026-01-02)")
}

// query turns the flags into a history query; bad values are usage errors.
func (p *pageFlags) query(now time.Time) (cluster.HistoryQuery, error) {
	q := cluster.HistoryQuery{Limit: p.limit}
	if p.limit < 0 {
		return q, usageError{fmt.Errorf("--limit %d: expected 0 (all) or more", p.limit)}
	}
	if p.since == "" {
		return q, nil
	}
	since, err := parseSince(p.since, now)
	if err != nil {
		return q, usageError{err}
	}
	q.Since = since
	return q, nil
}

// parseSince reads a duration back from now, an RFC 3339 time or a date.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("--since %q: expected a duration (90m, 24h) or a time (2026-01-02T15:04:05Z, 2026-01-02)", s)
}

// read fetches path with the flags' query into out and, when the limit
// left entries out, says so on stderr.
func (p *pageFlags) read(cmd *cobra.Command, f *clientFlags, path string, out any) error {
	q, err := p.query(time.Now())
	if err != nil {
		return err
	}
	cl, err := f.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
	defer cancel()
	total, err := cl.History(ctx, path, q, out)
	if err != nil {
		return err
	}
	if q.Limit > 0 && total > q.Limit {
		what := strings.TrimPrefix(path, "/v1/")
		fmt.Fprintf(cmd.ErrOrStderr(), "showing the newest %d of %d %s (--limit 0 for all, --since to narrow)\n", q.Limit, total, what)
	}
	return nil
}
