package engine

import (
	"context"
	"io"
)

// PreCopier is the engine's own pre-copy, offered where the kernel tracks
// dirty pages (Features.PreCopy: soft-dirty bits, CRIU's mem_dirty_track).
// CRIU pre-dumps the container's memory while it runs and resets the
// kernel's dirty bits; the final checkpoint then writes only the pages
// written since, and the target restores from the two archives together.
//
// Found by type assertion on an engine; an engine implements it even where
// the kernel cannot track (its calls then fail with ErrCRIU), so callers
// check Features.PreCopy first.
type PreCopier interface {
	// PreCheckpoint dumps the running container's memory into an archive
	// written to w, leaving it running (a brief freeze while CRIU collects
	// the pages). It replaces any earlier pre-dump of the container. On
	// error the container runs on.
	PreCheckpoint(ctx context.Context, id string, w io.Writer) (Stats, error)
	// CheckpointWithPrevious is Checkpoint, except that the archive holds
	// only the memory written since the last PreCheckpoint: it restores only
	// together with that pre-dump's archive (RestoreWithPrevious). On error,
	// as with Checkpoint.
	CheckpointWithPrevious(ctx context.Context, id string, w io.Writer, opts CheckpointOptions) (Stats, error)
	// RestoreWithPrevious restores a CheckpointWithPrevious archive read
	// from r, with the pre-dump archive prev (size bytes) it was taken
	// after. On failure nothing is left behind, as with Restore.
	RestoreWithPrevious(ctx context.Context, prev io.ReaderAt, size int64, r io.Reader, opts RestoreOptions) (Container, Stats, error)
}
