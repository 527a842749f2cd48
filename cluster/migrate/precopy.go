package migrate

// Content pre-copy: live migration on slow links without the kernel's
// dirty-page tracking.
//
// The source takes leave-running checkpoints (each a brief freeze; the
// container runs on) and streams each to the target as a chunk delta
// (transfer/delta) against the archive the target already holds: the first
// round sends everything, later rounds mostly references. The target
// rebuilds every round's archive exactly (sha256 end to end) and keeps the
// latest as its base, on disk, keyed by migration ID. Rounds go on while the
// delta keeps shrinking, up to MaxRounds, and stop early when the delta
// would cross in less than SmallDelta or than the dump takes, or the
// deadline nears. Then the real
// freeze: the final checkpoint is encoded against the base as it is
// produced and streamed into the target's delta-restore handler, which
// rebuilds it on the fly and feeds it to the engine's Restore. Only the
// final round's bytes cross while the container is frozen.
//
// When it pays: the source first times a small probe stream to the target.
// A link faster than FastLink, or an archive that would cross in less than
// MinTransfer, streams directly as before. The container label
// orchestrate.precopy=on|off overrides the judgement.
//
// Failure: any pre-copy round that fails leaves the container running; the
// source then falls back to a full transfer (the target's last complete base
// is kept, so a failed later round still allows a delta). Right before the
// final freeze the source asks the target whether it still holds the base
// (a restarted agent clears its bases); if not, the final round is a full
// transfer. The migration record says which method ran and why.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/internal/safefs"
	"github.com/edgemigrate/orchestrate/transfer"
	"github.com/edgemigrate/orchestrate/transfer/delta"
)

// Stream kinds of content pre-copy.
const (
	// KindPrecopy: one leave-running round, a delta the target rebuilds and
	// keeps as its base for the migration (header ID).
	KindPrecopy = "precopy"
	// KindPrecopyProbe: a throw-away stream that times the link; the answer
	// says whether the target holds the base named in Meta["base"].
	KindPrecopyProbe = "precopy-probe"
	// KindDeltaRestore: the final round, a delta the target rebuilds into
	// its engine's Restore as it arrives.
	KindDeltaRestore = "delta-restore"
)

// LabelPrecopy on a container forces the method: "on" or "off" ("auto",
// the default, judges by the link).
const LabelPrecopy = "orchestrate.precopy"

// Methods recorded in MigrationRecord.Method.
const (
	MethodDirect = "direct"
	// MethodContent: pre-copy by content (chunk deltas), no kernel help.
	MethodContent = "precopy-content"
)

// progPrecopy is a progress line of the source after each pre-copy round
// (the leader keeps the report in the record; no phase change).
const progPrecopy EventKind = "precopy"

// PrecopyConfig tunes the source's judgement and its rounds.
type PrecopyConfig struct {
	// FastLink: at or above this rate (bytes/s) stream directly; the dump
	// itself is then the bottleneck and pre-copy cannot shorten it.
	FastLink float64
	// MinTransfer: pre-copy only when the archive would take at least this
	// long to cross.
	MinTransfer time.Duration
	// MaxRounds bounds the leave-running rounds (each freezes briefly).
	MaxRounds int
	// Shrink: another round only while a round's delta is at most this
	// fraction of the one before.
	Shrink float64
	// SmallDelta: stop when the last delta crossed in less than this, or
	// than the last round's dump took.
	SmallDelta time.Duration
	// Budget bounds the pre-copy phase; a deadline in the request (drain)
	// shortens it.
	Budget time.Duration
	// ProbeBytes is the size of the link probe.
	ProbeBytes int
	// Dir is where a target keeps its bases: a private directory (root,
	// 0700) under the agent's data_dir, checked before each use. Empty:
	// this host keeps none, and sources fall back to a full transfer.
	Dir string
	// MaxBaseBytes caps one base as rebuilt on the target (a small delta
	// can describe a large archive); 0: no cap.
	MaxBaseBytes int64
}

// DefaultPrecopyConfig returns the defaults.
func DefaultPrecopyConfig() PrecopyConfig {
	return PrecopyConfig{
		FastLink: 30e6, MinTransfer: 1500 * time.Millisecond, MaxRounds: 5, Shrink: 0.7,
		SmallDelta: 300 * time.Millisecond, Budget: 3 * time.Minute, ProbeBytes: 2 << 20,
	}
}

// PrecopyReport is what the source did, for the migration record
// (cluster.PrecopyReport, with the source's methods).
type PrecopyReport cluster.PrecopyReport

// PrecopyRound is one round's numbers.
type PrecopyRound = cluster.PrecopyRound

// precopyAck is the target's answer to a round.
type precopyAck struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

type probeAnswer struct {
	Has bool `json:"has"`
	// Bytes and Nanos: what the target read, and how long from its first
	// byte to the end, so that the source's rate leaves out what is not
	// the link (the channel's setup, the record check, the answer).
	Bytes int64 `json:"bytes,omitempty"`
	Nanos int64 `json:"nanos,omitempty"`
}

// precopyOut runs the pre-copy phase while the container runs. It returns
// the index of the base the target holds, or nil when the final round must
// be a full transfer; the report says which and why. It never stops the
// container: every error here ends in a fallback.
func (a *Agent) precopyOut(ctx context.Context, c engine.Container, req OutRequest, emit func(Progress), log *slog.Logger) (*delta.Index, *PrecopyReport) {
	cfg := a.pc
	rep := &PrecopyReport{Method: MethodDirect}
	if fr, ok := a.eng.(engine.FeatureReporter); ok {
		if f, err := fr.Features(ctx); err == nil {
			rep.EnginePreCopy = f.PreCopy
		}
	}
	mode, want := precopyLabel(c.Labels)
	if mode == "off" || mode == "false" {
		rep.Reason = LabelPrecopy + "=off"
		return nil, rep
	}
	rate, _, err := a.probe(ctx, req, "", cfg.ProbeBytes)
	if err != nil {
		rep.Reason = "link probe failed: " + err.Error()
		return nil, rep
	}
	rep.LinkBps = rate
	size := a.memoryOf(ctx, c.ID)
	if mode != "on" && mode != "true" {
		if rate >= cfg.FastLink {
			rep.Reason = fmt.Sprintf("link %.0f Mbit/s is fast: direct streaming", rate*8/1e6)
			return nil, rep
		}
		if size > 0 && seconds(float64(size)/rate) < cfg.MinTransfer {
			rep.Reason = fmt.Sprintf("%d MiB cross in %s: direct streaming", size>>20, seconds(float64(size)/rate).Round(time.Millisecond))
			return nil, rep
		}
	}
	deadline := time.Now().Add(cfg.Budget)
	if !req.Deadline.IsZero() && req.Deadline.Before(deadline) {
		deadline = req.Deadline
	}
	if size > 0 && time.Now().Add(2*seconds(float64(size)/rate)).After(deadline) {
		rep.Reason = "the deadline leaves no time for pre-copy"
		return nil, rep
	}
	rep.Reason = fmt.Sprintf("link %.0f Mbit/s", rate*8/1e6)
	if a.enginePrecopy(ctx, c, req, want, rep, emit, log) {
		return nil, rep // precopy_engine.go: the final round dumps only what changed
	}
	rep.Method = MethodContent
	var base *delta.Index
	var prev int64
	var dump time.Duration // the last round's dump, without the link's push-back
	for round := 1; round <= cfg.MaxRounds; round++ {
		if round > 1 {
			// Once the delta crosses faster than the dump takes, the final
			// round is bound by the dump (they overlap): another round
			// would only add a freeze.
			est := seconds(float64(prev) / rate)
			if est < max(cfg.SmallDelta, dump) {
				rep.Reason += fmt.Sprintf("; stopped after round %d: the delta crosses in %s, the dump takes %s", round-1,
					est.Round(time.Millisecond), dump.Round(time.Millisecond))
				break
			}
			if time.Now().Add(3 * est).After(deadline) {
				rep.Reason += fmt.Sprintf("; stopped after round %d: the deadline nears", round-1)
				break
			}
		}
		next, rr, err := a.precopyRound(ctx, c, req, base, round)
		if err != nil {
			log.Warn("pre-copy round failed", "round", round, "err", err)
			rep.Fallback = fmt.Sprintf("round %d: %v", round, err)
			if base == nil || ctx.Err() != nil {
				return nil, rep
			}
			break // the target keeps the last complete base; the probe checks
		}
		log.Info(fmt.Sprintf("pre-copy round %d sent", round), "archive", rr.ArchiveBytes, "literal", rr.LiteralBytes,
			"wire", rr.WireBytes, "frozen", rr.Frozen, "took", rr.Duration)
		rep.Rounds = append(rep.Rounds, rr)
		rep.WireBytes += rr.WireBytes
		rep.ExtraFreezes = append(rep.ExtraFreezes, rr.Frozen)
		emit(Progress{Kind: progPrecopy, Precopy: rep.clone()})
		base = next
		// The full first round, on a link slow enough to pre-copy, is bound
		// by the link: it measures it better than the probe did. (Later
		// rounds are bound by the dump.)
		if round == 1 && rr.WireBytes >= 8<<20 && rr.Duration > 0 {
			rate = float64(rr.WireBytes) / rr.Duration.Seconds()
			rep.LinkBps = rate
		}
		if round > 1 && float64(rr.WireBytes) > cfg.Shrink*float64(prev) {
			rep.Reason += fmt.Sprintf("; stopped after round %d: the delta stopped shrinking", round)
			break
		}
		// The checkpoint call waits for the link when the delta is large:
		// what remains after the transfer time is (at least) the dump.
		prev, dump = rr.WireBytes, max(0, rr.Checkpoint-seconds(float64(rr.WireBytes)/rate))
	}
	// The target must still hold the base right before the freeze (a
	// restarted agent has lost it). Its agent may be restarting: retry.
	var has bool
	for attempt := 0; ; attempt++ {
		_, has, err = a.probe(ctx, req, hex.EncodeToString(sumOf(base)), 1)
		if err == nil || attempt >= 8 || ctx.Err() != nil {
			break
		}
		if !sleepCtx(ctx, backoff(attempt)) {
			break
		}
	}
	if err != nil || !has {
		if err == nil {
			err = errors.New("the target no longer holds the pre-copied archive")
		}
		rep.Fallback = err.Error()
		return nil, rep
	}
	return base, rep
}

func (r *PrecopyReport) clone() *PrecopyReport {
	if r == nil {
		return nil
	}
	c := *r
	c.Rounds = append([]PrecopyRound(nil), r.Rounds...)
	c.ExtraFreezes = append([]time.Duration(nil), r.ExtraFreezes...)
	if r.Final != nil {
		f := *r.Final
		c.Final = &f
	}
	if r.Pages != nil {
		p := *r.Pages
		c.Pages = &p
	}
	return &c
}

func sumOf(ix *delta.Index) []byte {
	if ix == nil {
		return nil
	}
	s := ix.Sum()
	return s[:]
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// memoryOf is the container's memory use when the engine reports it (List
// does for Podman), else 0.
func (a *Agent) memoryOf(ctx context.Context, id string) int64 {
	cs, err := a.eng.List(ctx)
	if err != nil {
		return 0
	}
	for _, c := range cs {
		if c.ID == id {
			return c.MemoryBytes
		}
	}
	return 0
}

// probe streams n random bytes to the target and returns the rate it saw
// and whether the target holds base (hex sha256) for this migration.
func (a *Agent) probe(ctx context.Context, req OutRequest, base string, n int) (float64, bool, error) {
	hdr := transfer.StreamHeader{Kind: KindPrecopyProbe, ID: req.Migration, Meta: map[string]string{"base": base}}
	res, st, err := a.sender.Stream(ctx, req.TargetAddr, hdr, func(w io.Writer) error {
		buf := make([]byte, 64<<10)
		for left := n; left > 0; left -= len(buf) {
			b := buf[:min(len(buf), left)]
			_, _ = rand.Read(b)
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, false, err
	}
	var ans probeAnswer
	if err := json.Unmarshal(res, &ans); err != nil {
		return 0, false, fmt.Errorf("probe answer %q: %w", res, err)
	}
	return probeRate(n, st, ans), ans.Has, nil
}

// probeRate is the link's rate as a probe of n bytes measured it: over the
// target's own reading of the data after its first read, when it timed
// that, else over the whole stream (the channel's setup, the record check
// and the answer included: well under the rate of a fast link, the more so
// on a busy host).
func probeRate(n int, st transfer.StreamStats, ans probeAnswer) float64 {
	if ans.Nanos > 0 && ans.Bytes >= int64(n)/2 {
		return float64(ans.Bytes) / time.Duration(ans.Nanos).Seconds()
	}
	d := max(st.Duration, time.Millisecond)
	return float64(max(st.WireBytes, int64(n))) / d.Seconds()
}

// probeReadLate: a probe whose record check took longer than this is not
// timed by the target.
const probeReadLate = 20 * time.Millisecond

// timedReader counts what it reads, and when its first and last reads
// came (firstN: the first read's bytes).
type timedReader struct {
	r           io.Reader
	n, firstN   int64
	first, last time.Time
}

func (t *timedReader) Read(b []byte) (int, error) {
	k, err := t.r.Read(b)
	if k > 0 {
		now := time.Now()
		if t.first.IsZero() {
			t.first, t.firstN = now, int64(k)
		}
		t.last = now
		t.n += int64(k)
	}
	return k, err
}

// precopyRound takes a leave-running checkpoint and streams it as a delta
// against base (nil: everything). It returns the new archive's index.
func (a *Agent) precopyRound(ctx context.Context, c engine.Container, req OutRequest, base *delta.Index, round int) (*delta.Index, PrecopyRound, error) {
	start := time.Now()
	rr := PrecopyRound{Round: round}
	hdr := transfer.StreamHeader{Kind: KindPrecopy, ID: req.Migration, Meta: map[string]string{
		"container": c.ID, "round": strconv.Itoa(round), "base": hex.EncodeToString(sumOf(base)),
	}}
	var enc *delta.Encoder
	var ckpt engine.Stats
	res, st, err := a.sender.Stream(ctx, req.TargetAddr, hdr, func(w io.Writer) error {
		var err error
		enc, err = delta.NewEncoder(w, base)
		if err != nil {
			return err
		}
		ckpt, err = a.eng.Checkpoint(ctx, c.ID, enc, engine.CheckpointOptions{LeaveRunning: true, TCPEstablished: true})
		if err != nil {
			enc.CloseWithError(err)
			return err
		}
		return enc.Close()
	})
	if err != nil {
		return nil, rr, err
	}
	var ack precopyAck
	if err := json.Unmarshal(res, &ack); err != nil {
		return nil, rr, fmt.Errorf("target answered %q: %w", res, err)
	}
	ix := enc.Index()
	if ack.Size != ix.Size() || ack.SHA256 != hex.EncodeToString(sumOf(ix)) {
		return nil, rr, fmt.Errorf("target rebuilt %d bytes sha256 %.16s, sent %d bytes sha256 %.16s", ack.Size, ack.SHA256, ix.Size(), hex.EncodeToString(sumOf(ix)))
	}
	es := enc.Stats()
	rr.ArchiveBytes, rr.LiteralBytes, rr.DeltaBytes, rr.WireBytes = es.Bytes, es.LiteralBytes, es.DeltaBytes, st.WireBytes
	rr.Frozen, rr.Checkpoint, rr.Duration = ckpt.FrozenTime, ckpt.Duration, time.Since(start)
	return ix, rr, nil
}

// Target side.

// baseStore keeps, per migration, the last archive the source pre-copied.
// Files live in dir; a new process starts with none (clear), because a
// source never trusts a base it did not see acknowledged in this run.
type baseStore struct {
	dir string
	max int64 // bytes one base may hold; 0: no cap
	mu  sync.Mutex
	m   map[string]storedBase
}

type storedBase struct {
	path string
	size int64
	sum  [32]byte
}

var validID = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// errNoBase: the target holds no (or another) base for the migration.
var errNoBase = fmt.Errorf("%w: no pre-copied archive for this migration here", delta.ErrBase)

func newBaseStore(dir string, max int64) *baseStore {
	return &baseStore{dir: dir, max: max, m: map[string]storedBase{}}
}

func (s *baseStore) clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
	s.m = map[string]storedBase{}
}

// open returns the base named by sumHex ("" : none) and a func to close it.
func (s *baseStore) open(id, sumHex string) (*delta.Base, func(), error) {
	if sumHex == "" {
		return nil, func() {}, nil
	}
	s.mu.Lock()
	b, ok := s.m[id]
	s.mu.Unlock()
	if !ok || hex.EncodeToString(b.sum[:]) != sumHex {
		return nil, nil, fmt.Errorf("migration %s: base %.16s: %w", id, sumHex, errNoBase)
	}
	f, err := os.Open(b.path)
	if err != nil {
		return nil, nil, fmt.Errorf("migration %s: %w: %v", id, errNoBase, err)
	}
	return &delta.Base{R: f, Size: b.size, Sum: b.sum}, func() { f.Close() }, nil
}

func (s *baseStore) has(id, sumHex string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.m[id]
	return ok && sumHex != "" && hex.EncodeToString(b.sum[:]) == sumHex
}

// receive rebuilds a round from r into a new file and makes it id's base.
func (s *baseStore) receive(id string, r io.Reader, base *delta.Base) (storedBase, error) {
	return s.store(id, func(w io.Writer) (int64, error) { return delta.Decode(w, r, base) })
}

// store writes a new file with fill and makes it id's base.
func (s *baseStore) store(id string, fill func(w io.Writer) (int64, error)) (storedBase, error) {
	if s.dir == "" {
		return storedBase{}, errors.New("this host keeps no pre-copy bases (no directory configured)")
	}
	if err := safefs.PrivateDir(s.dir); err != nil {
		return storedBase{}, err
	}
	f, err := os.CreateTemp(s.dir, id+".*.partial")
	if err != nil {
		return storedBase{}, err
	}
	h := sha256.New()
	var w io.Writer = io.MultiWriter(f, h)
	if s.max > 0 {
		w = &capWriter{w: w, left: s.max}
	}
	n, err := fill(w)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return storedBase{}, err
	}
	nb := storedBase{path: filepath.Join(s.dir, id+".base"), size: n}
	copy(nb.sum[:], h.Sum(nil))
	s.mu.Lock()
	defer s.mu.Unlock()
	// Replacing the file under a reader of the old one is fine: the reader
	// keeps its open file.
	if err := os.Rename(f.Name(), nb.path); err != nil {
		os.Remove(f.Name())
		return storedBase{}, err
	}
	s.m[id] = nb
	return nb, nil
}

// capWriter fails with transfer.ErrTooLarge once more than left bytes
// were written.
type capWriter struct {
	w    io.Writer
	left int64
}

func (c *capWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > c.left {
		return 0, fmt.Errorf("pre-copy base: %w", transfer.ErrTooLarge)
	}
	c.left -= int64(len(p))
	return c.w.Write(p)
}

func (s *baseStore) drop(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.m[id]; ok {
		os.Remove(b.path)
		delete(s.m, id)
	}
}

func (a *Agent) handlePrecopy(ctx context.Context, h transfer.StreamHeader, r io.Reader) ([]byte, error) {
	if !validID.MatchString(h.ID) {
		return nil, fmt.Errorf("pre-copy stream with a bad migration ID %q", h.ID)
	}
	if _, err := a.authorised(ctx, "pre-copy stream", h.ID, a.fromSource(ctx, h.Meta["container"], receivePhases...)); err != nil {
		return nil, err
	}
	base, done, err := a.bases.open(h.ID, h.Meta["base"])
	if err != nil {
		return nil, err
	}
	defer done()
	nb, err := a.bases.receive(h.ID, r, base)
	if err != nil {
		return nil, fmt.Errorf("pre-copy round %s of %s on %s: %w", h.Meta["round"], h.ID, a.host, err)
	}
	a.log.Info("pre-copy round received", "migration", h.ID, "round", h.Meta["round"], "bytes", nb.size)
	return json.Marshal(precopyAck{Size: nb.size, SHA256: hex.EncodeToString(nb.sum[:])})
}

func (a *Agent) handleProbe(ctx context.Context, h transfer.StreamHeader, r io.Reader) ([]byte, error) {
	start := time.Now()
	if _, err := a.authorised(ctx, "probe stream", h.ID, a.fromSource(ctx, "", receivePhases...)); err != nil {
		return nil, err
	}
	checked := time.Since(start)
	tr := &timedReader{r: r}
	if _, err := io.Copy(io.Discard, tr); err != nil {
		return nil, err
	}
	ans := probeAnswer{Has: a.bases.has(h.ID, h.Meta["base"])}
	// Timed only when the data was read as it came: a record check that
	// waited for the replica let it pile up in the channel, and reading
	// that would look faster than the link.
	if checked < probeReadLate && !tr.first.IsZero() {
		ans.Bytes, ans.Nanos = tr.n-tr.firstN, int64(tr.last.Sub(tr.first))
	}
	return json.Marshal(ans)
}

// handleDeltaRestore is the final round: the archive is rebuilt from the
// base and the delta as it arrives and fed to the restore. The base goes
// afterwards, whatever the outcome.
func (a *Agent) handleDeltaRestore(ctx context.Context, h transfer.StreamHeader, r io.Reader) ([]byte, error) {
	if _, err := a.authorised(ctx, "restore stream", h.ID, a.fromSource(ctx, h.Meta["container"], receivePhases...)); err != nil {
		return nil, err
	}
	base, done, err := a.bases.open(h.ID, h.Meta["base"])
	if err != nil {
		return nil, fmt.Errorf("restore %s on %s: %w", h.Meta["name"], a.host, err)
	}
	defer a.bases.drop(h.ID)
	defer done()
	rd := delta.NewReader(r, base)
	defer rd.Close()
	return a.restoreFrom(ctx, h, rd)
}

// MethodFallback: pre-copy ran, but the final round was a full transfer
// (the target lost its base, or a round failed before any base existed).
const MethodFallback = "full-after-precopy"

// final adds the last round, the one the container was frozen for.
func (r *PrecopyReport) final(ckpt engine.Stats, st transfer.StreamStats, enc *delta.Encoder) {
	f := PrecopyRound{Round: len(r.Rounds) + 1, ArchiveBytes: ckpt.Bytes, DeltaBytes: st.Bytes, LiteralBytes: st.Bytes,
		WireBytes: st.WireBytes, Frozen: ckpt.FrozenTime, Checkpoint: ckpt.Duration, Duration: st.Duration}
	if enc != nil {
		es := enc.Stats()
		f.ArchiveBytes, f.LiteralBytes, f.DeltaBytes = es.Bytes, es.LiteralBytes, es.DeltaBytes
		r.BytesSaved = max(0, es.Bytes-es.DeltaBytes)
	} else if r.Method == MethodContent {
		r.Method = MethodFallback
	}
	r.WireBytes += st.WireBytes
	r.Final = &f
}

// record puts a copy of the report into a migration record (which names
// MethodDirect when it names no method). A nil report changes nothing.
func (r *PrecopyReport) record(m *cluster.MigrationRecord) {
	if r == nil {
		return
	}
	if m.Method == "" {
		m.Method = MethodDirect
	}
	m.Precopy = (*cluster.PrecopyReport)(r.clone())
}
