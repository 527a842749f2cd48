// Package pause holds named points in the agent where a test build can stop
// a migration in a chosen phase, so that a fault test hits that phase every
// time (the fault matrix in internal/e2e). In production builds At does
// nothing.
//
// In test builds (the testhooks build tag) a point is armed by creating the
// file DIR/POINT, where DIR is $ORCHESTRATE_TEST_PAUSE_DIR. A goroutine
// reaching an armed point creates DIR/POINT.reached and waits until DIR/POINT
// is removed (or its ctx ends).
package pause

import (
	"context"
	"io"
)

// Points the agent has.
const (
	// Checkpointing: the source, right before the engine's checkpoint call;
	// the record is Checkpointing and the container still runs.
	Checkpointing = "checkpointing"
	// Transferring: the source, after the first archive bytes went out;
	// the container is frozen.
	Transferring = "transferring"
	// Restoring: the target, with the whole archive received and verified,
	// before the engine is told the archive ended.
	Restoring = "restoring"
	// Confirming: the source's remove step, before it removes its copy;
	// the target runs the container.
	Confirming = "confirming"
	// RebootSave + "." + NAME: a local reboot's save, with the first MiB of
	// container NAME's checkpoint written to its partial file.
	RebootSave = "reboot-save"
	// RebootRestore + "." + NAME: the local restore after a reboot, with
	// the first MiB of container NAME's checkpoint handed to the engine.
	RebootRestore = "reboot-restore"
)

// At waits at point while a test holds it (test builds only).
func At(ctx context.Context, point string) { at(ctx, point) }

// Writer returns w, which in test builds waits at point once the first MiB
// was written through it (production builds return w itself).
func Writer(ctx context.Context, point string, w io.Writer) io.Writer {
	return wrapWriter(ctx, point, w)
}

// Reader returns r, which in test builds waits at point once the first MiB
// was read through it (production builds return r itself).
func Reader(ctx context.Context, point string, r io.Reader) io.Reader {
	return wrapReader(ctx, point, r)
}
