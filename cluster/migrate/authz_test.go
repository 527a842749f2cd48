package migrate

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/transfer"
)

// call posts in to path on host with the given step signature header ("":
// none) and returns the status and body.
func (w *world) raw(t *testing.T, host, path, sig string, in any) (int, string) {
	t.Helper()
	b, _ := json.Marshal(in)
	req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(b))
	if sig != "" {
		req.Header.Set(cluster.StepHeader, sig)
	}
	rr := httptest.NewRecorder()
	w.hosts[host].mux.ServeHTTP(rr, req)
	return rr.Code, rr.Body.String()
}

// Steps only the leader orders are refused without the current leader's
// signature for this host and this request: unsigned, signed by another
// key, for another host, another path or another body, or too old.
func TestLeaderStepsNeedTheLeadersSignature(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	c := w.hosts["h1"].eng.Run("web", "img:1", 1<<20, nil)
	w.store.recs["m1"] = cluster.MigrationRecord{ID: "m1", Container: c.ID, From: "h1", To: "h2", Phase: RollingBack}
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	req := ContainerRequest{Container: c.ID, Migration: "m1"}
	body, _ := json.Marshal(req)
	now := time.Now()
	for _, path := range []string{"/v1/agent/migrate-out", "/v1/agent/push-image", "/v1/agent/abort", "/v1/agent/resume", "/v1/agent/remove"} {
		for name, sig := range map[string]string{
			"unsigned":      "",
			"garbage":       "v1 term=7 ts=1 sig=AAAA",
			"another key":   cluster.SignStep(otherKey, stepTerm, "h1", http.MethodPost, path, body, now),
			"an older term": cluster.SignStep(stepPriv, stepTerm-1, "h1", http.MethodPost, path, body, now),
			"another host":  cluster.SignStep(stepPriv, stepTerm, "h2", http.MethodPost, path, body, now),
			"another path":  cluster.SignStep(stepPriv, stepTerm, "h1", http.MethodPost, "/v1/agent/inspect", body, now),
			"another body":  cluster.SignStep(stepPriv, stepTerm, "h1", http.MethodPost, path, []byte(`{}`), now),
			"too old":       cluster.SignStep(stepPriv, stepTerm, "h1", http.MethodPost, path, body, now.Add(-time.Hour)),
		} {
			code, out := w.raw(t, "h1", path, sig, req)
			if code != http.StatusForbidden || !strings.Contains(out, "forbidden") {
				t.Errorf("%s %s: %d %s", path, name, code, out)
			}
		}
	}
	// Nothing happened to the container.
	if got, err := w.hosts["h1"].eng.Inspect(context.Background(), c.ID); err != nil || !got.Running {
		t.Fatalf("container after refused steps: %+v %v", got, err)
	}
}

// Signed steps still act only as a record says: its own container, on the
// host the record names for the step, in the step's phase.
func TestLeaderStepsFollowTheRecords(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	ctx := context.Background()
	c := w.hosts["h1"].eng.Run("web", "img:1", 1<<20, nil)
	other := w.hosts["h1"].eng.Run("db", "img:1", 1<<20, nil)
	o2 := w.hosts["h2"].eng.Run("cache", "img:1", 1<<20, nil)
	rec := func(id, phase string) {
		w.store.recs[id] = cluster.MigrationRecord{ID: id, Container: c.ID, From: "h1", To: "h2", Phase: phase, Image: "img:1"}
	}
	rec("back", RollingBack)
	rec("done", Done)
	rec("planned", Planned)
	for _, tc := range []struct {
		name, host, path string
		in               any
	}{
		{"abort on the source", "h1", "/v1/agent/abort", ContainerRequest{Container: c.ID, Migration: "back"}},
		{"abort of another container", "h2", "/v1/agent/abort", ContainerRequest{Container: o2.ID, Migration: "back"}},
		{"abort of a migration that rolls forward", "h2", "/v1/agent/abort", ContainerRequest{Container: c.ID, Migration: "done"}},
		{"abort of no migration", "h2", "/v1/agent/abort", ContainerRequest{Container: c.ID, Migration: "nope"}},
		{"resume of another container", "h1", "/v1/agent/resume", ContainerRequest{Container: other.ID, Migration: "back"}},
		{"resume after Done", "h1", "/v1/agent/resume", ContainerRequest{Container: c.ID, Migration: "done"}},
		{"resume on the target", "h2", "/v1/agent/resume", ContainerRequest{Container: c.ID, Migration: "back"}},
		{"remove while rolling back", "h1", "/v1/agent/remove", ContainerRequest{Container: c.ID, Migration: "back"}},
		{"remove of another container", "h1", "/v1/agent/remove", ContainerRequest{Container: other.ID, Migration: "done"}},
		{"migrate-out of another container", "h1", "/v1/agent/migrate-out", OutRequest{Migration: "planned", Container: other.ID}},
		{"migrate-out on the target", "h2", "/v1/agent/migrate-out", OutRequest{Migration: "planned"}},
		{"migrate-out while rolling back", "h1", "/v1/agent/migrate-out", OutRequest{Migration: "back"}},
		{"migrate-out to another target", "h1", "/v1/agent/migrate-out", OutRequest{Migration: "planned", TargetHost: "h3"}},
		{"push of another image", "h1", "/v1/agent/push-image", ImageRequest{Migration: "planned", Image: "secret:1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := w.Call(ctx, tc.host, tc.path, tc.in, nil)
			if err == nil || !strings.Contains(err.Error(), "forbidden") {
				t.Fatalf("%v", err)
			}
		})
	}
	for _, h := range []string{"h1", "h2"} {
		cs, _ := w.hosts[h].eng.List(ctx)
		for _, x := range cs {
			if !x.Running {
				t.Errorf("%s on %s no longer runs", x.Name, h)
			}
		}
	}
}

// The source streams to the target the record names, at the address gossip
// has for it, whatever the caller says.
func TestTargetAddressFromTheMemberList(t *testing.T) {
	w := newWorld(t, "h1", "h2", "h3")
	c := w.hosts["h1"].eng.Run("web", "img:1", 1<<20, nil)
	w.hosts["h2"].eng.AddImage("img:1")
	w.store.recs["m1"] = cluster.MigrationRecord{ID: "m1", Container: c.ID, From: "h1", To: "h2", Phase: Planned, SourceAsked: true}
	rr, err := w.do(context.Background(), "h1", http.MethodPost, "/v1/agent/migrate-out", OutRequest{Migration: "m1", TargetAddr: "h3"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rr.Body.String(), `"restored"`) {
		t.Fatalf("%s", rr.Body.String())
	}
	if _, err := w.hosts["h2"].eng.Inspect(context.Background(), c.ID); err != nil {
		t.Fatal("not restored on the record's target")
	}
	if _, err := w.hosts["h3"].eng.Inspect(context.Background(), c.ID); err == nil {
		t.Fatal("restored where the caller said")
	}
}

// A restore, pre-copy or image stream is accepted only while a record names
// this host as target and the sender as source; a refused stream creates
// nothing.
func TestStreamsNeedARecordNamingTheSender(t *testing.T) {
	w := newWorld(t, "h1", "h2", "h3")
	ctx := context.Background()
	c := w.hosts["h1"].eng.Run("web", "img:1", 1<<20, nil)
	var archive bytes.Buffer
	if _, err := w.hosts["h1"].eng.Checkpoint(ctx, c.ID, &archive, engine.CheckpointOptions{LeaveRunning: true}); err != nil {
		t.Fatal(err)
	}
	w.hosts["h2"].eng.AddImage("img:1")
	set := func(phase string) {
		w.store.recs["m1"] = cluster.MigrationRecord{ID: "m1", Container: c.ID, From: "h1", To: "h2", Phase: phase, Image: "img:1"}
	}
	restore := func(peer, target, id string) error {
		h := w.hosts[target].streams[KindRestore]
		_, err := h(transfer.ContextWithSender(ctx, peer), transfer.StreamHeader{Kind: KindRestore, ID: id, Meta: map[string]string{"container": c.ID}},
			bytes.NewReader(archive.Bytes()))
		return err
	}
	set(Transferring)
	for _, tc := range []struct {
		name, peer, target, id string
	}{
		{"from a member that is not the source", "h3", "h2", "m1"},
		{"from nobody named", "", "h2", "m1"},
		{"to a host that is not the target", "h1", "h3", "m1"},
		{"for no record", "h1", "h2", "forged"},
	} {
		if err := restore(tc.peer, tc.target, tc.id); !errors.Is(err, cluster.ErrForbidden) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	set(RollingBack)
	if err := restore("h1", "h2", "m1"); !errors.Is(err, cluster.ErrForbidden) {
		t.Errorf("while rolling back: %v", err)
	}
	for _, h := range []string{"h2", "h3"} {
		if _, err := w.hosts[h].eng.Inspect(ctx, c.ID); err == nil {
			t.Fatalf("a refused restore created the container on %s", h)
		}
	}
	set(Planned)
	for _, kind := range []string{KindPrecopy, KindPrecopyProbe, KindDeltaRestore} {
		_, err := w.hosts["h2"].streams[kind](transfer.ContextWithSender(ctx, "h3"), transfer.StreamHeader{Kind: kind, ID: "m1", Meta: map[string]string{"container": c.ID}}, strings.NewReader("x"))
		if !errors.Is(err, cluster.ErrForbidden) {
			t.Errorf("%s from h3: %v", kind, err)
		}
	}
	img := func(id string) error {
		_, err := w.hosts["h2"].streams[KindImage](transfer.ContextWithSender(ctx, "h1"), transfer.StreamHeader{Kind: KindImage, ID: id, Meta: map[string]string{"migration": "m1"}}, strings.NewReader("x"))
		return err
	}
	if err := img("evil:1"); !errors.Is(err, cluster.ErrForbidden) {
		t.Errorf("an image the record does not need: %v", err)
	}
	// The stream the record calls for goes through.
	set(Transferring)
	if err := restore("h1", "h2", "m1"); err != nil {
		t.Fatalf("the record's own restore: %v", err)
	}
	_, _ = io.Copy(io.Discard, &archive)
}
