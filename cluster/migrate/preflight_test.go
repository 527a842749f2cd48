package migrate

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
	"github.com/edgemigrate/orchestrate/transfer"
)

// policyFake is the fake engine with a restore policy: it reports spec for
// its containers and judges others' with policy.
type policyFake struct {
	*enginetest.Fake
	spec    engine.RestoreSpec
	policy  engine.RestorePolicy
	checked int
}

func (p *policyFake) RestoreSpec(ctx context.Context, id string) (engine.RestoreSpec, error) {
	return p.spec, nil
}

func (p *policyFake) CheckRestore(ctx context.Context, s engine.RestoreSpec) error {
	p.checked++
	return p.policy.Check(s)
}

// migrateOutLines records migration id of container c from h1 to h2 as the
// leader would, runs the source's migrate-out step, and returns its
// progress lines.
func migrateOutLines(t *testing.T, w *world, id string, c engine.Container) []Progress {
	t.Helper()
	w.store.mu.Lock()
	w.store.recs[id] = cluster.MigrationRecord{ID: id, Container: c.ID, Name: c.Name, From: "h1", To: "h2", Phase: Planned, SourceAsked: true}
	w.store.mu.Unlock()
	rec, err := w.do(context.Background(), "h1", http.MethodPost, "/v1/agent/migrate-out", OutRequest{Migration: id, Container: c.ID})
	if err != nil {
		t.Fatal(err)
	}
	var out []Progress
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		var p Progress
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// The target's restore policy refuses a container before the source
// freezes it: the container keeps running where it was, and nothing is
// created on the target. An allowed one migrates.
func TestPreflightRefusesBeforeFreeze(t *testing.T) {
	src := &policyFake{spec: engine.RestoreSpec{Privileged: true, Binds: []string{"/"}}}
	dst := &policyFake{}
	w := newWorld(t, "h1", "h2")
	src.Fake, dst.Fake = w.hosts["h1"].eng, w.hosts["h2"].eng
	w = reregister(t, w, map[string]Engine{"h1": src, "h2": dst}, func(w *world, from string) Streamer { return streamer{w, from} })
	c := src.Run("web", "img", 1<<20, nil)
	dst.AddImage("img")

	lines := migrateOutLines(t, w, "m1", c)
	last := lines[len(lines)-1]
	if last.Kind != EvFailed || !strings.Contains(last.Err, "refused by this host's restore policy") ||
		!strings.Contains(last.Err, "privileged") || !strings.Contains(last.Err, "host-path binds of /") {
		t.Fatalf("progress %+v", lines)
	}
	for _, p := range lines {
		if p.Kind == EvFrozen || p.Kind == progPrecopy {
			t.Fatalf("the source froze before the refusal: %+v", lines)
		}
	}
	if got, err := src.Inspect(context.Background(), c.ID); err != nil || !got.Running {
		t.Fatalf("source container after the refusal: %+v %v", got, err)
	}
	if cs, _ := dst.List(context.Background()); len(cs) != 0 || dst.checked != 1 {
		t.Fatalf("target: %d containers, %d checks", len(cs), dst.checked)
	}

	// The target allows it: the migration goes ahead.
	dst.policy = engine.RestorePolicy{AllowPrivileged: true, AllowedBindPaths: []string{"/"}}
	lines = migrateOutLines(t, w, "m2", c)
	if last := lines[len(lines)-1]; last.Kind != progRestored {
		t.Fatalf("allowed migration: %+v", lines)
	}
}

// reregister puts engines behind w's agents (see policyWorld).
func reregister(t *testing.T, w *world, engines map[string]Engine, streams func(w *world, from string) Streamer) *world {
	t.Helper()
	for n, eng := range engines {
		h := w.hosts[n]
		h.mux, h.streams = http.NewServeMux(), map[string]transfer.Handler{}
		a := NewAgent(n, eng, streams(w, n), slog.New(slog.DiscardHandler))
		a.SetAuthority(hostAuth{w.store, n})
		a.recordWait = 100 * time.Millisecond
		h.agent = a
		a.Register(h.mux, h)
	}
	return w
}

// A target without a preflight handler (an older agent) does not stop a
// migration.
func TestPreflightOlderTarget(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	src := &policyFake{Fake: w.hosts["h1"].eng, spec: engine.RestoreSpec{Privileged: true}}
	w = reregister(t, w, map[string]Engine{"h1": src, "h2": w.hosts["h2"].eng},
		func(w *world, from string) Streamer { return olderStreamer{streamer{w, from}} })
	c := src.Run("web", "img", 1<<20, nil)
	w.hosts["h2"].eng.AddImage("img")
	if lines := migrateOutLines(t, w, "m1", c); lines[len(lines)-1].Kind != progRestored {
		t.Fatalf("to an older target: %+v", lines)
	}
}

// olderStreamer delivers streams as streamer does, but answers a preflight
// as an agent without its handler would.
type olderStreamer struct{ streamer }

func (s olderStreamer) Stream(ctx context.Context, peer string, hdr transfer.StreamHeader, produce func(io.Writer) error) ([]byte, transfer.StreamStats, error) {
	if hdr.Kind == KindPreflight {
		return nil, transfer.StreamStats{}, fmt.Errorf("%w: %w \"preflight\"", transfer.ErrRemote, transfer.ErrNoHandler)
	}
	return s.streamer.Stream(ctx, peer, hdr, produce)
}
