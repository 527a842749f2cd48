package migrate

// The page path: a transfer method (MethodPages), the default wherever its
// preconditions hold.
//
// Podman 4.3's export writes the whole checkpoint, memory included, to a
// temporary file before it sends a byte, and its import stages the whole
// body again before untarring it twice: four extra copies of the memory,
// serial, all inside the downtime. On the page path the memory never enters
// Podman's archive (engine.PageMover):
//
//   - Before the freeze the source opens a page channel (transfer) to the
//     target. The target's handler checks the migration record (this host
//     its target, the sender its source, not yet Confirming), prepares the
//     checkpoint directory the container's import will use (same ID) and
//     accepts; a target that cannot (old agent, a container with that ID
//     exists, no space for the directory) refuses here, and the source
//     falls back to export/import (MethodDirect) before anything froze.
//   - Source: the engine checkpoints through Podman while CRIU's page
//     server connection is pumped into the channel (engine/pageserver),
//     every byte recorded first under PagesConfig.Dir (0700). The target's
//     `criu page-server` writes the pages straight into the prepared
//     directory. If the channel fails mid-dump, CRIU's dump fails and the
//     container never stopped. The metadata archive (small: config, CRIU's
//     non-memory images, rootfs diff, volumes) then goes into the target's
//     pages-restore handler, which waits for its page receiver to have
//     finished cleanly and imports it through the engine's ordinary
//     Restore (so the target's restore policy judges it as any import);
//     runc restore reads the pages from the page cache.
//   - Rollback: the source holds no pages after such a dump, so the resume
//     step first replays the recording into a local page server writing
//     into the container's own checkpoint directory, then restores in
//     place (StepHooks). The recording goes once the source copy is
//     removed or resumed; the target's page directory goes with the abort.
//
// After content pre-copy (slow links) the final step is the same, except
// that CRIU's page session is answered on the source (pageserver.Answerer)
// and crosses the channel one way as a zstd-compressed delta against the
// pre-copied archive, which the target rebuilds and verifies (the delta's
// size and sha256) before its page server sees the end of the session.
//
// The record's Method says which method ran (pages, or direct after a
// fallback before the freeze); its report's Method the variant: "pages",
// "precopy-content+pages", "pages-after-precopy", or after a fallback
// "direct", "precopy-content" or "full-after-precopy", with the reason in
// Precopy.Pages.Fallback. A migration asked for with --method pages never
// falls back: it fails, untouched, with the reason.

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/pageserver"
	"github.com/edgemigrate/orchestrate/internal/pause"
	"github.com/edgemigrate/orchestrate/internal/safefs"
	"github.com/edgemigrate/orchestrate/transfer"
	"github.com/edgemigrate/orchestrate/transfer/delta"
)

// Stream and channel kinds of the page path.
const (
	// KindPages: the page channel (transfer.PageChannelType). Meta:
	// "container" (its ID); "oneway" and "base", when the session comes
	// as a zstd-compressed delta against that pre-copied archive.
	KindPages = "pages"
	// KindPagesRestore: the metadata archive of a page-path migration;
	// the target restores it once its page receiver for the same
	// migration finished cleanly.
	KindPagesRestore = "pages-restore"
)

// Methods of the page path: MethodPages is the transfer method (the
// record's Method); all three are variants in its report (Precopy.Method).
const (
	MethodPages        = "pages"
	MethodContentPages = "precopy-content+pages"
	// MethodPagesAfterPrecopy: pre-copy ran, but the target lost its base,
	// so the final page session went whole (compressed, on a slow link).
	MethodPagesAfterPrecopy = "pages-after-precopy"
)

// LabelPages on a container turns the page path "off" (export/import).
const LabelPages = "orchestrate.pages"

// PageReport is what the page path did, for the record.
type PageReport = cluster.PageReport

// PagesConfig configures the page path.
type PagesConfig struct {
	// Dir keeps the recordings of page sessions a rollback may need (the
	// container's memory: a private directory, root only, 0700, checked
	// before each use). Empty: the page path does not run from this host.
	Dir string
	// Stall ends a page session whose writes or answers make no progress
	// this long (a cut link); the dump then fails and the container runs on.
	Stall time.Duration
	// ReceiveWait bounds how long the target's restore waits for its page
	// receiver once the metadata archive arrived.
	ReceiveWait time.Duration
}

// DefaultPagesConfig returns the defaults; Dir must still be set.
func DefaultPagesConfig() PagesConfig {
	return PagesConfig{Stall: 10 * time.Second, ReceiveWait: time.Minute}
}

// pagesMethod is the page path. Its source side is Transfer and the
// rollback hooks; its target side the page channel and pages-restore
// handlers, which it owns with their receipts.
type pagesMethod struct {
	a   *Agent
	cfg PagesConfig

	mu       sync.Mutex
	receipts map[string]*pageReceipt // target: by migration ID
}

var (
	_ TransferMethod  = (*pagesMethod)(nil)
	_ TargetRegistrar = (*pagesMethod)(nil)
	_ StepHooks       = (*pagesMethod)(nil)
)

// SetPages registers the page path and, when cfg.Dir is set, makes it this
// source's default method; call before Register.
func (a *Agent) SetPages(cfg PagesConfig) {
	def := DefaultPagesConfig()
	if cfg.Stall <= 0 {
		cfg.Stall = def.Stall
	}
	if cfg.ReceiveWait <= 0 {
		cfg.ReceiveWait = def.ReceiveWait
	}
	a.RegisterMethod(&pagesMethod{a: a, cfg: cfg, receipts: map[string]*pageReceipt{}})
	if cfg.Dir != "" {
		a.mu.Lock()
		a.defMethod = MethodPages
		a.mu.Unlock()
	}
}

func (*pagesMethod) Name() string { return MethodPages }

// pageOpener opens page channels (transfer.Client).
type pageOpener interface {
	OpenPages(ctx context.Context, peer string, h transfer.StreamHeader) (*transfer.PageConn, error)
}

// pageHandlers registers page-channel handlers (transfer.Server).
type pageHandlers interface {
	HandlePages(kind string, h transfer.PageHandler)
}

// pagesDecision says why the page path cannot run for a container ("":
// it can, as far as the source knows before asking the engine and the
// target). It is pure.
func pagesDecision(label string, enabled, engineCan, senderCan bool) string {
	switch {
	case strings.EqualFold(label, "off") || strings.EqualFold(label, "false"):
		return LabelPages + "=off"
	case !enabled:
		return "the page path is not configured on this host (no recording directory)"
	case !engineCan:
		return "the engine cannot send pages while it dumps"
	case !senderCan:
		return "the transfer client has no page channels"
	}
	return ""
}

// notRun is an error of the page path before anything froze: the caller
// may fall back to export/import.
type notRun struct{ why string }

func (e notRun) Error() string { return e.why }

// Transfer runs the page path, or, when its preconditions do not hold
// and the record asked for no method, export/import (MethodDirect). Both
// judge pre-copy the same way.
func (p *pagesMethod) Transfer(ctx context.Context, job *OutJob) (OutResult, error) {
	a, c := p.a, job.Container
	asked := job.Req.Method == MethodPages
	why := p.unavailable(ctx, c)
	if why != "" && asked {
		return OutResult{}, fmt.Errorf("%w: the page path cannot move %s from %s: %s", cluster.ErrInvalid, c.Name, a.host, why)
	}
	// Pre-copy while the container runs; base is nil for a full transfer.
	base, pre := a.precopyOut(ctx, c, job.Req, job.emit, job.Log)
	if why == "" && !asked {
		why = afterEnginePrecopy(pre) // precopy_engine.go
	}
	if why == "" {
		res, err := p.out(ctx, job, base, pre)
		var nr notRun
		if !errors.As(err, &nr) {
			return res, err
		}
		why = nr.why
		if asked {
			pre.Pages = &PageReport{Fallback: why}
			return OutResult{Precopy: pre}, fmt.Errorf("page path for %s to %s: %s", c.Name, job.Req.TargetHost, why)
		}
	}
	job.Log.Info("page path not taken: export/import", "reason", why)
	pre.Pages = &PageReport{Fallback: why}
	job.UseMethod(MethodDirect)
	return a.streamOut(ctx, job, base, pre)
}

// unavailable says why the page path cannot run for c ("": it can).
func (p *pagesMethod) unavailable(ctx context.Context, c engine.Container) string {
	pm, engineCan := p.a.eng.(engine.PageMover)
	_, senderCan := p.a.sender.(pageOpener)
	if why := pagesDecision(c.Labels[LabelPages], p.cfg.Dir != "", engineCan, senderCan); why != "" {
		return why
	}
	if err := pm.CheckPages(ctx, c.ID); err != nil {
		return err.Error()
	}
	return ""
}

// recordingPath is where the source keeps container id's page session.
func (p *pagesMethod) recordingPath(id string) string {
	return filepath.Join(p.cfg.Dir, filepath.Base(id)+".pages")
}

// variant is the report's method for a page session: after pre-copy with
// the target's base a delta, without it a whole session.
func variant(pre *PrecopyReport, withBase bool) string {
	switch {
	case withBase:
		return MethodContentPages
	case pre.Method == MethodContent:
		return MethodPagesAfterPrecopy
	}
	return MethodPages
}

// out runs the page path after pre-copy (base is the target's pre-copied
// archive, nil without pre-copy). An error of type notRun means nothing
// froze and the page path did not run.
//
// On a fast link (or one never probed) the page session runs interactively
// and uncompressed: the target's page server answers CRIU, so CRIU's dump
// completes only once the target holds every page. On a slow link (below
// PrecopyConfig.FastLink) it goes one way, zstd-compressed, as a delta
// against base when there is one: compression then pays more than the
// round trips, and the delta's own size and sha256 prove it whole.
func (p *pagesMethod) out(ctx context.Context, job *OutJob, base *delta.Index, pre *PrecopyReport) (OutResult, error) {
	a, c, req, log := p.a, job.Container, job.Req, job.Log
	pm := a.eng.(engine.PageMover)
	opener := a.sender.(pageOpener)
	if err := safefs.PrivateDir(p.cfg.Dir); err != nil {
		return OutResult{}, notRun{fmt.Sprintf("recording directory: %v", err)}
	}
	oneWay := base != nil || (pre.LinkBps > 0 && pre.LinkBps < a.pc.FastLink)
	meta := map[string]string{"container": c.ID}
	if oneWay {
		meta["oneway"] = "zstd+delta"
		meta["base"] = hex.EncodeToString(sumOf(base))
	}
	pc, err := opener.OpenPages(ctx, req.TargetAddr, transfer.StreamHeader{Kind: KindPages, ID: req.Migration, Meta: meta})
	if err != nil {
		return OutResult{}, notRun{fmt.Sprintf("target %s: %v", req.TargetHost, err)}
	}
	defer pc.Close()
	rep := &PageReport{Link: "ssh"}
	if pc.Link() {
		rep.Link = "page-link"
	}
	rec, err := os.OpenFile(p.recordingPath(c.ID), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return OutResult{}, notRun{fmt.Sprintf("recording: %v", err)}
	}
	defer func() {
		rec.Close()
		if job.frozen.IsZero() {
			// Nothing froze, so no rollback step will come for it.
			_ = os.Remove(rec.Name())
		}
	}()

	// The record has the method and its variant from the freeze on, even
	// if the final report never reaches a leader.
	ahead := pre.clone()
	ahead.Method = variant(pre, base != nil)
	ahead.Reason = strings.TrimPrefix(ahead.Reason+"; "+pagesNote, "; ")
	job.Ahead(ahead)

	var session pageserver.Stats
	var es delta.Stats
	var sessionEnd time.Time
	sink := func(ctx context.Context, conn io.ReadWriteCloser) error {
		job.Streaming()
		start := time.Now()
		defer func() { rep.Session, sessionEnd = time.Since(start), time.Now() }()
		conn = &pauseAfterFirst{ReadWriteCloser: conn, ctx: ctx}
		cfg := pageserver.PumpConfig{Record: pageserver.NewWriteBehind(rec), Stall: p.cfg.Stall}
		if !oneWay {
			var err error
			session, err = pageserver.Pump(ctx, conn, pc, cfg)
			rep.WireBytes = session.Sent
			return err
		}
		cw := &countingWriter{w: pc}
		zw, err := zstd.NewWriter(cw, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		if err != nil {
			conn.Close()
			return err
		}
		enc, err := delta.NewEncoder(zw, base)
		if err != nil {
			conn.Close()
			return err
		}
		ans := pageserver.NewAnswerer(enc)
		session, err = pageserver.Pump(ctx, conn, ans, cfg)
		if err == nil && session.Complete {
			if err = enc.Close(); err == nil {
				err = zw.Close()
			}
			if err == nil {
				err = pc.CloseWrite()
			}
		} else {
			enc.CloseWithError(errors.Join(err, pageserver.ErrIncomplete))
			zw.Close()
			pc.Close()
		}
		es, rep.WireBytes = enc.Stats(), cw.n
		return err
	}

	hdr := transfer.StreamHeader{Kind: KindPagesRestore, ID: req.Migration, Meta: map[string]string{"container": c.ID, "name": c.Name}}
	var ckpt engine.Stats
	var noPages bool
	result, st, err := a.sender.Stream(ctx, req.TargetAddr, hdr, func(w io.Writer) error {
		// A runtime that ignores runc.conf leaves the pages in the
		// archive: its first bytes then say the state is crossing.
		cw := &progressWriter{w: w, first: job.Streaming}
		var err error
		// The freeze is announced once the engine holds the host-wide
		// lock and is about to ask the runtime (other page checkpoints
		// may hold it a moment): the downtime does not count the wait,
		// and a refusal before it leaves the container untouched.
		ckpt, err = pm.CheckpointPages(ctx, c.ID, cw, sink, engine.CheckpointOptions{Keep: true, TCPEstablished: true,
			Starting: func() {
				job.Frozen()
				pause.At(ctx, pause.Checkpointing) // test builds only
			}})
		if errors.Is(err, engine.ErrNoPageServer) && job.frozen.IsZero() {
			noPages = true
		}
		if err == nil {
			job.Frozen() // an engine that could not tell when it started
		}
		if err == nil && session.Sent == 0 {
			// CRIU never connected: the pages are in the archive. End
			// the empty session so that the target restores the
			// archive as it is.
			_ = pc.CloseWrite()
		}
		if err == nil {
			job.Received(ckpt.Bytes, ckpt)
		}
		return err
	})
	if noPages {
		// Refused before anything froze, although CheckPages said yes a
		// moment ago: export/import it is, once the target's receiver
		// has seen the session end and discarded its directory (the
		// import will need that container ID).
		_ = pc.CloseWrite()
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_ = pc.Result(wctx)
		cancel()
		return OutResult{}, notRun{err.Error()}
	}
	rep.PageBytes, rep.Pages, rep.ArchiveBytes, rep.DeltaSaved = session.Sent, session.Pages, ckpt.Bytes, es.CopiedBytes
	pre.Pages = rep
	pre.recordPages(ckpt, st, rep, es, oneWay)
	res := OutResult{Precopy: pre}
	if err != nil {
		// CRIU only saw its connection break: the target's receiver
		// says why (a full disk, its page server gone).
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if perr := pc.Result(wctx); perr != nil && !errors.Is(perr, context.DeadlineExceeded) {
			err = fmt.Errorf("%w; the target's page receiver: %v", err, perr)
		}
		cancel()
		log.Warn("migrate out (page path) failed", "err", err, "session_complete", session.Complete)
		return res, fmt.Errorf("send %s to %s: %w", c.Name, req.TargetHost, err)
	}
	var rr restoreResult
	if err := json.Unmarshal(result, &rr); err != nil {
		return res, fmt.Errorf("target %s answered %q: %w", req.TargetHost, result, err)
	}
	after := time.Duration(0)
	if !sessionEnd.IsZero() {
		after = time.Since(sessionEnd).Round(time.Millisecond)
	}
	log.Info("migrated out (page path)", "variant", pre.Method, "pages_mib", session.Sent>>20, "wire_mib", rep.WireBytes>>20,
		"archive", ckpt.Bytes, "session", rep.Session, "frozen", ckpt.FrozenTime, "after_session", after)
	res.Bytes, res.Compression, res.Checkpoint, res.Restore, res.Container = session.Sent+st.Bytes, st.Compression, ckpt, rr.Stats, rr.Container
	return res, nil
}

// pauseAfterFirst holds the page session at pause.Transferring once its
// first bytes went on (test builds only; elsewhere it only passes reads).
type pauseAfterFirst struct {
	io.ReadWriteCloser
	ctx   context.Context
	reads int
}

func (r *pauseAfterFirst) Read(b []byte) (int, error) {
	if r.reads++; r.reads == 2 {
		pause.At(r.ctx, pause.Transferring)
	}
	return r.ReadWriteCloser.Read(b)
}

// recordPages fills the report's final round and variant for a page-path
// migration: the round is the page session plus the metadata archive.
func (r *PrecopyReport) recordPages(ckpt engine.Stats, st transfer.StreamStats, p *PageReport, es delta.Stats, oneWay bool) {
	lit, dlt := p.PageBytes, p.PageBytes
	if oneWay {
		lit, dlt = es.LiteralBytes, es.DeltaBytes
	}
	f := PrecopyRound{Round: len(r.Rounds) + 1, ArchiveBytes: p.PageBytes + ckpt.Bytes, LiteralBytes: lit + st.Bytes,
		DeltaBytes: dlt + st.Bytes, WireBytes: p.WireBytes + st.WireBytes, Frozen: ckpt.FrozenTime, Checkpoint: ckpt.Duration, Duration: st.Duration}
	r.Final = &f
	r.WireBytes += f.WireBytes
	note := pagesNote
	switch {
	case p.PageBytes == 0:
		// CRIU dumped locally: Podman's archive carried the pages.
		if r.Method == MethodContent {
			r.Method = MethodFallback
		}
		p.Fallback = "CRIU did not connect to the page server (its runtime ignored /etc/criu/runc.conf): the pages went in the archive"
		note = p.Fallback
	case p.DeltaSaved > 0 || (r.Method == MethodContent && r.Fallback == ""):
		r.Method, r.BytesSaved = MethodContentPages, p.DeltaSaved
		note = "final round: memory pages as a delta while CRIU dumps"
	case r.Method == MethodContent:
		r.Method = MethodPagesAfterPrecopy
	default:
		r.Method = MethodPages
	}
	if oneWay && p.PageBytes > 0 && r.Method != MethodContentPages {
		note += ", compressed (slow link)"
	}
	r.Reason = strings.TrimPrefix(r.Reason+"; "+note, "; ")
}

const pagesNote = "memory pages sent while CRIU dumps"

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Target side.

// pageReceipt is one page receiver's outcome, by migration.
type pageReceipt struct {
	container string
	done      chan struct{}
	err       error
	// empty: the session ended before CRIU sent a byte (its runtime
	// ignored runc.conf), so the archive carries the pages.
	empty bool
}

// RegisterTarget adds the page channel and pages-restore handlers, where
// the engine and the transfer server can carry pages, and sweeps the
// recordings an earlier run of this agent left.
func (p *pagesMethod) RegisterTarget(streams StreamHandlers) {
	ph, ok := streams.(pageHandlers)
	if !ok {
		return
	}
	if _, ok := p.a.eng.(engine.PageMover); !ok {
		return
	}
	ph.HandlePages(KindPages, p.handlePages)
	streams.Handle(KindPagesRestore, p.handlePagesRestore)
	go p.sweepRecordings(context.Background())
}

// sweepRecordings removes recordings no rollback can need any more: their
// container is gone (the migration finished and the source copy went) or
// runs. A stopped, checkpointed container keeps its recording.
func (p *pagesMethod) sweepRecordings(ctx context.Context) {
	if p.cfg.Dir == "" {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	ents, err := os.ReadDir(p.cfg.Dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".pages")
		if !ok {
			continue
		}
		unlock := p.a.lock(ctx, id)
		c, err := p.a.eng.Inspect(ctx, id)
		if errors.Is(err, engine.ErrNotFound) || (err == nil && c.Running) {
			_ = os.Remove(filepath.Join(p.cfg.Dir, e.Name()))
		}
		unlock()
	}
}

// pagesAllowed adds to fromSource that the record leaves the method to the
// source or asks for the page path.
func (p *pagesMethod) pagesAllowed(ctx context.Context, container string) func(cluster.MigrationRecord) string {
	from := p.a.fromSource(ctx, container, receivePhases...)
	return func(m cluster.MigrationRecord) string {
		if why := from(m); why != "" {
			return why
		}
		if m.Method != "" && m.Method != MethodPages {
			return "it asks for method " + m.Method
		}
		return ""
	}
}

// handlePages is the target's page channel: check the record, prepare the
// checkpoint directory before the source freezes, accept, and run the page
// server on what arrives. A failed receive discards the directory at once.
func (p *pagesMethod) handlePages(ctx context.Context, h transfer.StreamHeader, ch *transfer.PageChannel) error {
	a := p.a
	pm := a.eng.(engine.PageMover)
	id := h.Meta["container"]
	if !validID.MatchString(h.ID) || id == "" {
		return fmt.Errorf("page channel with migration %q, container %q", h.ID, id)
	}
	if _, err := a.authorised(ctx, "page channel", h.ID, p.pagesAllowed(ctx, id)); err != nil {
		return err
	}
	oneWay := h.Meta["oneway"] == "zstd+delta"
	if h.Meta["oneway"] != "" && !oneWay {
		return fmt.Errorf("page channel encoding %q unknown", h.Meta["oneway"])
	}
	var base *delta.Base
	closeBase := func() {}
	if sum := h.Meta["base"]; sum != "" {
		var err error
		if base, closeBase, err = a.bases.open(h.ID, sum); err != nil {
			return err
		}
	}
	defer closeBase()
	if err := pm.PreparePages(ctx, id); err != nil {
		return fmt.Errorf("pages for %s on %s: %w", id, a.host, err)
	}
	r := &pageReceipt{container: id, done: make(chan struct{})}
	p.mu.Lock()
	p.receipts[h.ID] = r
	p.mu.Unlock()
	defer close(r.done)
	if r.err = ch.Accept(); r.err != nil {
		_ = pm.DiscardPages(context.WithoutCancel(ctx), id)
		return r.err
	}
	var conn io.ReadWriteCloser = ch
	if oneWay {
		// A zstd-compressed delta of the session, one way; the source
		// answered CRIU itself. The rebuilt stream fails unless it ends
		// with the size and sha256 the source stated.
		zr, err := zstd.NewReader(ch, zstd.WithDecoderConcurrency(1))
		if err != nil {
			r.err = err
			return err
		}
		defer zr.Close()
		rd := delta.NewReader(zr, base)
		defer rd.Close()
		conn = pageChannelOneWay{OneWay: pageserver.OneWay{R: rd}, ch: ch}
	}
	st, err := pm.ReceivePages(ctx, id, conn)
	if err != nil {
		r.err, r.empty = err, st.Bytes == 0
		_ = pm.DiscardPages(context.WithoutCancel(ctx), id)
		a.log.Warn("page receive failed", "migration", h.ID, "container", id, "err", err, "empty", r.empty)
		return err
	}
	a.log.Info("pages received", "migration", h.ID, "container", id, "mib", st.Bytes>>20, "pages", st.Pages)
	return nil
}

// pageChannelOneWay is a OneWay end that also closes (and, when stalled,
// aborts) the channel under it.
type pageChannelOneWay struct {
	pageserver.OneWay
	ch *transfer.PageChannel
}

func (p pageChannelOneWay) Close() error {
	p.OneWay.Close()
	return p.ch.Close()
}

func (p pageChannelOneWay) Abort() error { return p.ch.Abort() }

// readAhead is how much of a metadata archive the target reads while its
// pages may still arrive (the rest streams into the restore after).
const readAhead = 32 << 20

// handlePagesRestore restores the metadata archive of a page-path
// migration once the page receiver of the same migration finished cleanly.
// The archive goes through the engine's ordinary Restore, which applies the
// restore policy as to any import.
func (p *pagesMethod) handlePagesRestore(ctx context.Context, h transfer.StreamHeader, r io.Reader) ([]byte, error) {
	a := p.a
	if _, err := a.authorised(ctx, "pages-restore stream", h.ID, p.pagesAllowed(ctx, h.Meta["container"])); err != nil {
		return nil, err
	}
	p.mu.Lock()
	rc := p.receipts[h.ID]
	p.mu.Unlock()
	if rc == nil || rc.container != h.Meta["container"] {
		return nil, fmt.Errorf("restore %s on %s: no page session of migration %s for this container", h.Meta["name"], a.host, h.ID)
	}
	// The archive comes once the source's dump ended; read its start while
	// the page receiver finishes, so that the two overlap.
	var head []byte
	var rerr error
	read := make(chan struct{})
	go func() {
		defer close(read)
		head, rerr = io.ReadAll(io.LimitReader(r, readAhead))
	}()
	select {
	case <-read:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if rerr != nil {
		return nil, fmt.Errorf("restore %s on %s: %w", h.Meta["name"], a.host, rerr)
	}
	wait := time.NewTimer(p.cfg.ReceiveWait)
	defer wait.Stop()
	select {
	case <-rc.done:
	case <-wait.C:
		return nil, fmt.Errorf("restore %s on %s: the pages did not arrive within %s of the archive", h.Meta["name"], a.host, p.cfg.ReceiveWait)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	delete(p.receipts, h.ID)
	p.mu.Unlock()
	defer a.bases.drop(h.ID)
	if rc.err != nil {
		// Only an empty session (CRIU never connected: its archive holds
		// its pages) restores without its pages; the receiver has
		// discarded its directory by now. An archive without pages then
		// fails in CRIU's restore.
		if !rc.empty {
			return nil, fmt.Errorf("restore %s on %s: pages: %w", h.Meta["name"], a.host, rc.err)
		}
		a.log.Info("the page session was empty: restoring the archive as it is", "migration", h.ID, "container", rc.container)
	}
	return a.restoreFrom(ctx, h, io.MultiReader(bytes.NewReader(head), r))
}

// Step hooks: rollback on the source, cleanup on the target. The agent
// calls them only for the record that authorised the step.

// BeforeResume rebuilds a stopped source copy's pages from its recording
// before it is resumed; without a recording (export/import, or the dump
// never completed and the container runs) it does nothing.
func (p *pagesMethod) BeforeResume(ctx context.Context, m cluster.MigrationRecord) error {
	pm, ok := p.a.eng.(engine.PageMover)
	if p.cfg.Dir == "" || !ok {
		return nil
	}
	c, err := p.a.eng.Inspect(ctx, m.Container)
	if err != nil || c.Running {
		return nil // Resume reports a missing container itself
	}
	f, err := os.Open(p.recordingPath(c.ID))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	start := time.Now()
	err = pm.ReplayPages(ctx, c.ID, f)
	if errors.Is(err, pageserver.ErrIncomplete) {
		// The dump never completed through the page server: either the
		// container still runs, or CRIU dumped locally after all (the
		// checkpoint holds its pages). Resume decides.
		p.a.log.Info("page recording incomplete: resuming from the kept checkpoint as it is", "container", c.Name, "migration", m.ID, "err", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("rebuild the pages of %s from its recording: %w", c.Name, err)
	}
	p.a.log.Info("rebuilt pages from the recording for the rollback", "container", c.Name, "migration", m.ID, "took", time.Since(start))
	return nil
}

// SourceSettled removes the recording once no rollback can need it.
func (p *pagesMethod) SourceSettled(m cluster.MigrationRecord) {
	if p.cfg.Dir != "" && m.Container != "" {
		_ = os.Remove(p.recordingPath(m.Container))
	}
}

// Aborted removes a page directory no container took, and forgets the
// migration's receipt.
func (p *pagesMethod) Aborted(ctx context.Context, m cluster.MigrationRecord) {
	p.mu.Lock()
	delete(p.receipts, m.ID)
	p.mu.Unlock()
	pm, ok := p.a.eng.(engine.PageMover)
	if !ok || m.Container == "" {
		return
	}
	if err := pm.DiscardPages(ctx, m.Container); err != nil {
		p.a.log.Warn("could not discard a page directory", "container", m.Container, "migration", m.ID, "err", err)
	}
}
