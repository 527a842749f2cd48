package migrate

// Engine pre-copy: CRIU's own, where the kernel tracks dirty pages.
//
// Where the source's engine has a pre-dump step (engine.PreCopier) and its
// kernel tracks dirty pages (Features.PreCopy: soft-dirty), the source
// pre-dumps the running container once (a brief freeze while CRIU collects
// the pages; then it runs on while they stream to the target, which keeps
// the archive as the migration's base). The final freeze dumps only the
// pages written since, and the target restores from the two archives.
//
// Against content pre-copy (precopy.go) it saves, on every migration:
//   - the final dump's time: CRIU writes only the dirty pages, where a
//     content round dumps the whole memory again and finds the change
//     afterwards by hashing; the dump is what bounds downtime on a fast link,
//     so engine pre-copy can pay where content pre-copy cannot;
//   - the extra freezes: one pre-dump, instead of one full leave-running
//     dump per round;
//   - page-exact deltas, instead of content-defined chunks that a scattered
//     write dirties whole.
// Content pre-copy keeps the rest: kernels without soft-dirty tracking,
// engines without a pre-dump (Docker), and the label
// orchestrate.precopy=content. chooseEnginePrecopy decides, and the record
// says why.
//
// Failure: a failed pre-dump round leaves the container running and falls
// back to content pre-copy. Right before the freeze the source asks the
// target whether it still holds the pre-dump (a restarted agent clears its
// bases); if not, the final round is a full transfer. A failed final round
// fails the migration like any other: the source resumes from its kept
// checkpoint, whose parent pre-dump is still on the source.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/transfer"
)

// Stream kinds of engine pre-copy.
const (
	// KindPreDump: the source's pre-dump archive; the target keeps it as
	// the migration's base (header ID).
	KindPreDump = "predump"
	// KindRestorePrevious: the final archive, which holds only the pages
	// written since the pre-dump; the target restores it with the base.
	KindRestorePrevious = "restore-previous"
)

// MethodEngine: pre-copy by the engine's own pre-dump (CRIU, soft-dirty).
const MethodEngine = "precopy-criu"

// Values of LabelPrecopy that force pre-copy and choose its method.
const (
	precopyWantEngine  = "criu"
	precopyWantContent = "content"
)

// precopyLabel reads LabelPrecopy: mode is what the link judgement reads
// ("on" forces pre-copy, "off" forbids it, anything else judges), want the
// method asked for ("" lets chooseEnginePrecopy decide).
func precopyLabel(labels map[string]string) (mode, want string) {
	v := strings.ToLower(labels[LabelPrecopy])
	switch v {
	case precopyWantEngine, precopyWantContent:
		return "on", v
	}
	return v, ""
}

// enginePrecopyInput is what chooseEnginePrecopy decides from.
type enginePrecopyInput struct {
	Capable  bool   // the engine driver has a pre-dump step (engine.PreCopier)
	Tracking bool   // the kernel tracks dirty pages (Features.PreCopy)
	Want     string // from the label: precopyWantEngine, precopyWantContent or ""
}

// chooseEnginePrecopy decides, once pre-copy is judged to pay, whether it
// is the engine's (CRIU pre-dump) or by content, and says why.
func chooseEnginePrecopy(in enginePrecopyInput) (bool, string) {
	switch {
	case in.Want == precopyWantContent:
		return false, LabelPrecopy + "=content"
	case !in.Capable && in.Want == precopyWantEngine:
		return false, LabelPrecopy + "=criu, but the engine driver has no pre-dump step: content pre-copy"
	case !in.Capable:
		return false, "the engine driver has no pre-dump step: content pre-copy"
	case !in.Tracking && in.Want == precopyWantEngine:
		return false, LabelPrecopy + "=criu, but the kernel tracks no dirty pages: content pre-copy"
	case !in.Tracking:
		return false, "the kernel tracks no dirty pages (soft-dirty): content pre-copy"
	case in.Want == precopyWantEngine:
		return true, LabelPrecopy + "=criu"
	}
	return true, "the kernel tracks dirty pages: CRIU pre-dumps once and the final dump writes only the pages written since"
}

// enginePrecopy decides the method for c and, when it is the engine's, runs
// the pre-dump round. It reports false when content pre-copy should run
// instead (rep says why); the container runs on either way.
func (a *Agent) enginePrecopy(ctx context.Context, c engine.Container, req OutRequest, want string, rep *PrecopyReport, emit func(Progress), log *slog.Logger) bool {
	pc, capable := a.eng.(engine.PreCopier)
	use, why := chooseEnginePrecopy(enginePrecopyInput{Capable: capable, Tracking: rep.EnginePreCopy, Want: want})
	rep.Reason += "; " + why
	if !use {
		return false
	}
	start := time.Now()
	var ckpt engine.Stats
	sum := sha256.New()
	hdr := transfer.StreamHeader{Kind: KindPreDump, ID: req.Migration, Meta: map[string]string{"container": c.ID}}
	res, st, err := a.sender.Stream(ctx, req.TargetAddr, hdr, func(w io.Writer) error {
		var err error
		ckpt, err = pc.PreCheckpoint(ctx, c.ID, io.MultiWriter(w, sum))
		return err
	})
	sent := hex.EncodeToString(sum.Sum(nil))
	if err == nil {
		var ack precopyAck
		if err = json.Unmarshal(res, &ack); err != nil {
			err = fmt.Errorf("target answered %q: %w", res, err)
		} else if ack.Size != ckpt.Bytes || ack.SHA256 != sent {
			err = fmt.Errorf("target kept %d bytes sha256 %.16s, sent %d bytes sha256 %.16s", ack.Size, ack.SHA256, ckpt.Bytes, sent)
		}
	}
	if err != nil {
		log.Warn("pre-dump failed; pre-copy by content instead", "err", err)
		rep.Fallback = fmt.Sprintf("pre-dump: %v", err)
		rep.Reason += "; the pre-dump failed: content pre-copy"
		return false
	}
	rr := PrecopyRound{Round: 1, ArchiveBytes: ckpt.Bytes, LiteralBytes: st.Bytes, DeltaBytes: st.Bytes, WireBytes: st.WireBytes,
		Frozen: ckpt.FrozenTime, Checkpoint: ckpt.Duration, Duration: time.Since(start)}
	log.Info("pre-dump sent", "archive", rr.ArchiveBytes, "wire", rr.WireBytes, "frozen", rr.Frozen, "took", rr.Duration)
	rep.Method, rep.PreDump = MethodEngine, sent
	rep.Rounds = append(rep.Rounds, rr)
	rep.WireBytes += rr.WireBytes
	rep.ExtraFreezes = append(rep.ExtraFreezes, rr.Frozen)
	emit(Progress{Kind: progPrecopy, Precopy: rep.clone()})
	// The target must still hold the pre-dump right before the freeze.
	var has bool
	for attempt := 0; ; attempt++ {
		_, has, err = a.probe(ctx, req, rep.PreDump, 1)
		if err == nil || attempt >= 8 || ctx.Err() != nil || !sleepCtx(ctx, backoff(attempt)) {
			break
		}
	}
	if err != nil || !has {
		if err == nil {
			err = fmt.Errorf("the target no longer holds the pre-dump")
		}
		rep.Method, rep.PreDump, rep.Fallback = MethodFallback, "", err.Error()
	}
	return true
}

// afterEnginePrecopy says why the page path should not follow pre-copy
// ("": it may). Once CRIU pre-dumped to the target, the final dump writes
// only the pages written since, against the pre-dump it keeps on this host;
// the page path dumps every page again and the pre-dump would go to waste.
func afterEnginePrecopy(pre *PrecopyReport) string {
	if pre.Method == MethodEngine && pre.PreDump != "" {
		return "CRIU pre-dumped to the target: its final dump (only the pages written since) goes export/import"
	}
	return ""
}

// finalHeader turns the final round's header into an engine pre-copy one
// when the pre-dump reached the target.
func (a *Agent) finalHeader(rep *PrecopyReport, hdr *transfer.StreamHeader) {
	if rep.Method == MethodEngine && rep.PreDump != "" {
		hdr.Kind, hdr.Meta["base"] = KindRestorePrevious, rep.PreDump
	}
}

// finalCheckpoint is the final round's dump: only the pages written since
// the pre-dump when the target holds it, else the whole container.
func (a *Agent) finalCheckpoint(ctx context.Context, rep *PrecopyReport, id string, w io.Writer, opts engine.CheckpointOptions) (engine.Stats, error) {
	if pc, ok := a.eng.(engine.PreCopier); ok && rep.Method == MethodEngine && rep.PreDump != "" {
		return pc.CheckpointWithPrevious(ctx, id, w, opts)
	}
	return a.eng.Checkpoint(ctx, id, w, opts)
}

// registerEnginePrecopy adds the target's handlers.
func (a *Agent) registerEnginePrecopy(streams StreamHandlers) {
	streams.Handle(KindPreDump, a.handlePreDump)
	streams.Handle(KindRestorePrevious, a.handleRestorePrevious)
}

// handlePreDump keeps a pre-dump, only for a migration the records name
// with this host as target and the sender as source (as pre-copy streams).
func (a *Agent) handlePreDump(ctx context.Context, h transfer.StreamHeader, r io.Reader) ([]byte, error) {
	if !validID.MatchString(h.ID) {
		return nil, fmt.Errorf("pre-dump stream with a bad migration ID %q", h.ID)
	}
	if _, err := a.authorised(ctx, "pre-dump stream", h.ID, a.fromSource(ctx, h.Meta["container"], receivePhases...)); err != nil {
		return nil, err
	}
	nb, err := a.bases.receiveRaw(h.ID, r)
	if err != nil {
		return nil, fmt.Errorf("pre-dump of %s on %s: %w", h.ID, a.host, err)
	}
	a.log.Info("pre-dump received", "migration", h.ID, "container", h.Meta["container"], "bytes", nb.size)
	return json.Marshal(precopyAck{Size: nb.size, SHA256: hex.EncodeToString(nb.sum[:])})
}

// handleRestorePrevious restores the final archive with the kept pre-dump,
// authorised as a restore stream (the record names this host as target,
// the sender as source, and the container). The pre-dump goes afterwards,
// whatever the outcome.
func (a *Agent) handleRestorePrevious(ctx context.Context, h transfer.StreamHeader, r io.Reader) ([]byte, error) {
	if _, err := a.authorised(ctx, "restore stream", h.ID, a.fromSource(ctx, h.Meta["container"], receivePhases...)); err != nil {
		return nil, err
	}
	pc, ok := a.eng.(engine.PreCopier)
	if !ok {
		return nil, fmt.Errorf("restore %s on %s: the engine driver has no pre-dump step", h.Meta["name"], a.host)
	}
	id := h.Meta["container"]
	if id == "" {
		return nil, fmt.Errorf("restore stream without a container")
	}
	base, done, err := a.bases.open(h.ID, h.Meta["base"])
	if err != nil {
		return nil, fmt.Errorf("restore %s on %s: %w", h.Meta["name"], a.host, err)
	}
	defer a.bases.drop(h.ID)
	defer done()
	unlock := a.lock(ctx, id)
	defer unlock()
	c, st, err := pc.RestoreWithPrevious(context.WithoutCancel(ctx), base.R, base.Size, r, engine.RestoreOptions{TCPEstablished: true})
	if err != nil {
		return nil, fmt.Errorf("restore %s on %s: %w", h.Meta["name"], a.host, err)
	}
	a.log.Info("restored with pre-dump", "migration", h.ID, "container", c.Name, "bytes", st.Bytes, "duration", st.Duration)
	return json.Marshal(restoreResult{Container: c, Stats: st})
}

// receiveRaw stores r as id's base as it is (a pre-dump archive).
func (s *baseStore) receiveRaw(id string, r io.Reader) (storedBase, error) {
	return s.store(id, func(w io.Writer) (int64, error) { return io.Copy(w, r) })
}
