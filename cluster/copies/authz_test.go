package copies

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
	"github.com/edgemigrate/orchestrate/internal/linkcut"
	"github.com/edgemigrate/orchestrate/transfer"
)

// world is an in-process cluster for copies: each host serves its routes
// on a unix socket and has a real transfer server with a spool; the leader
// signs its steps with a term key every host verifies, as
// cluster.LeaderStep does.
type world struct {
	t      *testing.T
	dir    string
	leader string
	term   uint64
	pub    ed25519.PublicKey
	priv   ed25519.PrivateKey
	hosts  map[string]*host
	mu     sync.Mutex
	events []cluster.Event
}

type host struct {
	name  string
	sock  string
	mux   *http.ServeMux
	eng   *enginetest.Fake
	pair  *linkcut.Pair
	agent *Agent
	w     *world
}

func newWorld(t *testing.T, names ...string) *world {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	// Unix socket paths must stay short.
	dir, err := os.MkdirTemp("", "cp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	w := &world{t: t, dir: dir, leader: names[0], term: 7, pub: pub, priv: priv, hosts: map[string]*host{}}
	for _, n := range names {
		h := &host{name: n, sock: filepath.Join(dir, n+".sock"), mux: http.NewServeMux(), eng: enginetest.NewFake(), w: w}
		h.pair = linkcut.NewPair(t, filepath.Join(dir, n), 0)
		w.hosts[n] = h
	}
	log := slog.New(slog.DiscardHandler)
	for _, h := range w.hosts {
		h.agent = NewAgent(Config{Host: h.name, DataDir: filepath.Join(dir, h.name), Logger: log}, (*view)(h), h.eng, h.pair.Server, router{w})
		h.agent.Register(h.mux)
		NewService((*view)(h), h.agent).Register(uploadMux{h.mux}, 1<<30)
		eng := h.eng
		h.mux.HandleFunc("GET /v1/containers", func(rw http.ResponseWriter, r *http.Request) {
			cs, _ := eng.List(r.Context())
			cluster.WriteJSON(rw, http.StatusOK, cs)
		})
		h.mux.HandleFunc("POST /v1/agent/has-image", func(rw http.ResponseWriter, r *http.Request) {
			var req struct{ Image string }
			_ = json.NewDecoder(r.Body).Decode(&req)
			ok, _ := eng.HasImage(r.Context(), req.Image)
			cluster.WriteJSON(rw, http.StatusOK, map[string]bool{"present": ok})
		})
		h.mux.HandleFunc("GET /v1/agent/checkpoints", func(rw http.ResponseWriter, r *http.Request) {
			cluster.WriteJSON(rw, http.StatusOK, []Kept{})
		})
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

type uploadMux struct{ *http.ServeMux }

func (m uploadMux) HandleUpload(pattern string, _ int64, h func(http.ResponseWriter, *http.Request)) {
	m.HandleFunc(pattern, h)
}

// router uploads into the spool of the host at the address.
type router struct{ w *world }

func (r router) Upload(ctx context.Context, peer, path, remote string) (transfer.FileStats, error) {
	for _, h := range r.w.hosts {
		if h.pair.Addr == peer {
			return h.pair.Client.Upload(ctx, peer, path, remote)
		}
	}
	return transfer.FileStats{}, fmt.Errorf("no host at %s", peer)
}

func (w *world) client(name string) *cluster.Client {
	cl, err := cluster.NewClient(w.hosts[name].sock, nil)
	if err != nil {
		w.t.Fatal(err)
	}
	return cl
}

// signed is a client whose requests carry the leader's signature for host.
func (w *world) signed(name string) *cluster.Client {
	return w.client(name).WithStepKey(w.priv, w.term, name)
}

// view is one host's view of the cluster (the Cluster interface).
type view host

func (v *view) Name() string { return v.name }
func (v *view) Members() []cluster.Member {
	var out []cluster.Member
	for n, h := range v.w.hosts {
		out = append(out, cluster.Member{Name: n, Status: cluster.StatusAlive, Engine: "fake", CRIUVersion: "4.2.1",
			MemoryTotal: 8 << 30, TransferAddr: h.pair.Addr})
	}
	return out
}
func (v *view) PeerClient(name string) (*cluster.Client, error) {
	if v.w.hosts[name] == nil {
		return nil, fmt.Errorf("host %s: %w", name, cluster.ErrNotFound)
	}
	return v.w.client(name), nil
}

// StepClient signs only on the leader, as cluster.Cluster's does.
func (v *view) StepClient(name string) (*cluster.Client, error) {
	cl, err := v.PeerClient(name)
	if err != nil || !v.IsLeader() {
		return cl, err
	}
	return cl.WithStepKey(v.w.priv, v.w.term, name), nil
}
func (v *view) IsLeader() bool { return v.w.leader == v.name }
func (v *view) LeaderClient() (*cluster.Client, error) {
	return v.w.client(v.w.leader), nil
}
func (v *view) LeaderStep(h http.HandlerFunc) http.HandlerFunc {
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
func (v *view) Snapshot(id string) (cluster.SnapshotRecord, error) {
	return cluster.SnapshotRecord{}, fmt.Errorf("snapshot %s: %w", id, cluster.ErrNotFound)
}
func (v *view) AppendEvent(_ context.Context, ev cluster.Event) error {
	v.w.mu.Lock()
	defer v.w.mu.Unlock()
	v.w.events = append(v.w.events, ev)
	return nil
}

// archiveOf checkpoints a container of h's into a file and returns its
// path, size and sha256.
func (w *world) archiveOf(h string, c engine.Container) (string, int64, string) {
	w.t.Helper()
	var buf bytes.Buffer
	if _, err := w.hosts[h].eng.Checkpoint(context.Background(), c.ID, &buf, engine.CheckpointOptions{LeaveRunning: true}); err != nil {
		w.t.Fatal(err)
	}
	path := filepath.Join(w.dir, c.Name+".tar")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		w.t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	return path, int64(buf.Len()), hex.EncodeToString(sum[:])
}

// spool uploads a file into h's spool as a member can (SFTP, with its own
// key): no step is involved.
func (w *world) spool(h, path, name string) {
	w.t.Helper()
	p := w.hosts[h].pair
	if _, err := p.Client.Upload(context.Background(), p.Addr, path, name); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) containers(h string) []engine.Container {
	cs, _ := w.hosts[h].eng.List(context.Background())
	return cs
}

// Every copies step is one only the leader orders: without the current
// leader's signature for this host, this path and this body (or with an
// old one) it is refused, and nothing is started, pushed, loaded or
// dropped. A member that put an archive into a host's spool over SFTP
// cannot have the host restore it.
func TestCopiesStepsNeedTheLeadersSignature(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	ctx := context.Background()
	c := w.hosts["h1"].eng.Run("web", "img", 1<<20, nil)
	w.hosts["h2"].eng.AddImage("img")
	path, size, sum := w.archiveOf("h1", c)
	w.spool("h2", path, "copy-evil.tar")
	st, err := w.hosts["h2"].agent.Stage("upload-held", bytes.NewReader(mustRead(t, path)))
	if err != nil {
		t.Fatal(err)
	}
	imgFile := filepath.Join(w.dir, "img.tar")
	_ = os.WriteFile(imgFile, []byte("fake-image:evil:1"), 0o600)
	w.spool("h2", imgFile, "image-evil.tar")
	imgSum := sha256.Sum256([]byte("fake-image:evil:1"))

	held := HolderRequest{Ref: Ref{Kind: KindUpload, ID: "upload-held"}, TargetHost: "h1", Spool: "copy-out.tar"}
	steps := map[string]any{
		"/v1/agent/copies/restore":     StartRequest{Spool: "copy-evil.tar", Size: size, SHA256: sum, Names: []string{"evil"}},
		"/v1/agent/copies/inspect":     held,
		"/v1/agent/copies/push":        held,
		"/v1/agent/copies/drop":        held,
		"/v1/agent/copies/stage-image": StageImageRequest{Image: "evil:1"},
		"/v1/agent/copies/push-image":  ImagePushRequest{Image: "img", TargetHost: "h1", Spool: "image-out.tar"},
		"/v1/agent/copies/load-image":  ImageLoadRequest{Image: "evil:1", SpooledFile: SpooledFile{Spool: "image-evil.tar", Size: 17, SHA256: hex.EncodeToString(imgSum[:])}},
	}
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Now()
	for p, in := range steps {
		body, _ := json.Marshal(in)
		for name, sig := range map[string]string{
			"unsigned":      "",
			"garbage":       "v1 term=7 ts=1 sig=AAAA",
			"another key":   cluster.SignStep(otherKey, w.term, "h2", http.MethodPost, p, body, now),
			"an older term": cluster.SignStep(w.priv, w.term-1, "h2", http.MethodPost, p, body, now),
			"another host":  cluster.SignStep(w.priv, w.term, "h1", http.MethodPost, p, body, now),
			"another path":  cluster.SignStep(w.priv, w.term, "h2", http.MethodPost, "/v1/agent/copies/inspect-x", body, now),
			"another body":  cluster.SignStep(w.priv, w.term, "h2", http.MethodPost, p, []byte(`{}`), now),
			"too old":       cluster.SignStep(w.priv, w.term, "h2", http.MethodPost, p, body, now.Add(-time.Hour)),
		} {
			code, out := rawPost(t, w.hosts["h2"].sock, p, sig, body)
			if code != http.StatusForbidden || !strings.Contains(out, "forbidden") {
				t.Errorf("%s %s: %d %s", p, name, code, out)
			}
		}
	}
	// A non-leader's own Service cannot order them either: its steps go
	// out unsigned.
	if err := (*view)(w.hosts["h2"]).StepClientDo(ctx, "h2", "/v1/agent/copies/restore", steps["/v1/agent/copies/restore"]); !errors.Is(err, cluster.ErrForbidden) {
		t.Errorf("a member's own restore step: %v", err)
	}
	if cs := w.containers("h2"); len(cs) != 0 {
		t.Fatalf("h2 runs %+v", cs)
	}
	if ok, _ := w.hosts["h2"].eng.HasImage(ctx, "evil:1"); ok {
		t.Fatal("h2 loaded the member's image")
	}
	if _, err := os.Stat(st.Path); err != nil {
		t.Fatalf("the held archive was dropped: %v", err)
	}
	if cs := w.containers("h1"); len(cs) != 1 {
		t.Fatalf("h1 runs %+v", cs)
	}
}

// StepClientDo orders a step as this host's Service would.
func (v *view) StepClientDo(ctx context.Context, host, path string, in any) error {
	cl, err := v.StepClient(host)
	if err != nil {
		return err
	}
	return cl.Do(ctx, http.MethodPost, path, in, nil)
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rawPost(t *testing.T, sock, path, sig string, body []byte) (int, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	req, _ := http.NewRequest(http.MethodPost, "http://agent"+path, bytes.NewReader(body))
	if sig != "" {
		req.Header.Set(cluster.StepHeader, sig)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Even a signed restore reads only the spooled file the step pins down by
// size and sha256: a file a member put under the same name starts
// nothing, and a step without a sum is refused.
func TestTargetRestoresOnlyTheFileTheStepNames(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	ctx := context.Background()
	web := w.hosts["h1"].eng.Run("web", "img", 1<<20, nil)
	evil := w.hosts["h1"].eng.Run("evil", "img", 1<<20, nil)
	w.hosts["h2"].eng.AddImage("img")
	_, size, sum := w.archiveOf("h1", web)
	evilPath, _, _ := w.archiveOf("h1", evil)
	w.spool("h2", evilPath, "copy-1.tar")
	h2 := w.signed("h2")
	err := h2.Do(ctx, http.MethodPost, "/v1/agent/copies/restore", StartRequest{Spool: "copy-1.tar", Size: size, SHA256: sum, Names: []string{"web-copy"}}, nil)
	if err == nil || !strings.Contains(err.Error(), "verif") {
		t.Fatalf("restore of a swapped file: %v", err)
	}
	w.spool("h2", evilPath, "copy-2.tar")
	for name, req := range map[string]StartRequest{
		"no sum":  {Spool: "copy-2.tar", Size: size, Names: []string{"a"}},
		"no size": {Spool: "copy-2.tar", SHA256: sum, Names: []string{"b"}},
		"escape":  {Spool: "../copies/upload-1.tar", Size: size, SHA256: sum, Names: []string{"c"}},
	} {
		if err := h2.Do(ctx, http.MethodPost, "/v1/agent/copies/restore", req, nil); !errors.Is(err, cluster.ErrInvalid) {
			t.Errorf("%s: %v, want invalid", name, err)
		}
	}
	if cs := w.containers("h2"); len(cs) != 0 {
		t.Fatalf("h2 runs %+v", cs)
	}
}

// `orchestrate restore ARCHIVE` sent to an agent that does not lead: the
// archive is staged there, the leader orders the push and the restore (the
// hosts take them only because the leader signed them), the copy runs
// with the original's memory, and the staged archive is gone.
func TestRestoreIsCarriedOutByTheLeader(t *testing.T) {
	w := newWorld(t, "h1", "h2", "h3")
	ctx := context.Background()
	c := w.hosts["h3"].eng.Run("web", "img", 1<<20, nil)
	w.hosts["h2"].eng.AddImage("img")
	mem, _ := w.hosts["h3"].eng.Memory(c.ID)
	path, _, _ := w.archiveOf("h3", c)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var res RestoreResult
	if err := w.client("h3").Post(ctx, "/v1/restore/archive?host=h2&name=web-copy", "application/x-tar", f, &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Copies) != 1 || res.Copies[0].Host != "h2" || res.Error != "" {
		t.Fatalf("%+v", res)
	}
	got, _ := w.hosts["h2"].eng.Memory(res.Copies[0].ID)
	if !bytes.Equal(got, mem) {
		t.Fatal("the copy's memory differs")
	}
	if ents, _ := os.ReadDir(filepath.Join(w.dir, "h3", UploadsDir)); len(ents) != 0 {
		t.Fatalf("staged archives left on h3: %v", ents)
	}
	// The restore went through the leader: its event is the leader's.
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.events) != 1 || w.events[0].Host != "h1" || !strings.Contains(w.events[0].Message, "web-copy@h2") {
		t.Fatalf("events %+v", w.events)
	}
	// A Service that does not lead carries nothing out itself.
	if _, err := NewService((*view)(w.hosts["h2"]), w.hosts["h2"].agent).Restore(ctx, RestoreRequest{Source: "x"}); !errors.Is(err, cluster.ErrNotLeader) {
		t.Fatalf("restore on a follower: %v", err)
	}
}

// A target that lacks the copy's image gets it from a host that has it:
// uploaded into its spool and loaded from exactly that file. A signed load
// of a file that is not the one uploaded loads nothing.
func TestImageForCopies(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	ctx := context.Background()
	id := w.hosts["h1"].eng.AddImage("img:2")
	var f SpooledFile
	if err := w.signed("h1").Do(ctx, http.MethodPost, "/v1/agent/copies/push-image", ImagePushRequest{Image: id, TargetHost: "h2", Spool: "copy-image-1.tar"}, &f); err != nil {
		t.Fatal(err)
	}
	// A member swaps the spooled file for its own image.
	other := filepath.Join(w.dir, "other.tar")
	_ = os.WriteFile(other, []byte("fake-image:evil:1"), 0o600)
	w.spool("h2", other, "copy-image-1.tar")
	if err := w.signed("h2").Do(ctx, http.MethodPost, "/v1/agent/copies/load-image", ImageLoadRequest{Image: id, SpooledFile: f}, nil); err == nil {
		t.Fatal("a swapped image file loaded")
	}
	if ok, _ := w.hosts["h2"].eng.HasImage(ctx, "evil:1"); ok {
		t.Fatal("the member's image was loaded")
	}
	if err := w.signed("h1").Do(ctx, http.MethodPost, "/v1/agent/copies/push-image", ImagePushRequest{Image: id, TargetHost: "h2", Spool: "copy-image-2.tar"}, &f); err != nil {
		t.Fatal(err)
	}
	if err := w.signed("h2").Do(ctx, http.MethodPost, "/v1/agent/copies/load-image", ImageLoadRequest{Image: id, SpooledFile: f}, nil); err != nil {
		t.Fatal(err)
	}
	if ok, _ := w.hosts["h2"].eng.HasImage(ctx, id); !ok {
		t.Fatal("h2 lacks the image")
	}
	// Through the Service: ensureImage sends it where it is missing.
	id3 := w.hosts["h1"].eng.AddImage("img:3")
	s := NewService((*view)(w.hosts["h1"]), w.hosts["h1"].agent)
	hosts, _ := s.view(ctx)
	if err := s.ensureImage(ctx, id3, "h2", hosts); err != nil {
		t.Fatal(err)
	}
	if ok, _ := w.hosts["h2"].eng.HasImage(ctx, id3); !ok {
		t.Fatal("ensureImage did not send the image")
	}
}
