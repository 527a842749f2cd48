package enginetest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/edgemigrate/orchestrate/engine"
)

func trackingFake() *Fake {
	f := NewFake()
	ft, _ := f.Features(context.Background())
	ft.PreCopy = true
	f.SetFeatures(ft)
	return f
}

func TestFakePreCopySuite(t *testing.T) {
	PreCopySuite(t, FakeHarness{F: trackingFake()}, "fake-")
}

// Pages written after the pre-dump, and only those, travel in the final
// archive; the restore lays them over the pre-dump's.
func TestFakePreCopyDirtyPages(t *testing.T) {
	ctx := context.Background()
	f := trackingFake()
	c := f.Run("dirty", "localhost/fake:latest", 64*fakePage, nil)
	var pre, final bytes.Buffer
	if _, err := f.PreCheckpoint(ctx, c.ID, &pre); err != nil {
		t.Fatal(err)
	}
	for _, page := range []int64{3, 17, 63} {
		if err := f.Write(c.ID, page*fakePage+100, []byte("written after the pre-dump")); err != nil {
			t.Fatal(err)
		}
	}
	want, _ := f.Memory(c.ID)
	st, err := f.CheckpointWithPrevious(ctx, c.ID, &final, engine.CheckpointOptions{Keep: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.PagesWritten != 3 {
		t.Fatalf("final dump wrote %d pages, want the 3 dirty ones", st.PagesWritten)
	}
	if err := f.Remove(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	rc, _, err := f.RestoreWithPrevious(ctx, bytes.NewReader(pre.Bytes()), int64(pre.Len()), &final, engine.RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := f.Memory(rc.ID); !bytes.Equal(got, want) {
		t.Fatal("restored memory differs from the memory at the final dump")
	}
}

func TestFakePreCopyNeedsTracking(t *testing.T) {
	f := NewFake()
	c := f.Run("untracked", "localhost/fake:latest", 4*fakePage, nil)
	if _, err := f.PreCheckpoint(context.Background(), c.ID, io.Discard); !errors.Is(err, engine.ErrCRIU) {
		t.Fatalf("pre-checkpoint without dirty tracking: %v, want ErrCRIU", err)
	}
}
