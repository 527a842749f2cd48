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

// migrateOut runs the source's migrate-out step to h2 and returns its
// progress lines.
func migrateOutLines(t *testing.T, w *world, name string) []Progress {
	t.Helper()
	rec, err := w.do(context.Background(), "h1", http.MethodPost, "/v1/agent/migrate-out",
		OutRequest{Migration: "m1", Container: name, TargetHost: "h2", TargetAddr: "h2"})
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
	w := &world{hosts: map[string]*fakeHost{}, store: &fakeStore{}}
	src := &policyFake{Fake: enginetest.NewFake(), spec: engine.RestoreSpec{Privileged: true, Binds: []string{"/"}}}
	dst := &policyFake{Fake: enginetest.NewFake()}
	for n, eng := range map[string]*policyFake{"h1": src, "h2": dst} {
		h := &fakeHost{name: n, eng: eng.Fake, mux: http.NewServeMux(), streams: map[string]transfer.Handler{}}
		NewAgent(n, eng, streamer{w}, slog.New(slog.DiscardHandler)).Register(h.mux, h)
		w.hosts[n] = h
	}
	c := src.Run("web", "img", 1<<20, nil)
	dst.AddImage("img")

	lines := migrateOutLines(t, w, "web")
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
	lines = migrateOutLines(t, w, "web")
	if last := lines[len(lines)-1]; last.Kind != progRestored {
		t.Fatalf("allowed migration: %+v", lines)
	}
}

// A target without a preflight handler (an older agent) does not stop a
// migration.
func TestPreflightOlderTarget(t *testing.T) {
	w := &world{hosts: map[string]*fakeHost{}, store: &fakeStore{}}
	src := &policyFake{Fake: enginetest.NewFake(), spec: engine.RestoreSpec{Privileged: true}}
	dst := enginetest.NewFake()
	for n, eng := range map[string]Engine{"h1": src, "h2": dst} {
		h := &fakeHost{name: n, mux: http.NewServeMux(), streams: map[string]transfer.Handler{}}
		NewAgent(n, eng, olderStreamer{w}, slog.New(slog.DiscardHandler)).Register(h.mux, h)
		w.hosts[n] = h
	}
	src.Run("web", "img", 1<<20, nil)
	dst.AddImage("img")
	if lines := migrateOutLines(t, w, "web"); lines[len(lines)-1].Kind != progRestored {
		t.Fatalf("to an older target: %+v", lines)
	}
}

// olderStreamer delivers streams as streamer does, but answers a preflight
// as an agent without its handler would.
type olderStreamer struct{ w *world }

func (s olderStreamer) Stream(ctx context.Context, peer string, hdr transfer.StreamHeader, produce func(io.Writer) error) ([]byte, transfer.StreamStats, error) {
	if hdr.Kind == KindPreflight {
		return nil, transfer.StreamStats{}, fmt.Errorf("%w: %w \"preflight\"", transfer.ErrRemote, transfer.ErrNoHandler)
	}
	return streamer(s).Stream(ctx, peer, hdr, produce)
}
