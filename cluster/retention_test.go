package cluster

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/engine"
)

func done(id string, finished time.Time) MigrationRecord {
	m := rec(id, "Done")
	m.StartedAt, m.FinishedAt = finished.Add(-time.Minute), finished
	return m
}

func TestPrune(t *testing.T) {
	day := 24 * time.Hour
	tests := []struct {
		name     string
		recs     []MigrationRecord
		events   []Event
		req      PruneRequest
		wantRecs []string
		wantEvs  []string
	}{
		{
			name:     "by count: the most recently finished stay, unfinished always stay",
			recs:     []MigrationRecord{done("a", t0), done("b", t0.Add(time.Hour)), done("c", t0.Add(2*time.Hour)), rec("run", "Transferring")},
			req:      PruneRequest{At: t0.Add(3 * time.Hour), Retention: Retention{Migrations: 2, Events: 10}},
			wantRecs: []string{"b", "c", "run"},
		},
		{
			name:     "by count: ties broken by ID",
			recs:     []MigrationRecord{done("b", t0), done("a", t0), done("c", t0)},
			req:      PruneRequest{At: t0, Retention: Retention{Migrations: 1, Events: 10}},
			wantRecs: []string{"c"},
		},
		{
			name:     "by age, measured against the entry's time",
			recs:     []MigrationRecord{done("old", t0), done("new", t0.Add(9*day)), rec("started-long-ago", "Planned")},
			req:      PruneRequest{At: t0.Add(10 * day), Retention: Retention{Migrations: 10, MigrationsMaxAge: 5 * day, Events: 10}},
			wantRecs: []string{"new", "started-long-ago"},
		},
		{
			// The test runs years after t0: an entry stamped at t0 must not
			// age anything by the replica's clock.
			name:     "an entry from the past drops nothing by age",
			recs:     []MigrationRecord{done("a", t0.Add(-time.Hour))},
			events:   []Event{{ID: "e1", Kind: "k", At: t0.Add(-time.Hour)}},
			req:      PruneRequest{At: t0, Retention: Retention{Migrations: 10, MigrationsMaxAge: 2 * time.Hour, Events: 10, EventsMaxAge: 2 * time.Hour}},
			wantRecs: []string{"a"},
			wantEvs:  []string{"e1"},
		},
		{
			name: "events by age, then by count in log order",
			events: []Event{{ID: "e1", Kind: "k", At: t0}, {ID: "e2", Kind: "k", At: t0.Add(5 * day)}, {ID: "e3", Kind: "k", At: t0.Add(6 * day)},
				{ID: "e4", Kind: "k", At: t0.Add(2 * day)}, {ID: "e5", Kind: "k", At: t0.Add(7 * day)}},
			req:     PruneRequest{At: t0.Add(8 * day), Retention: Retention{Migrations: 10, Events: 2, EventsMaxAge: 4 * day}},
			wantEvs: []string{"e3", "e5"},
		},
		{
			name:     "nothing to do",
			recs:     []MigrationRecord{done("a", t0)},
			events:   []Event{{ID: "e1", Kind: "k", At: t0}},
			req:      PruneRequest{At: t0, Retention: DefaultRetention()},
			wantRecs: []string{"a"},
			wantEvs:  []string{"e1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFSM()
			idx := uint64(1)
			for _, m := range tt.recs {
				if err := apply(f, idx, cmd(t, PutMigrationType, PutMigrationRequest{Record: m})); err != nil {
					t.Fatal(err)
				}
				idx++
			}
			for _, e := range tt.events {
				if err := apply(f, idx, cmd(t, AppendEventType, AppendEventRequest{Event: e})); err != nil {
					t.Fatal(err)
				}
				idx++
			}
			if err := apply(f, idx, cmd(t, PruneType, tt.req)); err != nil {
				t.Fatal(err)
			}
			var gotRecs, gotEvs []string
			for _, m := range f.migrations() {
				gotRecs = append(gotRecs, m.ID)
			}
			for _, e := range f.events(0) {
				gotEvs = append(gotEvs, e.ID)
			}
			sort.Strings(gotRecs)
			sort.Strings(tt.wantRecs)
			if !slices.Equal(gotRecs, tt.wantRecs) || !slices.Equal(gotEvs, tt.wantEvs) {
				t.Errorf("kept migrations %v events %v, want %v %v", gotRecs, gotEvs, tt.wantRecs, tt.wantEvs)
			}
			// A pruned event ID no longer deduplicates; a kept one does.
			for _, e := range tt.events {
				err := apply(f, idx+1, cmd(t, AppendEventType, AppendEventRequest{Event: e}))
				if kept := slices.Contains(tt.wantEvs, e.ID); kept != (err != nil) {
					t.Errorf("append %s again after prune: %v (kept %v)", e.ID, err, kept)
				}
			}
		})
	}
}

func TestPruneRequestValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  PruneRequest
	}{
		{"no time", PruneRequest{Retention: DefaultRetention()}},
		{"zero count", PruneRequest{At: t0, Retention: Retention{Migrations: 0, Events: 1}}},
		{"count above the backstop", PruneRequest{At: t0, Retention: Retention{Migrations: 1, Events: maxHistory + 1}}},
		{"negative age", PruneRequest{At: t0, Retention: Retention{Migrations: 1, Events: 1, EventsMaxAge: -time.Hour}}},
	} {
		f := newFSM()
		if err := apply(f, 1, cmd(t, PruneType, tc.req)); err == nil {
			t.Errorf("%s: applied", tc.name)
		}
	}
	// Only the leader writes prunes: never accepted through /v1/apply.
	if err := checkForwarded(cmd(t, PruneType, PruneRequest{At: t0, Retention: DefaultRetention()})); err == nil {
		t.Error("a forwarded prune was accepted")
	}
}

func TestPruneDue(t *testing.T) {
	r := Retention{Migrations: 10, MigrationsMaxAge: time.Hour, Events: 10, EventsMaxAge: time.Hour}
	for _, tc := range []struct {
		name string
		st   historyStats
		want bool
	}{
		{"empty", historyStats{}, false},
		{"within", historyStats{finished: 10, events: 10, oldestFinished: t0.Add(-time.Hour), oldestEvent: t0.Add(-time.Hour)}, false},
		{"one record too many", historyStats{finished: 11}, true},
		{"one event too many", historyStats{events: 11}, true},
		{"a record too old", historyStats{finished: 1, oldestFinished: t0.Add(-time.Hour - time.Second)}, true},
		{"an event too old", historyStats{events: 1, oldestEvent: t0.Add(-2 * time.Hour)}, true},
	} {
		if got := pruneDue(tc.st, t0, r); got != tc.want {
			t.Errorf("%s: pruneDue = %v", tc.name, got)
		}
	}
}

func TestSelectHistory(t *testing.T) {
	var recs []MigrationRecord
	for i := range 5 {
		m := done(fmt.Sprintf("m%d", i), t0.Add(time.Duration(i)*time.Hour))
		m.From = fmt.Sprintf("h%d", i%2)
		recs = append(recs, m)
	}
	ids := func(rs []MigrationRecord) (out []string) {
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		q     HistoryQuery
		want  []string
		total int
	}{
		{"all, oldest first", HistoryQuery{}, []string{"m0", "m1", "m2", "m3", "m4"}, 5},
		{"the newest two", HistoryQuery{Limit: 2}, []string{"m3", "m4"}, 5},
		{"since", HistoryQuery{Since: t0.Add(2 * time.Hour)}, []string{"m2", "m3", "m4"}, 3},
		{"host", HistoryQuery{Host: "h1"}, []string{"m1", "m3"}, 2},
		{"host, since and limit", HistoryQuery{Host: "h0", Since: t0.Add(time.Hour), Limit: 1}, []string{"m4"}, 2},
	} {
		in := slices.Clone(recs)
		slices.Reverse(in)
		got, total := SelectMigrations(in, tc.q)
		if !slices.Equal(ids(got), tc.want) || total != tc.total {
			t.Errorf("%s: got %v of %d, want %v of %d", tc.name, ids(got), total, tc.want, tc.total)
		}
	}
	evs := []Event{{ID: "a", Index: 1, At: t0}, {ID: "b", Index: 2, At: t0.Add(time.Hour)}, {ID: "c", Index: 3, At: t0.Add(2 * time.Hour)}}
	got, total := SelectEvents(evs, HistoryQuery{SinceIndex: 1, Limit: 1})
	if len(got) != 1 || got[0].ID != "c" || total != 2 {
		t.Errorf("events since index 1, limit 1: %v of %d", got, total)
	}
	got, total = SelectEvents(evs, HistoryQuery{Since: t0.Add(time.Hour)})
	if len(got) != 2 || got[0].ID != "b" || total != 2 {
		t.Errorf("events since a time: %v of %d", got, total)
	}

	for _, tc := range []struct {
		url string
		ok  bool
	}{
		{"/v1/events?since=12&limit=5", true},
		{"/v1/migrations?since=2026-01-02T03:04:05Z&host=h1", true},
		{"/v1/migrations?since=yesterday", false},
		{"/v1/migrations?limit=-1", false},
		{"/v1/migrations?limit=x", false},
	} {
		if _, err := ParseHistoryQuery(httptest.NewRequest("GET", tc.url, nil)); (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.url, err)
		}
	}
}

// history is a realistic replicated history: n migrations, as many events,
// and one container report per host, one migration every 30 s of simulated
// time. Each migration's record is written when planned and when done, with
// the full phase history the coordinator builds in between (the entries in
// between change nothing that a snapshot holds).
// With r set, the leader's housekeeping runs every housekeepingInterval of
// simulated time, deciding as the real loop does (pruneDue).
type history struct {
	f   *fsm
	idx uint64
	now time.Time
}

func hexID(parts ...string) string {
	h := sha256.Sum256([]byte(fmt.Sprint(parts)))
	return hex.EncodeToString(h[:])
}

func (h *history) apply(t testing.TB, mt MessageType, req any) {
	h.idx++
	b, err := encodeCommand(mt, req)
	if err != nil {
		t.Fatal(err)
	}
	if err := apply(h.f, h.idx, b); err != nil {
		t.Fatalf("entry %d: %v", h.idx, err)
	}
}

func simulateHistory(t testing.TB, n, hosts, perHost int, r *Retention) *history {
	h := &history{f: newFSM(), now: t0}
	host := func(i int) string { return fmt.Sprintf("edge-%03d", i%hosts) }
	for i := range hosts {
		var cs []engine.Container
		for j := range perHost {
			cs = append(cs, engine.Container{ID: hexID("c", host(i), fmt.Sprint(j)), Name: fmt.Sprintf("app-%d-%d", i, j),
				Image: "registry.example.com/edge/app:1.4.2", ImageID: "sha256:" + hexID("img", fmt.Sprint(j%5)), State: "running", Running: true,
				Labels: map[string]string{"orchestrate.priority": "1", "app": "sensor"}, Created: t0, MemoryBytes: 64 << 20})
		}
		h.apply(t, ReportContainersType, ReportContainersRequest{Host: host(i), Containers: cs, At: t0})
	}
	lastHK := h.now
	phases := []string{"Planned", "Checkpointing", "Transferring", "Restoring", "Confirming", "Done"}
	for i := range n {
		h.now = h.now.Add(30 * time.Second)
		from, to := host(i), host(i+1+i%7)
		m := MigrationRecord{ID: hexID("m", fmt.Sprint(i))[:12], Container: hexID("c", from, fmt.Sprint(i%perHost)), Name: fmt.Sprintf("app-%d", i),
			Image: "sha256:" + hexID("img", fmt.Sprint(i%5)), From: from, To: to, Batch: hexID("b", fmt.Sprint(i/10))[:12], Parallel: 2, Drain: from,
			Deadline: h.now.Add(5 * time.Minute), StartedAt: h.now}
		for k, p := range phases {
			at := h.now.Add(time.Duration(k) * 300 * time.Millisecond)
			note := ""
			switch p {
			case "Planned":
				note = fmt.Sprintf("%s: %s -> %s", m.Name, from, to)
			case "Confirming":
				note = "running on " + to
			case "Done":
				note = "source copy removed from " + from
				m.FinishedAt = at
			}
			m.History = append(m.History, PhaseChange{Phase: p, At: at, Note: note})
			m.Phase = p
			if k >= 2 {
				m.SourceAsked, m.Method, m.Bytes, m.Compression = true, "direct", 70<<20, "zstd"
				m.Checkpoint = engine.Stats{Duration: 900 * time.Millisecond, Bytes: 70 << 20, FrozenTime: 400 * time.Millisecond, MemdumpTime: 300 * time.Millisecond, PagesWritten: 17000}
				m.FrozenAt = at
			}
			if p == "Confirming" {
				m.Restore, m.Downtime = engine.Stats{Duration: 1200 * time.Millisecond, Bytes: 70 << 20, RestoreTime: 500 * time.Millisecond}, 1400*time.Millisecond
			}
			switch k {
			case 0:
				h.apply(t, PutMigrationType, PutMigrationRequest{Record: m, IfAbsent: true})
			case len(phases) - 1:
				h.apply(t, PutMigrationType, PutMigrationRequest{Record: m, IfPhase: "Planned"})
			}
		}
		h.apply(t, AppendEventType, AppendEventRequest{Event: Event{ID: hexID("e", fmt.Sprint(i))[:32], Kind: "spot-terminate", Host: from, At: h.now,
			Message: fmt.Sprintf("aws spot notice for %s: terminate at %s", from, h.now.Add(2*time.Minute).Format(time.RFC3339)),
			Data:    map[string]string{"action": "evacuate", "result": "1 to move, 1 at a time", "trigger": hexID("t", fmt.Sprint(i))[:32], "batch": m.Batch}}})
		if r != nil && h.now.Sub(lastHK) >= housekeepingInterval {
			lastHK = h.now
			if pruneDue(h.f.historyStats(), h.now, *r) {
				h.apply(t, PruneType, PruneRequest{At: h.now, Retention: *r})
			}
		}
	}
	return h
}

func (h *history) snapshot(t testing.TB) []byte {
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	return sink.Bytes()
}

// restoreTime restores b into a fresh FSM and returns how long it took.
func restoreTime(t testing.TB, b []byte) time.Duration {
	g := newFSM()
	start := time.Now()
	if err := g.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// With the default retention, 10,000 migrations and 10,000 events on a
// 100-host fleet (10 containers each) leave a snapshot under 5 MB, holding
// exactly what the retention keeps.
func TestRetentionBoundsSnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("applies 80,000 entries")
	}
	r := DefaultRetention()
	h := simulateHistory(t, 10000, 100, 10, &r)
	b := h.snapshot(t)
	st := h.f.historyStats()
	t.Logf("MEASURE snapshot after 10,000 migrations and 10,000 events, default retention: %d bytes (%d records, %d events, %d entries)", len(b), st.finished, st.events, h.idx)
	if len(b) > 5<<20 {
		t.Errorf("snapshot is %d bytes, more than 5 MB", len(b))
	}
	// The last prune ran at most one housekeeping interval (20 simulated
	// migrations) ago.
	if st.finished < r.Migrations || st.finished > r.Migrations+20 || st.events < r.Events || st.events > r.Events+20 {
		t.Errorf("kept %d records and %d events, retention %d and %d", st.finished, st.events, r.Migrations, r.Events)
	}
	if d := restoreTime(t, b); d > 0 {
		t.Logf("MEASURE FSM restore of that snapshot: %s", d)
	}
}

// TestBenchSnapshot prints the snapshot size and the FSM restore time
// after 10,000 migrations and 10,000 events, with no retention (the
// baseline: what the state grew to before retention existed) and with the
// default retention. make bench runs it.
func TestBenchSnapshot(t *testing.T) {
	if os.Getenv("ORCHESTRATE_BENCH") == "" {
		t.Skip("set ORCHESTRATE_BENCH=1 (make bench)")
	}
	def := DefaultRetention()
	fmt.Printf("\nraft snapshot after 10,000 migrations and 10,000 events (100 hosts x 10 containers reported; restore: median of 5)\n")
	fmt.Printf("%-34s %12s %10s %8s %14s\n", "retention", "snapshot", "records", "events", "FSM restore")
	for _, c := range []struct {
		name string
		r    *Retention
	}{{"none (backstop only; baseline)", nil}, {"default (1000 / 1000, 30 days)", &def}} {
		h := simulateHistory(t, 10000, 100, 10, c.r)
		b := h.snapshot(t)
		var ds []time.Duration
		for range 5 {
			ds = append(ds, restoreTime(t, b))
		}
		slices.Sort(ds)
		st := h.f.historyStats()
		fmt.Printf("%-34s %9.2f MB %10d %8d %14s\n", c.name, float64(len(b))/1e6, st.finished, st.events, ds[2].Round(10*time.Microsecond))
	}
}
