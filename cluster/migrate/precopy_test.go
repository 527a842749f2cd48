package migrate

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
	"github.com/edgemigrate/orchestrate/transfer"
	"github.com/edgemigrate/orchestrate/transfer/delta"
)

// pipeStreamer is an in-process transfer: Stream runs the target's handler
// for the header's kind on a pipe. Its stats pretend a link of rate
// bytes/s, so the source's judgement is deterministic.
type pipeStreamer struct {
	mu       sync.Mutex
	handlers map[string]transfer.Handler
	rate     float64
	kinds    []string
	// after, when set, runs after each stream (tests change the target).
	after func(h transfer.StreamHeader)
}

func (p *pipeStreamer) Handle(kind string, h transfer.Handler) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.handlers[kind] = h
}

func (p *pipeStreamer) Stream(ctx context.Context, peer string, h transfer.StreamHeader, produce func(w io.Writer) error) ([]byte, transfer.StreamStats, error) {
	p.mu.Lock()
	handler := p.handlers[h.Kind]
	p.kinds = append(p.kinds, h.Kind)
	p.mu.Unlock()
	if handler == nil {
		return nil, transfer.StreamStats{}, transfer.ErrNoHandler
	}
	pr, pw := io.Pipe()
	cw := &progressWriter{w: pw}
	perr := make(chan error, 1)
	go func() {
		err := produce(cw)
		pw.CloseWithError(err)
		perr <- err
	}()
	res, herr := handler(transfer.ContextWithSender(ctx, "src"), h, pr)
	pr.CloseWithError(errors.New("handler returned"))
	err := <-perr
	st := transfer.StreamStats{Bytes: cw.n, WireBytes: cw.n, Duration: time.Duration(float64(cw.n) / p.rate * float64(time.Second))}
	if h.Kind == KindPrecopyProbe && herr == nil {
		// The simulated link is as fast as Duration says: the target's
		// own timing of the in-memory pipe would contradict it.
		var ans probeAnswer
		if json.Unmarshal(res, &ans) == nil {
			ans.Bytes, ans.Nanos = 0, 0
			res, _ = json.Marshal(ans)
		}
	}
	if p.after != nil {
		p.after(h)
	}
	if err != nil {
		return nil, st, err
	}
	if herr != nil {
		return nil, st, herr
	}
	return res, st, nil
}

// pairAuth authorises the pair's one migration, m1 from src to dst.
type pairAuth struct {
	mu  sync.Mutex
	rec cluster.MigrationRecord
}

func (a *pairAuth) LeaderStep(h http.HandlerFunc) http.HandlerFunc { return h }

func (a *pairAuth) Migration(id string) (cluster.MigrationRecord, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if id != a.rec.ID {
		return cluster.MigrationRecord{}, cluster.ErrNotFound
	}
	return a.rec, nil
}

func (a *pairAuth) Member(name string) (cluster.Member, bool) {
	return cluster.Member{Name: name, TransferAddr: name + ":7922"}, true
}

type nopMux struct{}

func (nopMux) HandleFunc(string, func(http.ResponseWriter, *http.Request)) {}

type pair struct {
	src, dst *enginetest.Fake
	source   *Agent
	streams  *pipeStreamer
	auth     *pairAuth
	dir      string
}

func newPair(t *testing.T, rate float64) *pair {
	t.Helper()
	p := &pair{src: enginetest.NewFake(), dst: enginetest.NewFake(), dir: t.TempDir(),
		streams: &pipeStreamer{handlers: map[string]transfer.Handler{}, rate: rate}}
	log := slog.New(slog.DiscardHandler)
	p.auth = &pairAuth{}
	p.source = NewAgent("src", p.src, p.streams, log)
	p.source.SetAuthority(p.auth)
	p.startTarget()
	return p
}

// startTarget (re)starts the target's agent: a restart loses its bases.
func (p *pair) startTarget() {
	b := NewAgent("dst", p.dst, nil, slog.New(slog.DiscardHandler))
	cfg := DefaultPrecopyConfig()
	cfg.Dir = p.dir
	b.SetPrecopy(cfg)
	b.SetAuthority(p.auth)
	b.Register(nopMux{}, p.streams)
}

// migrate runs migrateOut and returns its progress lines.
func (p *pair) migrate(t *testing.T, container string) []Progress {
	t.Helper()
	c, err := p.src.Inspect(context.Background(), container)
	if err != nil {
		t.Fatal(err)
	}
	p.auth.mu.Lock()
	p.auth.rec = cluster.MigrationRecord{ID: "m1", Container: c.ID, From: "src", To: "dst", Phase: Planned, SourceAsked: true}
	p.auth.mu.Unlock()
	body, _ := json.Marshal(OutRequest{Migration: "m1", Container: c.ID})
	rec := httptest.NewRecorder()
	p.source.migrateOut(rec, httptest.NewRequest(http.MethodPost, "/v1/agent/migrate-out", bytes.NewReader(body)))
	var out []Progress
	sc := bufio.NewScanner(rec.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var pr Progress
		if err := json.Unmarshal(sc.Bytes(), &pr); err != nil {
			t.Fatalf("progress line %q: %v", sc.Text(), err)
		}
		out = append(out, pr)
	}
	return out
}

func last(t *testing.T, ps []Progress) Progress {
	t.Helper()
	if len(ps) == 0 {
		t.Fatal("no progress")
	}
	p := ps[len(ps)-1]
	if p.Kind != progRestored {
		t.Fatalf("migration ended with %s: %s", p.Kind, p.Err)
	}
	if p.Precopy == nil {
		t.Fatal("no pre-copy report on the final line")
	}
	return p
}

// sameMemory checks that the target runs the container with the source's
// memory.
func sameMemory(t *testing.T, p *pair, id string, want []byte) {
	t.Helper()
	got, err := p.dst.Memory(id)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the target's memory differs from the source's")
	}
	c, err := p.dst.Inspect(context.Background(), id)
	if err != nil || !c.Running {
		t.Fatalf("target container: %+v %v", c, err)
	}
}

func TestPrecopySlowLink(t *testing.T) {
	p := newPair(t, 1e6) // 8 Mbit/s
	c := p.src.Run("w", "img", 4<<20, nil)
	p.dst.AddImage("img")
	mem, _ := p.src.Memory(c.ID)
	ps := p.migrate(t, "w")
	fin := last(t, ps)
	rep := fin.Precopy
	if rep.Method != MethodContent || len(rep.Rounds) < 2 || rep.Final == nil || rep.Fallback != "" {
		t.Fatalf("report %+v", rep)
	}
	if rep.Rounds[0].LiteralBytes != rep.Rounds[0].ArchiveBytes {
		t.Fatalf("round 1 should send everything: %+v", rep.Rounds[0])
	}
	// The fake's memory does not change: the final delta is references.
	if rep.Final.LiteralBytes > 64<<10 || rep.BytesSaved < 4<<20-64<<10 {
		t.Fatalf("final round sent %d literal bytes, saved %d", rep.Final.LiteralBytes, rep.BytesSaved)
	}
	if len(rep.ExtraFreezes) != len(rep.Rounds) {
		t.Fatalf("freezes %v for %d rounds", rep.ExtraFreezes, len(rep.Rounds))
	}
	sameMemory(t, p, c.ID, mem)
	n := 0
	for _, pr := range ps {
		if pr.Kind == progPrecopy {
			n++
		}
	}
	if n != len(rep.Rounds) {
		t.Fatalf("%d pre-copy progress lines for %d rounds", n, len(rep.Rounds))
	}
	if got := p.streams.kinds[len(p.streams.kinds)-1]; got != KindDeltaRestore {
		t.Fatalf("final stream kind %s", got)
	}
	// The target dropped its base after the restore.
	if len(mustGlob(t, p.dir)) != 0 {
		t.Fatalf("bases left behind: %v", mustGlob(t, p.dir))
	}
	rec := cluster.MigrationRecord{Name: "w"}
	rep.record(&rec)
	if rec.Method != MethodDirect || rec.Precopy == nil || rec.Precopy.Method != MethodContent || rec.Precopy.BytesSaved == 0 || rec.Name != "w" || len(rec.Precopy.ExtraFreezes) == 0 {
		t.Fatalf("record %+v", rec)
	}
}

func mustGlob(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := readDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ents
}

func TestPrecopyJudgement(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rate   float64
		labels map[string]string
		method string
		reason string
	}{
		{"fast link", 1e9, nil, MethodDirect, "fast"},
		{"small archive", 10e6, nil, MethodDirect, "cross in"},
		{"label off", 1e5, map[string]string{LabelPrecopy: "off"}, MethodDirect, "=off"},
		{"label on", 1e9, map[string]string{LabelPrecopy: "on"}, MethodContent, ""},
		{"slow link", 1e5, nil, MethodContent, "Mbit/s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, tc.rate)
			c := p.src.Run("w", "img", 1<<20, tc.labels)
			p.dst.AddImage("img")
			mem, _ := p.src.Memory(c.ID)
			rep := last(t, p.migrate(t, "w")).Precopy
			if rep.Method != tc.method || !strings.Contains(rep.Reason, tc.reason) {
				t.Fatalf("method %s, reason %q; want %s, %q", rep.Method, rep.Reason, tc.method, tc.reason)
			}
			if rep.EnginePreCopy {
				t.Fatal("the fake reports no soft-dirty tracking")
			}
			sameMemory(t, p, c.ID, mem)
		})
	}
}

// TestPrecopyTargetLostBase: the target's agent restarts between rounds
// and loses its base; the source falls back to a full transfer that works.
func TestPrecopyTargetLostBase(t *testing.T) {
	p := newPair(t, 1e6)
	c := p.src.Run("w", "img", 2<<20, nil)
	p.dst.AddImage("img")
	mem, _ := p.src.Memory(c.ID)
	restarted := false
	p.streams.after = func(h transfer.StreamHeader) {
		if h.Kind == KindPrecopy && !restarted {
			restarted = true
			p.startTarget()
		}
	}
	rep := last(t, p.migrate(t, "w")).Precopy
	if rep.Method != MethodFallback || rep.Fallback == "" {
		t.Fatalf("report %+v", rep)
	}
	if got := p.streams.kinds[len(p.streams.kinds)-1]; got != KindRestore {
		t.Fatalf("final stream kind %s, want a full restore", got)
	}
	sameMemory(t, p, c.ID, mem)
}

// TestPrecopyBadDelta: a round the target cannot rebuild fails
// cleanly; the container keeps running and the migration still succeeds.
func TestPrecopyBadDelta(t *testing.T) {
	p := newPair(t, 1e6)
	c := p.src.Run("w", "img", 4<<20, nil)
	p.dst.AddImage("img")
	mem, _ := p.src.Memory(c.ID)
	h := p.streams.handlers[KindPrecopy]
	p.streams.handlers[KindPrecopy] = func(ctx context.Context, sh transfer.StreamHeader, r io.Reader) ([]byte, error) {
		return h(ctx, sh, io.MultiReader(r, strings.NewReader("trailing garbage")))
	}
	rep := last(t, p.migrate(t, "w")).Precopy
	if rep.Method != MethodFallback || !strings.Contains(rep.Fallback, "corrupt delta") {
		t.Fatalf("report %+v", rep)
	}
	sameMemory(t, p, c.ID, mem)
}

func TestBaseStore(t *testing.T) {
	s := newBaseStore(t.TempDir(), 0)
	if _, _, err := s.open("m", "abcd"); !errors.Is(err, delta.ErrBase) {
		t.Fatalf("open of a missing base: %v", err)
	}
	var d bytes.Buffer
	e, _ := delta.NewEncoder(&d, nil)
	_, _ = e.Write([]byte("archive one"))
	_ = e.Close()
	b, err := s.receive("m", &d, nil)
	if err != nil {
		t.Fatal(err)
	}
	sum := e.Index().Sum()
	if b.sum != sum || !s.has("m", hexOf(sum[:])) || s.has("m", "") || s.has("other", hexOf(sum[:])) {
		t.Fatal("stored base not found by its sum")
	}
	s.drop("m")
	if s.has("m", hexOf(sum[:])) {
		t.Fatal("dropped base still there")
	}
}

func hexOf(b []byte) string { return hex.EncodeToString(b) }

func readDir(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, err
}
