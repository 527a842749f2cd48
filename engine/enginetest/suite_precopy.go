package enginetest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/edgemigrate/orchestrate/engine"
)

// PreCopySuite checks the engine's own pre-copy (engine.PreCopier) on a
// host whose kernel tracks dirty pages. It fails when the engine lacks the
// capability or Features.PreCopy is false: call it only where both are
// expected (the fake with PreCopy set, a QEMU guest).
func PreCopySuite(t *testing.T, h Harness, prefix string) {
	e := h.Engine()
	ctx := context.Background()
	pc, ok := e.(engine.PreCopier)
	if !ok {
		t.Fatalf("engine %T has no pre-dump step (engine.PreCopier)", e)
	}
	f, err := e.Features(ctx)
	if err != nil || !f.PreCopy {
		t.Fatalf("features %+v (%v): want PreCopy (the kernel tracks dirty pages)", f, err)
	}
	const mib = 16
	probe := func(t *testing.T, w Workload) Probe {
		t.Helper()
		p, err := h.Probe(t, w)
		if err != nil {
			t.Fatalf("probe %s: %v", w.Name, err)
		}
		return p
	}
	count := func(t *testing.T) int {
		t.Helper()
		list, err := e.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(list)
	}

	t.Run("PreDumpThenFinal", func(t *testing.T) {
		w := h.Start(t, prefix+"pre", mib)
		before := probe(t, w)
		var pre, final bytes.Buffer
		pst, err := pc.PreCheckpoint(ctx, w.ID, &pre)
		if err != nil {
			t.Fatalf("pre-checkpoint: %v", err)
		}
		if c, err := e.Inspect(ctx, w.ID); err != nil || !c.Running {
			t.Fatalf("after the pre-dump: %+v %v, want running", c, err)
		}
		fst, err := pc.CheckpointWithPrevious(ctx, w.ID, &final, engine.CheckpointOptions{})
		if err != nil {
			t.Fatalf("checkpoint with previous: %v", err)
		}
		t.Logf("pre-dump %d bytes (%d pages), final %d bytes (%d pages, frozen %s)", pre.Len(), pst.PagesWritten,
			final.Len(), fst.PagesWritten, fst.FrozenTime)
		// The final dump holds only what changed since the pre-dump: less
		// memory than the pre-dump's whole.
		if fst.PagesWritten >= pst.PagesWritten && pst.PagesWritten > 0 {
			t.Fatalf("final dump wrote %d pages, the pre-dump %d: want fewer", fst.PagesWritten, pst.PagesWritten)
		}
		if int64(final.Len()) >= int64(pre.Len())+int64(mib)<<20/2 {
			t.Fatalf("final archive %d bytes against a pre-dump of %d: the memory was sent twice", final.Len(), pre.Len())
		}
		if err := e.Remove(ctx, w.ID); err != nil {
			t.Fatal(err)
		}
		// Without the pre-dump's pages the final archive is incomplete: a
		// restore from a pre-dump archive lacking them fails and leaves nothing.
		n := count(t)
		bogus := bytes.NewReader(final.Bytes()) // not a pre-dump archive
		if _, _, err := pc.RestoreWithPrevious(ctx, bogus, bogus.Size(), bytes.NewReader(final.Bytes()), engine.RestoreOptions{}); !errors.Is(err, engine.ErrBadArchive) {
			t.Fatalf("restore with a bad pre-dump: %v, want ErrBadArchive", err)
		}
		if got := count(t); got != n {
			t.Fatalf("%d containers after a failed restore, want %d", got, n)
		}
		rc, _, err := pc.RestoreWithPrevious(ctx, bytes.NewReader(pre.Bytes()), int64(pre.Len()), bytes.NewReader(final.Bytes()), engine.RestoreOptions{})
		if err != nil {
			t.Fatalf("restore with previous: %v", err)
		}
		defer func() { _ = e.Remove(ctx, rc.ID) }()
		after := probe(t, w)
		if after.Start != before.Start || after.Counter < before.Counter || after.Checksum != before.Checksum {
			t.Fatalf("after restore %+v, before %+v: want the same process and memory, counting on", after, before)
		}
	})

	t.Run("FinalWithoutPreDump", func(t *testing.T) {
		w := h.Start(t, prefix+"nopre", 1)
		defer func() { _ = e.Remove(ctx, w.ID) }()
		if _, err := pc.CheckpointWithPrevious(ctx, w.ID, io.Discard, engine.CheckpointOptions{}); err == nil {
			t.Fatal("checkpoint with previous succeeded without a pre-dump")
		}
		if c, err := e.Inspect(ctx, w.ID); err != nil || !c.Running {
			t.Fatalf("after the refused checkpoint: %+v %v, want running", c, err)
		}
	})
}
