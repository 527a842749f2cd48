package migrate

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
	"github.com/edgemigrate/orchestrate/transfer"
)

// fakeStore is an in-memory replicated state with the FSM's rules for
// migration records (IfPhase, IfAbsent) and events (dedup).
type fakeStore struct {
	mu      sync.Mutex
	members []cluster.Member
	recs    map[string]cluster.MigrationRecord
	hosts   map[string]cluster.Host
	events  map[string]cluster.Event
	// failPut, when set, decides whether a write fails (as a raft apply
	// that timed out).
	failPut func(cluster.MigrationRecord) bool
	changed chan struct{}
	// inventory is the hosts' container reports (newWorld: what each
	// host's engine lists now, as if reports were never stale).
	inventory func() []cluster.HostContainers
}

func (s *fakeStore) Inventory() []cluster.HostContainers { return s.inventory() }

// RefreshReports: the fake's reports are always fresh.
func (s *fakeStore) RefreshReports(context.Context, []string, time.Duration) error { return nil }

func (s *fakeStore) StateChanged() <-chan struct{} { return s.changed }

func (s *fakeStore) poke() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

func (s *fakeStore) Members() []cluster.Member {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]cluster.Member(nil), s.members...)
}

func (s *fakeStore) Migrations() []cluster.MigrationRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []cluster.MigrationRecord
	for _, r := range s.recs {
		out = append(out, r)
	}
	return out
}

func (s *fakeStore) Migration(id string) (cluster.MigrationRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[id]
	if !ok {
		return r, cluster.ErrNotFound
	}
	return r, nil
}

func (s *fakeStore) PutMigration(ctx context.Context, req cluster.PutMigrationRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.recs[req.Record.ID]
	if req.IfAbsent && ok {
		return cluster.ErrConflict
	}
	if req.IfPhase != "" && (!ok || cur.Phase != req.IfPhase) {
		return cluster.ErrConflict
	}
	if s.failPut != nil && s.failPut(req.Record) {
		return errors.New("injected: raft apply timed out")
	}
	s.recs[req.Record.ID] = req.Record
	s.poke()
	return nil
}

func (s *fakeStore) Hosts() []cluster.Host {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []cluster.Host
	for _, h := range s.hosts {
		out = append(out, h)
	}
	return out
}

func (s *fakeStore) SetHost(ctx context.Context, req cluster.SetHostRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.hosts[req.Name]
	h.Name = req.Name
	if req.Cordoned != nil {
		h.Cordoned = *req.Cordoned
	}
	if req.Draining != nil {
		h.Draining = *req.Draining
	}
	s.hosts[req.Name] = h
	return nil
}

func (s *fakeStore) AppendEvent(ctx context.Context, ev cluster.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.events[ev.ID]; ok {
		return cluster.ErrDuplicate
	}
	s.events[ev.ID] = ev
	return nil
}

// fakeHost is one host: a fake engine, the real agent steps, its routes and
// stream handlers.
type fakeHost struct {
	name    string
	eng     *enginetest.Fake
	agent   *Agent
	mux     *http.ServeMux
	streams map[string]transfer.Handler
	down    bool // answers nothing
}

func (h *fakeHost) Handle(kind string, fn transfer.Handler) { h.streams[kind] = fn }

// world wires hosts together: agent calls go to the hosts' muxes, streams
// go through a pipe into the target's handler.
type world struct {
	mu    sync.Mutex
	hosts map[string]*fakeHost
	store *fakeStore
	// unsigned: calls carry no leader's signature (a member, not the
	// leader).
	unsigned bool
}

// The world's leader key: calls are signed with it, and the hosts verify
// them against its public half, as against the term key in raft.
var (
	stepPub, stepPriv, _ = ed25519.GenerateKey(rand.Reader)
	stepTerm             = uint64(7)
)

// hostAuth is a host's Authority over the fake store.
type hostAuth struct {
	s    *fakeStore
	host string
}

func (a hostAuth) LeaderStep(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		key := cluster.TermKey{Term: stepTerm, Leader: "leader", PublicKey: stepPub}
		if err := cluster.VerifyStep(key, r.Header.Get(cluster.StepHeader), a.host, r.Method, r.URL.Path, body, time.Now()); err != nil {
			cluster.WriteError(w, err)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		h(w, r)
	}
}

func (a hostAuth) Migration(id string) (cluster.MigrationRecord, error) {
	r, err := a.s.Migration(id)
	if err != nil {
		return r, fmt.Errorf("migration %s: %w", id, err)
	}
	return r, nil
}

func (a hostAuth) Member(name string) (cluster.Member, bool) {
	for _, m := range a.s.Members() {
		if m.Name == name {
			return m, true
		}
	}
	return cluster.Member{}, false
}

func (w *world) host(name string) (*fakeHost, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	h, ok := w.hosts[name]
	if !ok || h.down {
		return nil, fmt.Errorf("dial %s: connection refused", name)
	}
	return h, nil
}

func (w *world) do(ctx context.Context, host, method, path string, in any) (*httptest.ResponseRecorder, error) {
	h, err := w.host(host)
	if err != nil {
		return nil, err
	}
	var b []byte
	if in != nil {
		b, _ = json.Marshal(in)
	}
	req := httptest.NewRequest(method, path, bytes.NewReader(b)).WithContext(ctx)
	if !w.unsigned {
		req.Header.Set(cluster.StepHeader, cluster.SignStep(stepPriv, stepTerm, host, method, path, b, time.Now()))
	}
	rec := httptest.NewRecorder()
	h.mux.ServeHTTP(rec, req)
	if rec.Code >= 300 {
		return nil, fmt.Errorf("%s %s on %s: %s", method, path, host, rec.Body.String())
	}
	return rec, nil
}

func (w *world) Call(ctx context.Context, host, path string, in, out any) error {
	rec, err := w.do(ctx, host, http.MethodPost, path, in)
	if err != nil || out == nil {
		return err
	}
	return json.NewDecoder(rec.Body).Decode(out)
}

func (w *world) Stream(ctx context.Context, host, path string, in any) (io.ReadCloser, error) {
	rec, err := w.do(ctx, host, http.MethodPost, path, in)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(rec.Body), nil
}

// streamer is the source's transfer client: it pipes produce into the
// target's handler, as the SSH stream does (without the network), naming
// the source as the authenticated sender.
type streamer struct {
	w    *world
	from string
}

func (s streamer) Stream(ctx context.Context, peer string, hdr transfer.StreamHeader, produce func(io.Writer) error) ([]byte, transfer.StreamStats, error) {
	h, err := s.w.host(peer)
	if err != nil {
		return nil, transfer.StreamStats{}, err
	}
	ctx = transfer.ContextWithSender(ctx, s.from)
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(produce(pw)) }()
	res, err := h.streams[hdr.Kind](ctx, hdr, pr)
	pr.CloseWithError(io.ErrUnexpectedEOF)
	return res, transfer.StreamStats{Compression: "none"}, err
}

func newWorld(t *testing.T, names ...string) *world {
	w := &world{hosts: map[string]*fakeHost{}, store: &fakeStore{recs: map[string]cluster.MigrationRecord{},
		hosts: map[string]cluster.Host{}, events: map[string]cluster.Event{}, changed: make(chan struct{}, 1)}}
	for _, n := range names {
		h := &fakeHost{name: n, eng: enginetest.NewFake(), mux: http.NewServeMux(), streams: map[string]transfer.Handler{}}
		a := NewAgent(n, h.eng, streamer{w, n}, nil)
		a.SetAuthority(hostAuth{w.store, n})
		a.recordWait = 100 * time.Millisecond
		h.agent = a
		a.Register(h.mux, h)
		w.hosts[n] = h
		w.store.members = append(w.store.members, cluster.Member{Name: n, Status: cluster.StatusAlive, Engine: "fake", Arch: "amd64",
			CRIUVersion: "4.2.1", MemoryTotal: 8 << 30, TransferAddr: n})
	}
	w.store.inventory = w.reports
	return w
}

// reports lists every host's engine, down or not: a dead host's last
// report stays in the replicated state.
func (w *world) reports() []cluster.HostContainers {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []cluster.HostContainers
	for name, h := range w.hosts {
		cs, _ := h.eng.List(context.Background())
		out = append(out, cluster.HostContainers{Host: name, Containers: cs})
	}
	return out
}

// leader runs a coordinator term until the test ends (or stop is called).
func (w *world) leader(t *testing.T) (*Coordinator, func()) {
	cfg := DefaultConfig()
	cfg.StepTimeout, cfg.MigrationTimeout, cfg.Tick = 5*time.Second, 20*time.Second, 50*time.Millisecond
	co := NewCoordinator(cfg, w.store, w)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = co.Run(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for !co.leading() {
		if time.Now().After(deadline) {
			t.Fatal("coordinator did not start")
		}
		time.Sleep(time.Millisecond)
	}
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return co, stop
}

// setDown makes a host answer nothing and gossip report it dead (or brings
// it back).
func (w *world) setDown(name string, down bool) {
	w.mu.Lock()
	w.hosts[name].down = down
	w.mu.Unlock()
	w.store.mu.Lock()
	defer w.store.mu.Unlock()
	for i := range w.store.members {
		if w.store.members[i].Name == name {
			w.store.members[i].Status, w.store.members[i].Since = cluster.StatusAlive, time.Now()
			if down {
				w.store.members[i].Status = cluster.StatusDead
			}
		}
	}
}

func (w *world) waitEnd(t *testing.T, id string) cluster.MigrationRecord {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := w.store.Migration(id)
		if err == nil && Terminal(r.Phase) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("migration %s did not end: %+v", id, r)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// runningOn checks the invariant for one container: running on exactly
// want, and existing nowhere else.
func (w *world) runningOn(t *testing.T, name, want string) {
	t.Helper()
	for n, h := range w.hosts {
		c, err := h.eng.Inspect(context.Background(), name)
		switch {
		case n == want && (err != nil || !c.Running):
			t.Errorf("%s does not run on %s (%v)", name, n, err)
		case n != want && err == nil:
			t.Errorf("%s exists on %s too (running=%v)", name, n, c.Running)
		}
	}
}

func TestCoordinatorHappyPath(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	c := w.hosts["h1"].eng.Run("web", "img:1", 1<<20, nil)
	mem, _ := w.hosts["h1"].eng.Memory(c.ID)
	co, _ := w.leader(t)
	rec, err := co.Migrate(context.Background(), MigrateRequest{Container: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if rec.To != "h2" {
		t.Fatalf("placed on %s", rec.To)
	}
	end := w.waitEnd(t, rec.ID)
	if end.Phase != Done {
		t.Fatalf("%+v", end)
	}
	w.runningOn(t, "web", "h2")
	got, _ := w.hosts["h2"].eng.Memory(c.ID)
	if !bytes.Equal(got, mem) {
		t.Fatal("memory changed on the way")
	}
	// The image was missing on h2 and went first.
	if len(end.History) < 2 || end.History[1].Note != "image sent to h2" {
		t.Errorf("history %+v lacks the image step", end.History)
	}
}

func TestCoordinatorRollbacks(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(w *world)
		cause string
	}{
		{"checkpoint fails", func(w *world) {
			w.hosts["h1"].eng.FailCheckpoint = func(string) error { return fmt.Errorf("%w: injected", engine.ErrCRIU) }
		}, "criu failed"},
		{"restore fails", func(w *world) {
			w.hosts["h2"].eng.FailRestore = func(engine.Container) error { return errors.New("injected restore failure") }
		}, "injected restore failure"},
		{"restore runs but the target dies before confirmation", func(w *world) {
			w.hosts["h2"].eng.FailRestore = func(engine.Container) error {
				w.setDown("h2", true) // answers nothing, gossip says dead
				go func() {           // and comes back, so the rollback can clean it
					time.Sleep(300 * time.Millisecond)
					w.setDown("h2", false)
				}()
				return nil
			}
		}, "not alive to confirm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, "h1", "h2")
			w.hosts["h1"].eng.Run("db", "img:1", 1<<20, nil)
			tc.setup(w)
			co, _ := w.leader(t)
			rec, err := co.Migrate(context.Background(), MigrateRequest{Container: "db", To: "h2"})
			if err != nil {
				t.Fatal(err)
			}
			end := w.waitEnd(t, rec.ID)
			if end.Phase != RolledBack || !bytes.Contains([]byte(end.Error), []byte(tc.cause)) {
				t.Fatalf("ended %s with %q, want RolledBack with %q", end.Phase, end.Error, tc.cause)
			}
			w.runningOn(t, "db", "h1")
		})
	}
}

// A new leader finds records a dead leader left mid-flight and settles
// them by asking the target: running there rolls forward, else back.
func TestCoordinatorTakesOver(t *testing.T) {
	ctx := context.Background()
	for _, restored := range []bool{false, true} {
		t.Run(fmt.Sprintf("restored=%v", restored), func(t *testing.T) {
			w := newWorld(t, "h1", "h2")
			c := w.hosts["h1"].eng.Run("app", "img:1", 1<<20, nil)
			w.hosts["h2"].eng.AddImage("img:1")
			var archive bytes.Buffer
			if _, err := w.hosts["h1"].eng.Checkpoint(ctx, c.ID, &archive, engine.CheckpointOptions{Keep: true}); err != nil {
				t.Fatal(err)
			}
			if restored {
				if _, _, err := w.hosts["h2"].eng.Restore(ctx, &archive, engine.RestoreOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			rec := cluster.MigrationRecord{ID: "m1", Container: c.ID, From: "h1", To: "h2", Phase: Transferring,
				StartedAt: time.Now(), Name: "app"}
			w.store.recs[rec.ID] = rec
			w.leader(t)
			end := w.waitEnd(t, "m1")
			want, where := RolledBack, "h1"
			if restored {
				want, where = Done, "h2"
			}
			if end.Phase != want {
				t.Fatalf("ended %s (%s), want %s", end.Phase, end.Error, want)
			}
			w.runningOn(t, "app", where)
		})
	}
}

func TestCoordinatorDrainAndRefusals(t *testing.T) {
	w := newWorld(t, "h1", "h2", "h3")
	for i := 0; i < 4; i++ {
		w.hosts["h1"].eng.Run(fmt.Sprintf("c%d", i), "img:1", 1<<20, nil)
	}
	w.hosts["h1"].eng.Run("pinned", "img:1", 1<<20, map[string]string{"orchestrate.migrate": "false"})
	co, _ := w.leader(t)
	ctx := context.Background()
	if err := w.store.SetHost(ctx, cluster.SetHostRequest{Name: "h3", Cordoned: ptr(true)}); err != nil {
		t.Fatal(err)
	}
	if _, err := co.Migrate(ctx, MigrateRequest{Container: "c0", To: "h3"}); !errors.Is(err, cluster.ErrCordoned) {
		t.Fatalf("to a cordoned host: %v", err)
	}
	if _, err := co.Migrate(ctx, MigrateRequest{Container: "nope"}); !errors.Is(err, cluster.ErrNotFound) {
		t.Fatalf("unknown container: %v", err)
	}
	res, err := co.Drain(ctx, DrainRequest{Host: "h1", Parallel: 2})
	if err != nil {
		t.Fatal(err)
	}
	moved := 0
	for _, m := range res.Moves {
		switch {
		case m.Name == "pinned":
			if m.Skipped == "" {
				t.Fatal("pinned was not skipped")
			}
		case m.To != "h2":
			t.Fatalf("%s planned to %s; h3 is cordoned", m.Name, m.To)
		default:
			if end := w.waitEnd(t, m.Migration); end.Phase != Done {
				t.Fatalf("%+v", end)
			}
			moved++
		}
	}
	if moved != 4 {
		t.Fatalf("moved %d of 4", moved)
	}
	if h := w.store.hosts["h1"]; !h.Cordoned {
		t.Fatal("h1 not cordoned")
	}
	w.runningOn(t, "pinned", "h1")
}

func ptr[T any](v T) *T { return &v }

// A target that was dead while its migration rolled back still holds a
// copy; when its agent comes back, Reconcile removes it.
func TestReconcileAfterDeadTarget(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t, "h1", "h2")
	c := w.hosts["h1"].eng.Run("svc", "img:1", 1<<20, nil)
	w.hosts["h2"].eng.AddImage("img:1")
	var archive bytes.Buffer
	if _, err := w.hosts["h1"].eng.Checkpoint(ctx, c.ID, &archive, engine.CheckpointOptions{Keep: true, LeaveRunning: true}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.hosts["h2"].eng.Restore(ctx, &archive, engine.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	recs := []cluster.MigrationRecord{
		{ID: "old", Container: c.ID, From: "h2", To: "h1", Phase: Done, StartedAt: time.Now().Add(-time.Hour)},
		{ID: "m2", Container: c.ID, From: "h1", To: "h2", Phase: RolledBack, StartedAt: time.Now()},
	}
	a := NewAgent("h2", w.hosts["h2"].eng, streamer{w, "h2"}, nil)
	if got := a.Reconcile(ctx, recs); len(got) != 1 || got[0] != "svc" {
		t.Fatalf("removed %v", got)
	}
	w.runningOn(t, "svc", "h1")
	// On the source, nothing is removed: its copy is the one that runs.
	if got := NewAgent("h1", w.hosts["h1"].eng, streamer{w, "h1"}, nil).Reconcile(ctx, recs); len(got) != 0 {
		t.Fatalf("source removed %v", got)
	}
}

// Placement knows each host's architecture from gossip: a checkpoint never
// goes to a host of another one, asked for or chosen.
func TestPlacementRefusesAnotherArchitecture(t *testing.T) {
	w := newWorld(t, "h1", "arm", "h3")
	for i := range w.store.members {
		if w.store.members[i].Name == "arm" {
			w.store.members[i].Arch = "arm64"
			w.store.members[i].MemoryTotal = 64 << 30 // the roomiest: placement would like it
		}
	}
	w.hosts["h1"].eng.Run("web", "img:1", 1<<20, nil)
	co, _ := w.leader(t)
	ctx := context.Background()
	_, err := co.Migrate(ctx, MigrateRequest{Container: "web", To: "arm"})
	if !errors.Is(err, cluster.ErrInvalid) || !strings.Contains(err.Error(), "arch arm64, container needs amd64") {
		t.Fatalf("to the arm64 host: %v", err)
	}
	rec, err := co.Migrate(ctx, MigrateRequest{Container: "web"})
	if err != nil || rec.To != "h3" {
		t.Fatalf("placed on %q: %v", rec.To, err)
	}
	if end := w.waitEnd(t, rec.ID); end.Phase != Done {
		t.Fatalf("%+v", end)
	}
}
