package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"time"
)

// Paging of the history reads (GET /v1/migrations and /v1/events). Both
// return a JSON array, oldest first; ?limit=N keeps the newest N and
// ?since= drops older entries. The header X-Orchestrate-Total says how many
// matched before the limit, so a client can tell the operator what it left
// out.

// TotalHeader carries the number of entries that matched before ?limit.
const TotalHeader = "X-Orchestrate-Total"

// HistoryQuery selects part of the history.
type HistoryQuery struct {
	// Since drops migrations whose last change, and events stamped, before
	// it. Zero: no bound.
	Since time.Time
	// SinceIndex drops events at or below this raft index (events only).
	SinceIndex uint64
	// Host keeps the migrations from or to this host (migrations only).
	Host string
	// Limit keeps the newest Limit entries; 0 keeps all.
	Limit int
}

// ParseHistoryQuery reads ?since (a raft index, for events, or an RFC 3339
// time), ?limit and ?host. Errors wrap ErrInvalid.
func ParseHistoryQuery(r *http.Request) (HistoryQuery, error) {
	var q HistoryQuery
	v := r.URL.Query()
	if s := v.Get("since"); s != "" {
		if n, err := strconv.ParseUint(s, 10, 64); err == nil {
			q.SinceIndex = n
		} else if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			q.Since = t
		} else {
			return q, fmt.Errorf("since %q: expected a raft index or an RFC 3339 time: %w", s, ErrInvalid)
		}
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return q, fmt.Errorf("limit %q: expected a whole number, 0 for all: %w", s, ErrInvalid)
		}
		q.Limit = n
	}
	q.Host = v.Get("host")
	return q, nil
}

// lastChange is when a migration record last changed.
func lastChange(m MigrationRecord) time.Time {
	t := m.StartedAt
	if m.FinishedAt.After(t) {
		t = m.FinishedAt
	}
	if n := len(m.History); n > 0 && m.History[n-1].At.After(t) {
		t = m.History[n-1].At
	}
	return t
}

// SelectMigrations applies q to records: it keeps those that match, sorts
// them oldest first (by start, then ID) and keeps the newest q.Limit. It
// returns them and how many matched before the limit.
func SelectMigrations(recs []MigrationRecord, q HistoryQuery) ([]MigrationRecord, int) {
	out := recs[:0:0]
	for _, m := range recs {
		if q.Host != "" && m.From != q.Host && m.To != q.Host {
			continue
		}
		if !q.Since.IsZero() && lastChange(m).Before(q.Since) {
			continue
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		return a.StartedAt.Before(b.StartedAt) || a.StartedAt.Equal(b.StartedAt) && a.ID < b.ID
	})
	total := len(out)
	if q.Limit > 0 && total > q.Limit {
		out = out[total-q.Limit:]
	}
	return out, total
}

// SelectEvents applies q to events in log order: it keeps those above
// q.SinceIndex and stamped at or after q.Since, then the newest q.Limit.
func SelectEvents(evs []Event, q HistoryQuery) ([]Event, int) {
	out := evs[:0:0]
	for _, e := range evs {
		if e.Index <= q.SinceIndex || !q.Since.IsZero() && e.At.Before(q.Since) {
			continue
		}
		out = append(out, e)
	}
	total := len(out)
	if q.Limit > 0 && total > q.Limit {
		out = out[total-q.Limit:]
	}
	return out, total
}

func (a *API) migrations(w http.ResponseWriter, r *http.Request) {
	q, err := ParseHistoryQuery(r)
	if err == nil && q.SinceIndex > 0 {
		err = fmt.Errorf("since: migrations take an RFC 3339 time: %w", ErrInvalid)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	out, total := SelectMigrations(a.c.Migrations(), q)
	w.Header().Set(TotalHeader, strconv.Itoa(total))
	writeJSON(w, http.StatusOK, orEmpty(out))
}

func (a *API) events(w http.ResponseWriter, r *http.Request) {
	q, err := ParseHistoryQuery(r)
	if err != nil {
		writeError(w, err)
		return
	}
	out, total := SelectEvents(a.c.Events(q.SinceIndex), q)
	w.Header().Set(TotalHeader, strconv.Itoa(total))
	writeJSON(w, http.StatusOK, orEmpty(out))
}

// Encode returns q as the query string of a history read ("" when empty).
func (q HistoryQuery) Encode() string {
	v := url.Values{}
	switch {
	case !q.Since.IsZero():
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	case q.SinceIndex > 0:
		v.Set("since", strconv.FormatUint(q.SinceIndex, 10))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.Host != "" {
		v.Set("host", q.Host)
	}
	if len(v) == 0 {
		return ""
	}
	return "?" + v.Encode()
}

// History reads a history route (/v1/migrations or /v1/events) with q into
// out, and returns how many entries matched before q.Limit.
func (cl *Client) History(ctx context.Context, path string, q HistoryQuery, out any) (total int, err error) {
	resp, err := cl.Raw(ctx, http.MethodGet, path+q.Encode(), nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return 0, fmt.Errorf("GET %s: decode: %w", path, err)
	}
	total, err = strconv.Atoi(resp.Header.Get(TotalHeader))
	if err != nil {
		return -1, nil // an agent of an older version: no total
	}
	return total, nil
}

// members serves GET /v1/members; ?name= narrows it to one member (an empty
// list when unknown), which is what a watcher polling a hundred agents for
// one member's status needs.
func (a *API) members(w http.ResponseWriter, r *http.Request) {
	ms := a.c.Members()
	if name := r.URL.Query().Get("name"); name != "" {
		ms = slices.DeleteFunc(ms, func(m Member) bool { return m.Name != name })
	}
	writeJSON(w, http.StatusOK, orEmpty(ms))
}
