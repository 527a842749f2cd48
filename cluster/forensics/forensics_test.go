package forensics

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
	"github.com/edgemigrate/orchestrate/transfer"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestPrune(t *testing.T) {
	rec := func(id, host string, age time.Duration) cluster.SnapshotRecord {
		return cluster.SnapshotRecord{ID: id, StoreHost: host, At: t0.Add(-age)}
	}
	recs := []cluster.SnapshotRecord{
		rec("a", "h1", 5*time.Hour), rec("b", "h1", 4*time.Hour), rec("c", "h1", 3*time.Hour),
		rec("d", "h1", time.Hour), rec("x", "h2", 10*time.Hour),
	}
	tests := []struct {
		name string
		r    Retention
		want []string
	}{
		{"no bounds keep all", Retention{}, nil},
		{"count keeps the newest", Retention{Count: 2}, []string{"a", "b"}},
		{"count above the total", Retention{Count: 9}, nil},
		{"age drops the old", Retention{MaxAge: 210 * time.Minute}, []string{"a", "b"}},
		{"both: the union", Retention{Count: 3, MaxAge: 270 * time.Minute}, []string{"a"}},
		{"both: count wins", Retention{Count: 1, MaxAge: 24 * time.Hour}, []string{"a", "b", "c"}},
		{"other hosts' records are never chosen", Retention{Count: 1, MaxAge: time.Minute}, []string{"a", "b", "c", "d"}},
	}
	for _, tc := range tests {
		got := Prune(recs, "h1", t0, tc.r)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: Prune = %v, want %v", tc.name, got, tc.want)
		}
	}
	if got := Prune(recs, "h3", t0, Retention{Count: 1}); got != nil {
		t.Errorf("a host without records prunes %v", got)
	}
}

func TestValidID(t *testing.T) {
	for id, want := range map[string]bool{
		NewID(t0): true, "snap-1": true, "": false, "../x": false, "a/b": false, "A": false, "x.tar": false,
		strings.Repeat("a", 101): false,
	} {
		if validID(id) != want {
			t.Errorf("validID(%q) = %v", id, !want)
		}
	}
}

// failingReader yields data and then the transfer layer's verification error.
type failingReader struct {
	r   io.Reader
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

func TestStoreReceive(t *testing.T) {
	st := &store{dir: filepath.Join(t.TempDir(), StoreDir)}
	ctx := context.Background()
	data := bytes.Repeat([]byte("checkpoint"), 1000)
	got, err := st.receive(ctx, transfer.StreamHeader{Kind: KindSnapshot, ID: "snap-1"}, bytes.NewReader(data))
	sum := sha256.Sum256(data)
	if err != nil || got.Size != int64(len(data)) || got.SHA256 != hex.EncodeToString(sum[:]) || got.File != "snap-1.tar" {
		t.Fatalf("receive = %+v, %v", got, err)
	}
	if _, err := st.receive(ctx, transfer.StreamHeader{Kind: KindSnapshot, ID: "snap-1"}, bytes.NewReader(data)); !errors.Is(err, cluster.ErrConflict) {
		t.Fatalf("second receive of one id: %v", err)
	}
	// A stream that fails verification leaves nothing behind.
	_, err = st.receive(ctx, transfer.StreamHeader{Kind: KindSnapshot, ID: "snap-2"}, &failingReader{bytes.NewReader(data), transfer.ErrVerify})
	if !errors.Is(err, transfer.ErrVerify) {
		t.Fatalf("receive of a bad stream: %v", err)
	}
	if _, err := st.receive(ctx, transfer.StreamHeader{Kind: KindSnapshot, ID: "../evil"}, bytes.NewReader(data)); err == nil {
		t.Fatal("receive accepted a path escape")
	}
	if names := ls(t, st.dir); !slices.Equal(names, []string{"snap-1.tar"}) {
		t.Fatalf("store holds %v", names)
	}
	// Orphans: only unrecorded files older than the grace.
	old := filepath.Join(st.dir, "snap-old.tar")
	stale := filepath.Join(st.dir, "snap-old2.tar.partial")
	for _, p := range []string{old, stale} {
		_ = os.WriteFile(p, []byte("x"), 0o600)
		_ = os.Chtimes(p, time.Now().Add(-time.Hour), time.Now().Add(-time.Hour))
	}
	_ = os.WriteFile(filepath.Join(st.dir, "snap-new.tar"), []byte("x"), 0o600)
	orphans := st.orphans(map[string]bool{"snap-1": true}, time.Now(), 10*time.Minute)
	sort.Strings(orphans)
	if !slices.Equal(orphans, []string{old, stale}) {
		t.Fatalf("orphans = %v", orphans)
	}
}

func ls(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// world is an in-process cluster: each host's agent serves its own mux on
// a unix socket, PeerClient dials it, the replicated state is one shared
// map, and streams go straight into the target's handler.
type world struct {
	t *testing.T
	// leader signs its steps with priv for term; every host verifies them
	// against pub, as cluster.LeaderStep does.
	leader string
	term   uint64
	pub    ed25519.PublicKey
	priv   ed25519.PrivateKey
	mu     sync.Mutex
	recs   map[string]cluster.SnapshotRecord
	locks  map[string]cluster.Lock
	migs   []cluster.MigrationRecord
	hosts  map[string]*simHost
	// noReports makes PS show nothing, as right after a cluster starts or
	// before a host reports a container started a moment ago.
	noReports bool
}

type simHost struct {
	name    string
	sock    string
	mux     *http.ServeMux
	eng     Engine
	handler map[string]transfer.Handler
	agent   *Agent
	w       *world
}

func newWorld(t *testing.T, names ...string) *world { return newWorldWith(t, nil, names...) }

// newWorldWith is newWorld with each host's engine made by mk (nil: a
// plain fake engine holding the image "img").
func newWorldWith(t *testing.T, mk func(host string) Engine, names ...string) *world {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	w := &world{t: t, leader: names[0], term: 3, pub: pub, priv: priv,
		recs: map[string]cluster.SnapshotRecord{}, locks: map[string]cluster.Lock{}, hosts: map[string]*simHost{}}
	dir, err := os.MkdirTemp("", "fx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, n := range names {
		h := &simHost{name: n, sock: filepath.Join(dir, n+".sock"), mux: http.NewServeMux(), handler: map[string]transfer.Handler{}, w: w}
		if mk != nil {
			h.eng = mk(n)
		} else {
			fake := enginetest.NewFake()
			fake.AddImage("img")
			h.eng = fake
		}
		w.hosts[n] = h
		cfg := DefaultConfig()
		cfg.Host, cfg.DataDir = n, filepath.Join(dir, n)
		cfg.ReplicaWait = 200 * time.Millisecond
		h.agent = NewAgent(cfg, engineOf(h), hostStreamer{w, n}, (*hostView)(h))
		h.agent.Register(h.mux, h)
		NewService((*hostView)(h), "").Register(h.mux)
		ln, err := net.Listen("unix", h.sock)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: h.mux}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	return w
}

// engineOf lets a test swap a host's engine after the agent was made.
type engineProxy struct{ h *simHost }

func engineOf(h *simHost) Engine {
	if _, ok := h.eng.(engine.CheckpointImages); ok {
		return imageProxy{engineProxy{h}}
	}
	return engineProxy{h}
}

// imageProxy is engineProxy for an engine that builds checkpoint images.
type imageProxy struct{ engineProxy }

func (e imageProxy) images() engine.CheckpointImages { return e.h.eng.(engine.CheckpointImages) }
func (e imageProxy) HostInfo(ctx context.Context) (engine.HostInfo, error) {
	return e.images().HostInfo(ctx)
}
func (e imageProxy) LoadImage(ctx context.Context, r io.Reader) (string, error) {
	return e.images().LoadImage(ctx, r)
}
func (e imageProxy) PushImage(ctx context.Context, ref string, o engine.RegistryOptions) error {
	return e.images().PushImage(ctx, ref, o)
}

func (e engineProxy) Checkpoint(ctx context.Context, id string, w io.Writer, o engine.CheckpointOptions) (engine.Stats, error) {
	return e.h.eng.Checkpoint(ctx, id, w, o)
}
func (e engineProxy) List(ctx context.Context) ([]engine.Container, error) { return e.h.eng.List(ctx) }
func (e engineProxy) Resume(ctx context.Context, id string) error          { return e.h.eng.Resume(ctx, id) }
func (e engineProxy) Inspect(ctx context.Context, id string) (engine.Container, error) {
	return e.h.eng.Inspect(ctx, id)
}

func (h *simHost) Handle(kind string, hd transfer.Handler) { h.handler[kind] = hd }

func (w *world) client(host string) *cluster.Client {
	cl, err := cluster.NewClient(w.hosts[host].sock, nil)
	if err != nil {
		w.t.Fatal(err)
	}
	return cl
}

// hostStreamer is one host's Streamer: its streams carry its name as the
// sender, as the transfer server's key binding does.
type hostStreamer struct {
	w    *world
	from string
}

func (s hostStreamer) Stream(ctx context.Context, peer string, h transfer.StreamHeader, produce func(io.Writer) error) ([]byte, transfer.StreamStats, error) {
	return s.w.Stream(transfer.ContextWithSender(ctx, s.from), peer, h, produce)
}

// Stream implements Streamer: produce's output goes to the target's handler;
// a failed produce makes the handler's reader fail as the transfer layer's
// verification would.
func (w *world) Stream(ctx context.Context, peer string, h transfer.StreamHeader, produce func(io.Writer) error) ([]byte, transfer.StreamStats, error) {
	target := w.hosts[strings.TrimSuffix(peer, ":7922")]
	if target == nil {
		return nil, transfer.StreamStats{}, fmt.Errorf("no peer %s", peer)
	}
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := produce(pw); err != nil {
			pw.CloseWithError(fmt.Errorf("%w: aborted: %v", transfer.ErrVerify, err))
			return
		}
		pw.Close()
	}()
	res, err := target.handler[h.Kind](ctx, h, pr)
	pr.Close()
	<-done // as transfer.Client.Stream, return only once produce has
	if err != nil {
		return nil, transfer.StreamStats{}, fmt.Errorf("%w: %v", transfer.ErrRemote, err)
	}
	return res, transfer.StreamStats{}, nil
}

// hostView is one host's view of the world (the Cluster interface).
type hostView simHost

func (v *hostView) Name() string { return v.name }
func (v *hostView) Members() []cluster.Member {
	var out []cluster.Member
	for n := range v.w.hosts {
		out = append(out, cluster.Member{Name: n, Status: cluster.StatusAlive, TransferAddr: n + ":7922", Engine: "fake"})
	}
	return out
}
func (v *hostView) PeerClient(name string) (*cluster.Client, error) {
	if v.w.hosts[name] == nil {
		return nil, fmt.Errorf("host %s: %w", name, cluster.ErrNotFound)
	}
	return v.w.client(name), nil
}
func (v *hostView) IsLeader() bool { return v.w.leader == v.name }
func (v *hostView) LeaderClient() (*cluster.Client, error) {
	return v.w.client(v.w.leader), nil
}

// StepClient signs only on the leader, as cluster.Cluster's does.
func (v *hostView) StepClient(name string) (*cluster.Client, error) {
	cl, err := v.PeerClient(name)
	if err != nil || !v.IsLeader() {
		return cl, err
	}
	return cl.WithStepKey(v.w.priv, v.w.term, name), nil
}
func (v *hostView) LeaderStep(h http.HandlerFunc) http.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		key := cluster.TermKey{Term: v.w.term, Leader: v.w.leader, PublicKey: v.w.pub}
		if err := cluster.VerifyStep(key, r.Header.Get(cluster.StepHeader), v.name, r.Method, r.URL.Path, body, time.Now()); err != nil {
			cluster.WriteError(rw, err)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		h(rw, r)
	}
}

// RefreshReports is every host reporting what it runs now.
func (v *hostView) RefreshReports(context.Context, []string, time.Duration) error {
	v.w.mu.Lock()
	defer v.w.mu.Unlock()
	v.w.noReports = false
	return nil
}

func (v *hostView) PS(ctx context.Context) cluster.PSResult {
	var res cluster.PSResult
	v.w.mu.Lock()
	stale := v.w.noReports
	v.w.mu.Unlock()
	if stale {
		return res
	}
	for n, h := range v.w.hosts {
		cs, _ := h.eng.List(ctx)
		for _, c := range cs {
			res.Containers = append(res.Containers, cluster.PSEntry{Host: n, Name: c.Name, ID: c.ID, State: c.State})
		}
	}
	return res
}
func (v *hostView) Snapshots() []cluster.SnapshotRecord {
	v.w.mu.Lock()
	defer v.w.mu.Unlock()
	var out []cluster.SnapshotRecord
	for _, r := range v.w.recs {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out
}
func (v *hostView) Snapshot(id string) (cluster.SnapshotRecord, error) {
	v.w.mu.Lock()
	defer v.w.mu.Unlock()
	r, ok := v.w.recs[id]
	if !ok {
		return r, fmt.Errorf("snapshot %s: %w", id, cluster.ErrNotFound)
	}
	return r, nil
}
func (v *hostView) PutSnapshot(ctx context.Context, rec cluster.SnapshotRecord) error {
	v.w.mu.Lock()
	defer v.w.mu.Unlock()
	if _, ok := v.w.recs[rec.ID]; ok {
		return cluster.ErrConflict
	}
	v.w.recs[rec.ID] = rec
	return nil
}
func (v *hostView) Migrations() []cluster.MigrationRecord {
	v.w.mu.Lock()
	defer v.w.mu.Unlock()
	return slices.Clone(v.w.migs)
}
func (v *hostView) DeleteSnapshots(ctx context.Context, ids []string) error {
	v.w.mu.Lock()
	defer v.w.mu.Unlock()
	for _, id := range ids {
		delete(v.w.recs, id)
	}
	return nil
}

func (v *hostView) AcquireLock(ctx context.Context, req cluster.AcquireLockRequest) error {
	v.w.mu.Lock()
	defer v.w.mu.Unlock()
	l, ok := v.w.locks[req.Name]
	if !ok {
		l = cluster.Lock{Name: req.Name, Limit: req.Limit, Holders: map[string]cluster.LockHolder{}}
	}
	if _, held := l.Holders[req.Holder]; !held && len(l.Holders) >= l.Limit {
		return cluster.ErrConflict
	}
	l.Holders[req.Holder] = cluster.LockHolder{Holder: req.Holder, Reason: req.Reason, AcquiredAt: req.At}
	v.w.locks[req.Name] = l
	return nil
}
func (v *hostView) ReleaseLock(ctx context.Context, name, holder string) error {
	v.w.mu.Lock()
	defer v.w.mu.Unlock()
	l, ok := v.w.locks[name]
	if _, held := l.Holders[holder]; !ok || !held {
		return cluster.ErrNotFound
	}
	delete(l.Holders, holder)
	if len(l.Holders) == 0 {
		delete(v.w.locks, name)
	}
	return nil
}
func (v *hostView) Locks() []cluster.Lock {
	v.w.mu.Lock()
	defer v.w.mu.Unlock()
	var out []cluster.Lock
	for _, l := range v.w.locks {
		l.Holders = maps.Clone(l.Holders)
		out = append(out, l)
	}
	return out
}

// brokenEngine writes part of an archive and then fails.
type brokenEngine struct{ Engine }

func (b brokenEngine) Checkpoint(ctx context.Context, id string, w io.Writer, o engine.CheckpointOptions) (engine.Stats, error) {
	_, _ = w.Write(bytes.Repeat([]byte{1}, 100000))
	return engine.Stats{}, fmt.Errorf("%w: dump failed halfway", engine.ErrCRIU)
}

func TestCheckpointToStreamAndStore(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	ctx := context.Background()
	web := w.hosts["h1"].eng.(*enginetest.Fake).Run("web", "img", 1<<20, nil)

	// Streamed through h2's agent from h1, where web runs.
	var buf bytes.Buffer
	res, err := StreamCheckpoint(ctx, w.client("h2"), CheckpointRequest{Container: "web", LeaveRunning: true}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	if res.Host != "h1" || res.Name != "web" || res.Size != int64(buf.Len()) || res.SHA256 != hex.EncodeToString(sum[:]) || !res.LeaveRunning {
		t.Fatalf("result %+v for %d bytes", res, buf.Len())
	}
	if c, _ := w.hosts["h1"].eng.Inspect(ctx, web.ID); !c.Running {
		t.Fatal("web stopped after a leave-running checkpoint")
	}

	// Refusals: a container in the middle of a migration, a missing one, a
	// missing store host.
	w.mu.Lock()
	w.migs = []cluster.MigrationRecord{{ID: "m1", Container: web.ID, Phase: "Done"}, {ID: "m2", Container: web.ID, Phase: "Transferring"}}
	w.mu.Unlock()
	if _, err := StreamCheckpoint(ctx, w.client("h2"), CheckpointRequest{Container: "web", LeaveRunning: true}, io.Discard); !errors.Is(err, cluster.ErrConflict) {
		t.Fatalf("checkpoint during a migration: %v", err)
	}
	w.mu.Lock()
	w.migs = w.migs[:1]
	w.mu.Unlock()
	if _, err := StreamCheckpoint(ctx, w.client("h2"), CheckpointRequest{Container: "nope"}, io.Discard); !errors.Is(err, cluster.ErrNotFound) {
		t.Fatalf("checkpoint of a missing container: %v", err)
	}
	if _, err := StoreCheckpoint(ctx, w.client("h1"), CheckpointRequest{Container: "web", StoreHost: "h9"}); !errors.Is(err, cluster.ErrNotFound) {
		t.Fatalf("store on a missing host: %v", err)
	}

	// Into h2's store, retention 2: the oldest goes, records match files.
	var ids []string
	for i := 0; i < 3; i++ {
		rec, err := StoreCheckpoint(ctx, w.client("h1"), CheckpointRequest{Container: "web", LeaveRunning: true, StoreHost: "h2",
			Reason: "test", Retention: &Retention{Count: 2}})
		if err != nil {
			t.Fatal(err)
		}
		if rec.StoreHost != "h2" || rec.Host != "h1" || rec.Size == 0 || rec.Reason != "test" {
			t.Fatalf("record %+v", rec)
		}
		ids = append(ids, rec.ID)
	}
	recs, err := Snapshots(ctx, w.client("h1"))
	if err != nil {
		t.Fatal(err)
	}
	var got, files []string
	for _, r := range recs {
		got = append(got, r.ID)
		files = append(files, r.File)
	}
	sort.Strings(got)
	want := slices.Clone(ids[1:])
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Fatalf("records %v, want %v", got, want)
	}
	sort.Strings(files)
	if on := ls(t, w.hosts["h2"].agent.st.dir); !slices.Equal(on, files) {
		t.Fatalf("files %v, records name %v", on, files)
	}

	// Fetched back through h1's agent, verified against the record.
	buf.Reset()
	if _, err := FetchSnapshot(ctx, w.client("h1"), ids[2], &buf); err != nil || buf.Len() == 0 {
		t.Fatalf("fetch: %v (%d bytes)", err, buf.Len())
	}
	if _, err := FetchSnapshot(ctx, w.client("h1"), ids[0], io.Discard); !errors.Is(err, cluster.ErrNotFound) {
		t.Fatalf("fetch of a pruned snapshot: %v", err)
	}

	// Removed by the operator, through h1: the record and the file go.
	if err := RemoveSnapshot(ctx, w.client("h1"), ids[1]); err != nil {
		t.Fatal(err)
	}
	if err := RemoveSnapshot(ctx, w.client("h1"), ids[1]); !errors.Is(err, cluster.ErrNotFound) {
		t.Fatalf("second removal: %v", err)
	}
	if on := ls(t, w.hosts["h2"].agent.st.dir); !slices.Equal(on, []string{ids[2] + ".tar"}) || len(w.recs) != 1 {
		t.Fatalf("after removal: files %v, %d records", on, len(w.recs))
	}

	// The policy hook, called on h1 (the leader, say) for a container on h1
	// itself: the snapshot goes elsewhere (h2), not onto the host being
	// evacuated.
	s := &Snapshotter{C: (*hostView)(w.hosts["h1"])}
	rec, err := s.Take(ctx, "h1", web.ID, "spot evacuation")
	if err != nil || rec.StoreHost != "h2" || !rec.LeaveRunning || rec.Reason != "spot evacuation" {
		t.Fatalf("hook snapshot %+v, %v", rec, err)
	}
	if n := len(ls(t, w.hosts["h2"].agent.st.dir)); n != 2 {
		t.Fatalf("%d files after the hook's snapshot (default retention keeps 10)", n)
	}

	// A snapshot that stops its container and then fails (here: the store
	// cannot write) resumes the container.
	storeDir := w.hosts["h2"].agent.st.dir
	if err := os.Rename(storeDir, storeDir+".away"); err != nil {
		t.Fatal(err)
	}
	_ = os.WriteFile(storeDir, nil, 0o600)
	if _, err := StoreCheckpoint(ctx, w.client("h1"), CheckpointRequest{Container: "web", StoreHost: "h2"}); err == nil {
		t.Fatal("stored into a store that cannot be written")
	}
	if c, _ := w.hosts["h1"].eng.Inspect(ctx, web.ID); !c.Running {
		t.Fatalf("web left %s after a failed stopping snapshot", c.State)
	}
	os.Remove(storeDir)
	if err := os.Rename(storeDir+".away", storeDir); err != nil {
		t.Fatal(err)
	}

	// A checkpoint that fails halfway: the stream says so, the store keeps
	// nothing and records nothing.
	w.hosts["h1"].eng = brokenEngine{w.hosts["h1"].eng}
	_, err = StreamCheckpoint(ctx, w.client("h2"), CheckpointRequest{Container: "web", LeaveRunning: true}, io.Discard)
	if !errors.Is(err, ErrIncomplete) || !strings.Contains(err.Error(), "dump failed halfway") {
		t.Fatalf("broken stream: %v", err)
	}
	before := len(w.recs)
	if _, err := StoreCheckpoint(ctx, w.client("h1"), CheckpointRequest{Container: "web", LeaveRunning: true, StoreHost: "h2"}); err == nil {
		t.Fatal("a failed checkpoint was stored")
	}
	if len(w.recs) != before || len(ls(t, w.hosts["h2"].agent.st.dir)) != before {
		t.Fatalf("after a failed store: %d records, files %v", len(w.recs), ls(t, w.hosts["h2"].agent.st.dir))
	}
}

// TestRunAppliesAgeRetention: records past max_age go, with their files,
// without a new snapshot arriving.
// A container no report shows yet (just started, or the hosts have not
// reported since the cluster started) is found after fresh reports.
func TestCheckpointFindsUnreportedContainer(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	w.noReports = true
	ctx := context.Background()
	w.hosts["h2"].eng.(*enginetest.Fake).Run("fresh", "img", 1<<20, nil)
	res, err := StreamCheckpoint(ctx, w.client("h1"), CheckpointRequest{Container: "fresh", LeaveRunning: true}, io.Discard)
	if err != nil || res.Host != "h2" {
		t.Fatalf("checkpoint of an unreported container: %+v, %v", res, err)
	}
	if _, err := StreamCheckpoint(ctx, w.client("h1"), CheckpointRequest{Container: "nope"}, io.Discard); !errors.Is(err, cluster.ErrNotFound) {
		t.Fatalf("checkpoint of a missing container: %v", err)
	}
}

func TestRunAppliesAgeRetention(t *testing.T) {
	w := newWorld(t, "h1")
	ctx := context.Background()
	h := w.hosts["h1"]
	h.eng.(*enginetest.Fake).Run("web", "img", 1<<20, nil)
	if _, err := StoreCheckpoint(ctx, w.client("h1"), CheckpointRequest{Container: "web", LeaveRunning: true}); err != nil {
		t.Fatal(err)
	}
	if n := len(ls(t, h.agent.st.dir)); n != 1 {
		t.Fatalf("%d files", n)
	}
	h.agent.cfg.Now = func() time.Time { return time.Now().Add(8 * 24 * time.Hour) }
	h.agent.cfg.PruneInterval = time.Millisecond
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- h.agent.Run(rctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for len(ls(t, h.agent.st.dir)) > 0 || len((*hostView)(h).Snapshots()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("files %v, records %v after max_age", ls(t, h.agent.st.dir), (*hostView)(h).Snapshots())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
