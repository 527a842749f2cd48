package migrate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
	"github.com/edgemigrate/orchestrate/transfer"
)

// fakePages is the fake engine with the page path's capability: it logs
// the calls the agent's steps make. PreparePages fails (after logging), so
// that an accepted page channel stops there.
type fakePages struct {
	*enginetest.Fake
	mu    sync.Mutex
	calls []string
}

var _ engine.PageMover = (*fakePages)(nil)

func (f *fakePages) log(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
}

func (f *fakePages) called(call string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Contains(f.calls, call)
}

func (f *fakePages) CheckPages(ctx context.Context, id string) error { return nil }

func (f *fakePages) CheckpointPages(ctx context.Context, id string, w io.Writer, sink engine.PageSink, opts engine.CheckpointOptions) (engine.Stats, error) {
	return engine.Stats{}, engine.ErrNoPageServer
}

func (f *fakePages) PreparePages(ctx context.Context, id string) error {
	f.log("prepare " + id)
	return errors.New("fake: no page directories here")
}

func (f *fakePages) ReceivePages(ctx context.Context, id string, conn io.ReadWriteCloser) (engine.PageStats, error) {
	conn.Close()
	return engine.PageStats{}, errors.New("fake: no page server")
}

func (f *fakePages) DiscardPages(ctx context.Context, id string) error {
	f.log("discard " + id)
	return nil
}

func (f *fakePages) ReplayPages(ctx context.Context, id string, recording io.ReadSeeker) error {
	f.log("replay " + id)
	return nil
}

// pageStreams adds page channels to a fake host's stream handlers.
type pageStreams struct {
	*fakeHost
	pages map[string]transfer.PageHandler
}

func (s pageStreams) HandlePages(kind string, h transfer.PageHandler) { s.pages[kind] = h }

// withPages gives host name a page-capable engine and the page path; it
// returns the engine, the page handlers and the recording directory.
func (w *world) withPages(t *testing.T, name string) (*fakePages, pageStreams, string) {
	h := w.hosts[name]
	fp := &fakePages{Fake: h.eng}
	a := NewAgent(name, fp, streamer{w, name}, nil)
	a.SetAuthority(hostAuth{w.store, name})
	a.recordWait = 100 * time.Millisecond
	dir := filepath.Join(t.TempDir(), "pages")
	a.SetPages(PagesConfig{Dir: dir})
	ps := pageStreams{h, map[string]transfer.PageHandler{}}
	w.mu.Lock()
	h.agent, h.mux = a, http.NewServeMux()
	w.mu.Unlock()
	a.Register(h.mux, ps)
	return fp, ps, dir
}

// A page channel or a pages-restore stream is accepted only while a
// record names this host as target, the sender as source and the
// container, before Confirming, and leaves the method to the source or
// asks for the page path; a refused channel prepares nothing.
func TestPageStreamsNeedARecordNamingTheSender(t *testing.T) {
	w := newWorld(t, "h1", "h2", "h3")
	ctx := context.Background()
	c := w.hosts["h1"].eng.Run("web", "img:1", 1<<20, nil)
	other := w.hosts["h1"].eng.Run("db", "img:1", 1<<20, nil)
	fp, ps, _ := w.withPages(t, "h2")
	_, ps3, _ := w.withPages(t, "h3")
	set := func(phase, method string) {
		w.store.mu.Lock()
		defer w.store.mu.Unlock()
		w.store.recs["m1"] = cluster.MigrationRecord{ID: "m1", Container: c.ID, From: "h1", To: "h2", Phase: phase, Method: method}
	}
	channel := func(s pageStreams, peer, id, container string) error {
		return s.pages[KindPages](transfer.ContextWithSender(ctx, peer), transfer.StreamHeader{Kind: KindPages, ID: id, Meta: map[string]string{"container": container}}, nil)
	}
	restore := func(s pageStreams, peer, id, container string) error {
		_, err := s.streams[KindPagesRestore](transfer.ContextWithSender(ctx, peer),
			transfer.StreamHeader{Kind: KindPagesRestore, ID: id, Meta: map[string]string{"container": container, "name": "web"}}, strings.NewReader("x"))
		return err
	}
	refused := []struct {
		name, phase, method, peer, id, container string
		to                                       pageStreams
	}{
		{"from a member that is not the source", Transferring, "", "h3", "m1", c.ID, ps},
		{"from nobody named", Transferring, "", "", "m1", c.ID, ps},
		{"to a host that is not the target", Transferring, "", "h1", "m1", c.ID, ps3},
		{"for no record", Transferring, "", "h1", "forged", c.ID, ps},
		{"for a container the record does not move", Transferring, "", "h1", "m1", other.ID, ps},
		{"while rolling back", RollingBack, "", "h1", "m1", c.ID, ps},
		{"once confirmed", Confirming, "", "h1", "m1", c.ID, ps},
		{"for a record that asks for export/import", Transferring, MethodDirect, "h1", "m1", c.ID, ps},
	}
	for _, tc := range refused {
		set(tc.phase, tc.method)
		if err := channel(tc.to, tc.peer, tc.id, tc.container); !errors.Is(err, cluster.ErrForbidden) {
			t.Errorf("page channel %s: %v", tc.name, err)
		}
		if err := restore(tc.to, tc.peer, tc.id, tc.container); !errors.Is(err, cluster.ErrForbidden) {
			t.Errorf("pages-restore %s: %v", tc.name, err)
		}
	}
	if len(fp.calls) > 0 {
		t.Fatalf("refused channels reached the engine: %v", fp.calls)
	}
	// The record's own channel gets to the engine (whose fake refuses to
	// prepare), for a record that leaves the method to the source or asks
	// for the page path; its archive finds no page session.
	for _, method := range []string{"", MethodPages} {
		set(Planned, method)
		if err := channel(ps, "h1", "m1", c.ID); err == nil || errors.Is(err, cluster.ErrForbidden) || !fp.called("prepare "+c.ID) {
			t.Fatalf("the record's own channel (method %q): %v, engine calls %v", method, err, fp.calls)
		}
		if err := restore(ps, "h1", "m1", c.ID); err == nil || errors.Is(err, cluster.ErrForbidden) || !strings.Contains(err.Error(), "no page session") {
			t.Fatalf("the record's own archive (method %q): %v", method, err)
		}
	}
}

// The page path's cleanups run inside the leader's record-scoped steps
// and act on that record's container only: abort discards the target's
// page directory, resume first rebuilds the source's pages from its
// recording, and the recording goes once the source copy runs or is gone.
func TestPageHooksFollowTheRecord(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	ctx := context.Background()
	c := w.hosts["h1"].eng.Run("web", "img:1", 1<<20, nil)
	other := w.hosts["h1"].eng.Run("db", "img:1", 1<<20, nil)
	src, _, dir := w.withPages(t, "h1")
	dst, _, _ := w.withPages(t, "h2")
	w.store.recs["back"] = cluster.MigrationRecord{ID: "back", Container: c.ID, From: "h1", To: "h2", Phase: RollingBack}

	// Refused steps touch nothing.
	for _, tc := range []struct{ host, path, container string }{
		{"h2", "/v1/agent/abort", other.ID},
		{"h1", "/v1/agent/abort", c.ID},
		{"h1", "/v1/agent/resume", other.ID},
	} {
		if err := w.Call(ctx, tc.host, tc.path, ContainerRequest{Container: tc.container, Migration: "back"}, nil); err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Fatalf("%s on %s for %s: %v", tc.path, tc.host, tc.container, err)
		}
	}
	if len(src.calls)+len(dst.calls) > 0 {
		t.Fatalf("refused steps reached the engines: %v %v", src.calls, dst.calls)
	}

	if err := w.Call(ctx, "h2", "/v1/agent/abort", ContainerRequest{Container: c.ID, Migration: "back"}, nil); err != nil {
		t.Fatal(err)
	}
	if !dst.called("discard " + c.ID) {
		t.Fatalf("abort did not discard the page directory: %v", dst.calls)
	}

	// The source was frozen by a page-path dump: a kept checkpoint and a
	// recording of its pages.
	if _, err := src.Checkpoint(ctx, c.ID, discard{}, engineKeep()); err != nil {
		t.Fatal(err)
	}
	rec := filepath.Join(dir, c.ID+".pages")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rec, []byte("recording"), 0o600); err != nil {
		t.Fatal(err)
	}
	var st ContainerState
	if err := w.Call(ctx, "h1", "/v1/agent/resume", ContainerRequest{Container: c.ID, Migration: "back"}, &st); err != nil || !st.Running {
		t.Fatalf("resume: %+v %v", st, err)
	}
	if !src.called("replay " + c.ID) {
		t.Fatalf("resume did not rebuild the pages first: %v", src.calls)
	}
	if _, err := os.Stat(rec); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the recording outlived the rollback: %v", err)
	}
}

// A record that names no method runs the source's default, the page path,
// which falls back to export/import before the freeze where it cannot run
// (here: the transfer client has no page channels), and says so. Asked
// for by name, it fails instead, untouched.
func TestPagePathFallsBackOnlyWhenNotAskedFor(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	w.hosts["h1"].eng.Run("web", "img:1", 1<<20, nil)
	w.hosts["h1"].eng.Run("db", "img:1", 1<<20, nil)
	w.withPages(t, "h1")
	co, _ := w.leader(t)
	ctx := context.Background()
	rec, err := co.Migrate(ctx, MigrateRequest{Container: "web", To: "h2"})
	if err != nil {
		t.Fatal(err)
	}
	end := w.waitEnd(t, rec.ID)
	if end.Phase != Done || end.Method != MethodDirect || end.Precopy == nil || end.Precopy.Pages == nil ||
		end.Precopy.Pages.Fallback != "the transfer client has no page channels" {
		t.Fatalf("ended %s with method %q, report %+v", end.Phase, end.Method, end.Precopy)
	}
	w.runningOn(t, "web", "h2")
	rec, err = co.Migrate(ctx, MigrateRequest{Container: "db", To: "h2", Method: MethodPages})
	if err != nil {
		t.Fatal(err)
	}
	end = w.waitEnd(t, rec.ID)
	if end.Phase != RolledBack || !end.Untouched || !strings.Contains(end.Error, "no page channels") {
		t.Fatalf("%+v", end)
	}
	w.runningOn(t, "db", "h1")
}

// The record names the transfer method and its report from the freeze on,
// so that a leader that never sees the source's final report (here the
// source's agent restarted and lost its run mid-restore, and the leader
// changed) still records which method ran.
func TestMethodRecordedAtTheFreeze(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	w.hosts["h1"].eng.Run("web", "img:1", 1<<20, nil)
	w.hosts["h2"].eng.AddImage("img:1")
	gate := make(chan struct{})
	var restoring atomic.Bool
	w.hosts["h2"].eng.FailRestore = func(engine.Container) error {
		restoring.Store(true)
		<-gate
		return nil
	}
	co1, stop1 := w.liveLeader(t)
	rec, err := co1.Migrate(context.Background(), MigrateRequest{Container: "web", To: "h2"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the target to restore", restoring.Load)
	waitFor(t, "the method in the record", func() bool {
		m, err := w.store.Migration(rec.ID)
		return err == nil && m.Method == MethodDirect && m.Precopy != nil && m.Precopy.Method == MethodDirect
	})
	stop1()
	a := w.hosts["h1"].agent
	a.mu.Lock()
	a.runs = map[string]*outRun{} // the source's agent restarted
	a.mu.Unlock()
	close(gate)
	w.liveLeader(t)
	end := w.waitEnd(t, rec.ID)
	if end.Phase != Done || end.Method != MethodDirect || end.Precopy == nil || end.Precopy.Method != MethodDirect {
		t.Fatalf("ended %s with method %q, report %+v", end.Phase, end.Method, end.Precopy)
	}
	w.runningOn(t, "web", "h2")
}

// liveWorld hands the leader migrate-out's lines as the source writes
// them (the world's recorder hands them over only at the end).
type liveWorld struct{ *world }

func (w liveWorld) Stream(ctx context.Context, host, path string, in any) (io.ReadCloser, error) {
	h, err := w.host(host)
	if err != nil {
		return nil, err
	}
	b, _ := json.Marshal(in)
	req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(b)).WithContext(ctx)
	req.Header.Set(cluster.StepHeader, cluster.SignStep(stepPriv, stepTerm, host, http.MethodPost, path, b, time.Now()))
	pr, pw := io.Pipe()
	go func() {
		h.mux.ServeHTTP(&pipeResponse{w: pw, h: http.Header{}}, req)
		pw.Close()
	}()
	return pr, nil
}

// pipeResponse is a ResponseWriter into a pipe.
type pipeResponse struct {
	w *io.PipeWriter
	h http.Header
}

func (p *pipeResponse) Header() http.Header         { return p.h }
func (p *pipeResponse) Write(b []byte) (int, error) { return p.w.Write(b) }
func (p *pipeResponse) WriteHeader(int)             {}
func (p *pipeResponse) Flush()                      {}

// liveLeader is leader over liveWorld.
func (w *world) liveLeader(t *testing.T) (*Coordinator, func()) {
	cfg := DefaultConfig()
	cfg.StepTimeout, cfg.MigrationTimeout, cfg.Tick = 5*time.Second, 20*time.Second, 50*time.Millisecond
	co := NewCoordinator(cfg, w.store, liveWorld{w})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = co.Run(ctx); close(done) }()
	waitFor(t, "the coordinator to lead", co.leading)
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return co, stop
}
