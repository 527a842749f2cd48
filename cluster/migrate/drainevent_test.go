package migrate

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/edgemigrate/orchestrate/cluster"
)

type alwaysLeader struct{}

func (alwaysLeader) IsLeader() bool                         { return true }
func (alwaysLeader) LeaderClient() (*cluster.Client, error) { return nil, cluster.ErrNoLeader }

// A drain asked for through the API (the CLI, the console, a host's
// reboot) is written to the event log by the leader: host, reason, each
// move and what stays. A dry run is not; a failed drain is, as failed.
func TestDrainIsAnEvent(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	w.hosts["h1"].eng.Run("web", "img:1", 1<<20, nil)
	w.hosts["h1"].eng.Run("db", "img:1", 1<<20, nil)
	w.hosts["h1"].eng.Run("pinned", "img:1", 1<<20, map[string]string{"orchestrate.migrate": "false"})
	co, _ := w.leader(t)
	mux := muxAdapter{http.NewServeMux()}
	co.Register(mux, alwaysLeader{})
	drain := func(body string) int {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/drain", strings.NewReader(body)))
		return rec.Code
	}
	events := func() []cluster.Event {
		w.store.mu.Lock()
		defer w.store.mu.Unlock()
		var out []cluster.Event
		for _, ev := range w.store.events {
			if ev.Kind == EventDrain {
				out = append(out, ev)
			}
		}
		return out
	}
	if code := drain(`{"host":"h1","dry_run":true}`); code != http.StatusOK {
		t.Fatalf("dry run: %d", code)
	}
	if evs := events(); len(evs) != 0 {
		t.Fatalf("a dry run was recorded: %+v", evs)
	}
	if code := drain(`{"host":"h1","reason":"kernel upgrade"}`); code != http.StatusOK {
		t.Fatalf("drain: %d", code)
	}
	evs := events()
	if len(evs) != 1 {
		t.Fatalf("events %+v", evs)
	}
	ev := evs[0]
	d := ev.Data
	if ev.Host != "h1" || d["action"] != "drain" || d["reason"] != "kernel upgrade" || d["batch"] == "" || ev.At.IsZero() ||
		!strings.Contains(d["moves"], "web→h2") || !strings.Contains(d["moves"], "db→h2") ||
		!strings.Contains(d["skipped"], "pinned (orchestrate.migrate=false)") || !strings.HasPrefix(d["result"], "2 to move") {
		t.Fatalf("event %+v", ev)
	}
	if !strings.Contains(ev.Message, "drain h1 (kernel upgrade)") {
		t.Fatalf("message %q", ev.Message)
	}
	if code := drain(`{"host":"h9"}`); code != http.StatusNotFound {
		t.Fatalf("drain of an unknown host: %d", code)
	}
	if evs := events(); len(evs) != 2 {
		t.Fatalf("events after a failed drain: %+v", evs)
	}
	for _, ev := range events() {
		if ev.Host == "h9" && !strings.HasPrefix(ev.Data["result"], "failed: ") {
			t.Fatalf("failed drain recorded as %+v", ev)
		}
	}
}
