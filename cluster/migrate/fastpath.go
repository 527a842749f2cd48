package migrate

// The page path: the default way out wherever its preconditions hold.
//
// Podman 4.3's export writes the whole checkpoint, memory included, to a
// temporary file before it sends a byte, and its import stages the whole
// body again before untarring it twice: four extra copies of the memory,
// serial, all inside the downtime. On the page path the memory never enters
// Podman's archive (engine.PageMover):
//
//   - Before the freeze the source opens a page channel (transfer) to the
//     target. The target's handler prepares the checkpoint directory the
//     container's import will use (same ID) and accepts; a target that
//     cannot (old agent, a container with that ID exists, no space for the
//     directory) refuses here, and the source falls back to export/import
//     before anything froze.
//   - Source: the engine checkpoints through Podman while CRIU's page
//     server connection is pumped into the channel (engine/pageserver),
//     every byte recorded first under PagesConfig.Dir (0700). The
//     target's `criu page-server` writes the pages straight into the
//     prepared directory. If the channel fails mid-dump, CRIU's dump
//     fails and the container never stopped. The metadata archive (small:
//     config, CRIU's non-memory images, rootfs diff, volumes) then goes
//     into the target's pages-restore handler, which waits for its page
//     receiver to have finished cleanly and imports it; runc restore reads
//     the pages from the page cache.
//   - Rollback: the source holds no pages after such a dump, so resume
//     first replays the recording into a local page server writing into
//     the container's own checkpoint directory, then restores in place.
//     The recording goes once the source copy is removed or resumed.
//
// After content pre-copy (slow links) the final step is the same, except
// that CRIU's page session is answered on the source (pageserver.Answerer)
// and crosses the channel one way as a zstd-compressed delta against the
// pre-copied archive, which the target rebuilds and verifies (the delta's
// size and sha256) before its page server sees the end of the session.
//
// The method in the record says which path ran: "pages", "precopy-content+
// pages", or, after a fallback, "direct" / "precopy-content" with the
// reason.

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/pageserver"
	"github.com/edgemigrate/orchestrate/transfer"
	"github.com/edgemigrate/orchestrate/transfer/delta"
)

// Stream and channel kinds of the page path.
const (
	// KindPages: the page channel (transfer.PageChannelType). Meta:
	// "container" (its ID); "base", when the session comes as a delta
	// against that pre-copied archive.
	KindPages = "pages"
	// KindPagesRestore: the metadata archive of a page-path migration;
	// the target restores it once its page receiver for the same
	// migration finished cleanly.
	KindPagesRestore = "pages-restore"
)

// Methods of the page path, recorded like the others (PrecopyReport.Method).
const (
	MethodPages        = "pages"
	MethodContentPages = "precopy-content+pages"
)

// LabelPages on a container turns the page path "off" (export/import).
const LabelPages = "orchestrate.pages"

// PagesConfig configures the page path.
type PagesConfig struct {
	// Dir keeps the recordings of page sessions a rollback may need (the
	// container's memory: root only, 0700). Empty disables the page path.
	Dir string
	// Stall ends a page session whose writes or answers make no progress
	// this long (a cut link); the dump then fails and the container runs on.
	Stall time.Duration
	// ReceiveWait bounds how long the target's restore waits for its page
	// receiver after the archive arrived.
	ReceiveWait time.Duration
	// Timeout bounds the source's part once the container froze. That
	// part no longer follows the leader's request: a leader that dies
	// mid-dump must not cut a session that would otherwise complete (the
	// next leader finds the container running on the target, or rolls
	// back).
	Timeout time.Duration
}

// DefaultPagesConfig returns the defaults; Dir must still be set.
func DefaultPagesConfig() PagesConfig {
	return PagesConfig{Stall: 10 * time.Second, ReceiveWait: time.Minute, Timeout: 10 * time.Minute}
}

// pagePath is the agent's page-path state.
type pagePath struct {
	cfg      PagesConfig
	mu       sync.Mutex
	receipts map[string]*pageReceipt // target: by migration ID
}

// SetPages enables the page path; call before Register.
func (a *Agent) SetPages(cfg PagesConfig) {
	def := DefaultPagesConfig()
	if cfg.Stall <= 0 {
		cfg.Stall = def.Stall
	}
	if cfg.ReceiveWait <= 0 {
		cfg.ReceiveWait = def.ReceiveWait
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = def.Timeout
	}
	a.pp.cfg = cfg
}

// pageOpener opens page channels (transfer.Client).
type pageOpener interface {
	OpenPages(ctx context.Context, peer string, h transfer.StreamHeader) (*transfer.PageConn, error)
}

// pageHandlers registers page-channel handlers (transfer.Server).
type pageHandlers interface {
	HandlePages(kind string, h transfer.PageHandler)
}

// PageReport is what the page path did, for the record.
type PageReport struct {
	PageBytes    int64         `json:"page_bytes"`            // page session bytes CRIU sent
	Pages        int64         `json:"pages"`                 // memory pages carried
	WireBytes    int64         `json:"wire_bytes,omitempty"`  // on the channel, after delta and zstd
	ArchiveBytes int64         `json:"archive_bytes"`         // the metadata archive
	Session      time.Duration `json:"session"`               // from CRIU's connect to its CLOSE answered
	Fallback     string        `json:"fallback,omitempty"`    // why the page path did not run
	DeltaSaved   int64         `json:"delta_saved,omitempty"` // page bytes not sent thanks to the base
}

// pagesDecision says whether the page path runs for a container, and why
// not. It is a pure function of what the source knows before the freeze.
func pagesDecision(label string, enabled, engineCan, senderCan bool) (bool, string) {
	switch {
	case strings.EqualFold(label, "off") || strings.EqualFold(label, "false"):
		return false, LabelPages + "=off"
	case !enabled:
		return false, "the page path is not configured on this host (no recording directory)"
	case !engineCan:
		return false, "the engine cannot send pages while it dumps"
	case !senderCan:
		return false, "the transfer client has no page channels"
	}
	return true, ""
}

// recordingPath is where the source keeps container id's page session.
func (a *Agent) recordingPath(id string) string {
	return filepath.Join(a.pp.cfg.Dir, filepath.Base(id)+".pages")
}

// pagesOut runs the page path for a migration out, after pre-copy (base is
// the target's pre-copied archive, nil without pre-copy). It returns false
// when the page path did not run and nothing was frozen: the caller then
// streams the export as before. It returns true when it handled the
// migration, successfully or not, and emitted the final progress line.
//
// On a fast link (or one never probed) the page session runs interactively
// and uncompressed: the target's page server answers CRIU, so CRIU's dump
// completes only once the target holds every page. On a slow link (below
// PrecopyConfig.FastLink) it goes one way, zstd-compressed, as a delta
// against base when there is one: compression then pays more than the
// round trips, and the delta's own size and sha256 prove it whole.
func (a *Agent) pagesOut(ctx context.Context, c engine.Container, req OutRequest, base *delta.Index, pre *PrecopyReport, emit func(Progress), log *slog.Logger) bool {
	pm, engineCan := a.eng.(engine.PageMover)
	opener, senderCan := a.sender.(pageOpener)
	ok, why := pagesDecision(c.Labels[LabelPages], a.pp.cfg.Dir != "", engineCan, senderCan)
	if !ok {
		pre.Pages = &PageReport{Fallback: why}
		return false
	}
	fallback := func(why string) bool {
		log.Info("page path not taken", "reason", why)
		pre.Pages = &PageReport{Fallback: why}
		return false
	}
	if err := os.MkdirAll(a.pp.cfg.Dir, 0o700); err != nil {
		return fallback(fmt.Sprintf("recording directory: %v", err))
	}
	oneWay := base != nil || (pre.LinkBps > 0 && pre.LinkBps < a.pc.FastLink)
	meta := map[string]string{"container": c.ID}
	if oneWay {
		meta["oneway"] = "zstd+delta"
		meta["base"] = hex.EncodeToString(sumOf(base))
	}
	if ctx.Err() != nil {
		return fallback(fmt.Sprintf("the leader's request ended: %v", ctx.Err()))
	}
	// From the page channel on, the session runs to its end whatever
	// happens to the leader's request (see PagesConfig.Timeout).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.pp.cfg.Timeout)
	defer cancel()
	pc, err := opener.OpenPages(ctx, req.TargetAddr, transfer.StreamHeader{Kind: KindPages, ID: req.Migration, Meta: meta})
	if err != nil {
		return fallback(fmt.Sprintf("target %s: %v", req.TargetHost, err))
	}
	defer pc.Close()
	rec, err := os.OpenFile(a.recordingPath(c.ID), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fallback(fmt.Sprintf("recording: %v", err))
	}
	defer rec.Close()

	rep := &PageReport{}
	var session pageserver.Stats
	var es delta.Stats
	var sessionEnd time.Time
	sink := func(ctx context.Context, conn io.ReadWriteCloser) error {
		emit(Progress{Kind: EvStreaming})
		start := time.Now()
		defer func() { rep.Session, sessionEnd = time.Since(start), time.Now() }()
		cfg := pageserver.PumpConfig{Record: rec, Stall: a.pp.cfg.Stall}
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
		emit(Progress{Kind: EvFrozen})
		var err error
		ckpt, err = pm.CheckpointPages(ctx, c.ID, w, sink, engine.CheckpointOptions{Keep: true, TCPEstablished: true})
		if errors.Is(err, engine.ErrNoPageServer) {
			noPages = true
		}
		if err == nil && session.Sent == 0 {
			// CRIU never connected (its runtime ignored runc.conf): the
			// pages are in the archive. End the empty session so that
			// the target restores the archive as it is.
			_ = pc.CloseWrite()
		}
		if err == nil {
			emit(Progress{Kind: EvReceived, Bytes: ckpt.Bytes, Checkpoint: &ckpt})
		}
		return err
	})
	if noPages {
		// Refused before anything froze: export/import it is, once the
		// target's receiver has seen the session end and discarded its
		// directory (the import will need that container ID).
		_ = pc.CloseWrite()
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_ = pc.Result(wctx)
		cancel()
		return fallback(err.Error())
	}
	rep.PageBytes, rep.Pages, rep.ArchiveBytes, rep.DeltaSaved = session.Sent, session.Pages, ckpt.Bytes, es.CopiedBytes
	pre.Pages = rep
	pre.recordPages(ckpt, st, rep, es, oneWay)
	if err != nil {
		log.Warn("migrate out (page path) failed", "err", err, "session_complete", session.Complete)
		emit(Progress{Kind: EvFailed, Err: fmt.Sprintf("send %s to %s: %v", c.Name, req.TargetHost, err), Precopy: pre})
		return true
	}
	var res restoreResult
	if err := json.Unmarshal(result, &res); err != nil {
		emit(Progress{Kind: EvFailed, Err: fmt.Sprintf("target %s answered %q: %v", req.TargetHost, result, err), Precopy: pre})
		return true
	}
	after := time.Duration(0)
	if !sessionEnd.IsZero() {
		after = time.Since(sessionEnd).Round(time.Millisecond)
	}
	log.Info("migrated out (page path)", "method", pre.Method, "pages_mib", session.Sent>>20, "wire_mib", rep.WireBytes>>20,
		"archive", ckpt.Bytes, "session", rep.Session, "frozen", ckpt.FrozenTime, "after_session", after)
	emit(Progress{Kind: progRestored, Bytes: session.Sent + st.Bytes, Compression: st.Compression, Checkpoint: &ckpt,
		Restore: &res.Stats, Container: &res.Container, Precopy: pre})
	return true
}

// MethodPagesAfterPrecopy: pre-copy ran, but the target lost its base, so
// the final page session went whole (compressed, on a slow link).
const MethodPagesAfterPrecopy = "pages-after-precopy"

// recordPages fills the report's final round and method for a page-path
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
	note := "memory pages sent while CRIU dumps"
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
}

func (a *Agent) registerPages(streams StreamHandlers) {
	ph, ok := streams.(pageHandlers)
	if !ok {
		return
	}
	if _, ok := a.eng.(engine.PageMover); !ok {
		return
	}
	ph.HandlePages(KindPages, a.handlePages)
	streams.Handle(KindPagesRestore, a.handlePagesRestore)
	go a.sweepRecordings(context.Background())
}

// sweepRecordings removes recordings no rollback can need any more: their
// container is gone (the migration finished and the source copy went) or
// runs. A stopped, checkpointed container keeps its recording.
func (a *Agent) sweepRecordings(ctx context.Context) {
	if a.pp.cfg.Dir == "" {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	ents, err := os.ReadDir(a.pp.cfg.Dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".pages")
		if !ok {
			continue
		}
		unlock := a.lock(ctx, id)
		c, err := a.eng.Inspect(ctx, id)
		if errors.Is(err, engine.ErrNotFound) || (err == nil && c.Running) {
			_ = os.Remove(filepath.Join(a.pp.cfg.Dir, e.Name()))
		}
		unlock()
	}
}

// handlePages is the target's page channel: prepare the checkpoint
// directory before the source freezes, accept, and run the page server on
// what arrives. A failed receive discards the directory at once.
func (a *Agent) handlePages(ctx context.Context, h transfer.StreamHeader, ch *transfer.PageChannel) error {
	pm := a.eng.(engine.PageMover)
	id := h.Meta["container"]
	if !validID.MatchString(h.ID) || id == "" {
		return fmt.Errorf("page channel with migration %q, container %q", h.ID, id)
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
		return fmt.Errorf("pages for %s on %s: %w", h.Meta["container"], a.host, err)
	}
	r := &pageReceipt{container: id, done: make(chan struct{})}
	a.pp.mu.Lock()
	if a.pp.receipts == nil {
		a.pp.receipts = map[string]*pageReceipt{}
	}
	a.pp.receipts[h.ID] = r
	a.pp.mu.Unlock()
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
		r.err = err
		_ = pm.DiscardPages(context.WithoutCancel(ctx), id)
		a.log.Warn("page receive failed", "migration", h.ID, "container", id, "err", err)
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

// handlePagesRestore restores the metadata archive of a page-path
// migration once the page receiver of the same migration finished cleanly.
func (a *Agent) handlePagesRestore(ctx context.Context, h transfer.StreamHeader, r io.Reader) ([]byte, error) {
	a.pp.mu.Lock()
	rc := a.pp.receipts[h.ID]
	a.pp.mu.Unlock()
	if rc == nil || rc.container != h.Meta["container"] {
		return nil, fmt.Errorf("restore %s on %s: no page session of migration %s for this container", h.Meta["name"], a.host, h.ID)
	}
	// The archive is small; read it while the pages still arrive, so that
	// the source's Podman finishes its part in parallel.
	var archive []byte
	var rerr error
	read := make(chan struct{})
	go func() {
		defer close(read)
		archive, rerr = io.ReadAll(r)
	}()
	wait := time.NewTimer(a.pp.cfg.ReceiveWait)
	defer wait.Stop()
	select {
	case <-rc.done:
	case <-wait.C:
		return nil, fmt.Errorf("restore %s on %s: the pages did not arrive within %s", h.Meta["name"], a.host, a.pp.cfg.ReceiveWait)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	a.pp.mu.Lock()
	delete(a.pp.receipts, h.ID)
	a.pp.mu.Unlock()
	defer a.bases.drop(h.ID)
	<-read
	if rerr != nil {
		return nil, rerr
	}
	if rc.err != nil {
		// Only an archive that carries its own pages (CRIU did not use
		// the page server) restores without its session; the receiver
		// has discarded its directory by now.
		if !archiveHasPages(archive) {
			return nil, fmt.Errorf("restore %s on %s: pages: %w", h.Meta["name"], a.host, rc.err)
		}
		a.log.Info("the archive carries its pages: restoring it as it is", "migration", h.ID, "container", rc.container)
	}
	return a.restoreFrom(ctx, h, bytes.NewReader(archive))
}

// archiveHasPages reports whether a checkpoint archive holds CRIU's page
// images itself.
func archiveHasPages(archive []byte) bool {
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if err != nil {
			return false
		}
		dir, base := path.Split(strings.TrimPrefix(h.Name, "./"))
		if path.Clean(dir) == "checkpoint" && strings.HasPrefix(base, "pages-") && strings.HasSuffix(base, ".img") {
			return true
		}
	}
}

// discardPages removes a page directory no container took (after a failed
// migration), and forgets the migration's receipt.
func (a *Agent) discardPages(ctx context.Context, req ContainerRequest) {
	a.pp.mu.Lock()
	delete(a.pp.receipts, req.Migration)
	a.pp.mu.Unlock()
	pm, ok := a.eng.(engine.PageMover)
	if !ok {
		return
	}
	id := req.Container
	if c, err := a.eng.Inspect(ctx, id); err == nil {
		id = c.ID
	}
	if err := pm.DiscardPages(ctx, id); err != nil {
		a.log.Warn("could not discard a page directory", "container", id, "err", err)
	}
}

// Source side, rollback.

// replayPages rebuilds a stopped container's pages from its recording
// before it is resumed; without a recording (export/import, or the dump
// never completed and the container runs) it does nothing.
func (a *Agent) replayPages(ctx context.Context, ref string) error {
	if a.pp.cfg.Dir == "" {
		return nil
	}
	pm, ok := a.eng.(engine.PageMover)
	if !ok {
		return nil
	}
	c, err := a.eng.Inspect(ctx, ref)
	if err != nil || c.Running {
		return nil // Resume reports a missing container itself
	}
	f, err := os.Open(a.recordingPath(c.ID))
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
		a.log.Info("page recording incomplete: resuming from the kept checkpoint as it is", "container", c.Name, "err", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("rebuild the pages of %s from its recording: %w", c.Name, err)
	}
	a.log.Info("rebuilt pages from the recording for the rollback", "container", c.Name, "took", time.Since(start))
	return nil
}

// dropRecording removes container ref's recording once it can no longer
// be needed (the source copy was removed, or runs again).
func (a *Agent) dropRecording(ref, id string) {
	if a.pp.cfg.Dir == "" {
		return
	}
	for _, x := range []string{ref, id} {
		if x != "" {
			_ = os.Remove(a.recordingPath(x))
		}
	}
}
