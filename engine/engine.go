// Package engine owns orchestrate's view of a container engine: freezing a
// running container into a checkpoint stream, bringing a stream back to life,
// and the image and feature queries that placement needs.
//
// Data flows as streams, never paths: Checkpoint writes the engine's archive to
// an io.Writer as the engine produces it, and Restore reads one from an
// io.Reader. Callers (the migration code, the transfer layer) decide where the
// bytes go. The archive is the engine's own format (for Podman, the tar that
// `podman container checkpoint --export` writes); engine and transfer never
// look inside it except to read statistics and identity.
//
// Implementations: engine/podman (the real one), engine/enginetest (an
// in-memory fake plus the behaviour suite both must pass). The package imports
// nothing else from orchestrate.
package engine

import (
	"context"
	"errors"
	"io"
	"time"
)

// Sentinel errors that callers act on. Implementations wrap them with the
// container involved, so test with errors.Is.
var (
	// ErrNotFound: no container (or image) by that name or ID.
	ErrNotFound = errors.New("not found")
	// ErrNotRunning: the operation needs a running container.
	ErrNotRunning = errors.New("container not running")
	// ErrNoCheckpoint: Resume found no kept checkpoint to restore from.
	ErrNoCheckpoint = errors.New("no kept checkpoint")
	// ErrBadArchive: the checkpoint archive is truncated, corrupted or not a
	// checkpoint at all. Nothing was restored.
	ErrBadArchive = errors.New("bad checkpoint archive")
	// ErrCRIU: CRIU itself failed. The wrapping error carries CRIU's log line.
	ErrCRIU = errors.New("criu failed")
	// ErrNoPageServer: the page path's preconditions do not hold for this
	// container or host (see PageMover). Nothing was done; the caller
	// uses Checkpoint instead.
	ErrNoPageServer = errors.New("page server path unavailable")
)

// Container is what the engine reports about one container.
type Container struct {
	ID      string            `json:"id"`
	Name    string            `json:"name"`
	Image   string            `json:"image"`    // the name it was created from
	ImageID string            `json:"image_id"` // full image ID: the target must hold the same
	State   string            `json:"state"`    // engine's word: running, exited, created, paused...
	Running bool              `json:"running"`
	Labels  map[string]string `json:"labels,omitempty"`
	Created time.Time         `json:"created"`
	// MemoryBytes is the container's current memory use, when the engine
	// knows it (placement uses it to size targets). Zero when unknown.
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
	// Checkpointed is true when the engine keeps a checkpoint of this
	// (stopped) container that Resume can restore from.
	Checkpointed bool `json:"checkpointed,omitempty"`
}

// CheckpointOptions control Checkpoint.
type CheckpointOptions struct {
	// LeaveRunning unfreezes the container after the dump instead of
	// stopping it: a snapshot with only a brief freeze.
	LeaveRunning bool
	// TCPEstablished dumps established TCP connections (CRIU tcp repair).
	// Without it, a container holding one cannot be checkpointed.
	TCPEstablished bool
	// Keep keeps the checkpoint on the source after the export, so that
	// Resume can restore the container in place (migration rollback).
	Keep bool
	// Starting, when set, is called once right before the engine asks the
	// runtime to checkpoint, after any wait for a host-wide lock: from
	// here the container may freeze. Engines that cannot tell do not
	// call it (PageMover's CheckpointPages does).
	Starting func()
}

// Stats describes one checkpoint or restore.
type Stats struct {
	// Duration is the wall time of the whole engine call, as the caller saw it.
	Duration time.Duration `json:"duration"`
	// Bytes is the size of the archive written or read.
	Bytes int64 `json:"bytes"`
	// From CRIU's own statistics (dump side), when the archive carries them.
	FrozenTime   time.Duration `json:"frozen_time,omitempty"`
	MemdumpTime  time.Duration `json:"memdump_time,omitempty"`
	MemwriteTime time.Duration `json:"memwrite_time,omitempty"`
	PagesWritten uint64        `json:"pages_written,omitempty"`
	// RestoreTime is CRIU's restore time, when the engine reports it.
	RestoreTime time.Duration `json:"restore_time,omitempty"`
}

// RestoreOptions control Restore.
type RestoreOptions struct {
	// Name gives the restored container a new name (and a new ID). Empty
	// keeps the name and ID recorded in the archive. Podman cannot combine a
	// new name with TCPEstablished.
	Name           string
	TCPEstablished bool
	// Keep keeps the imported checkpoint files after the restore.
	Keep            bool
	IgnoreStaticIP  bool
	IgnoreStaticMAC bool
	// Local: the archive never left this host (a local reboot's own save,
	// checked by its manifest's sha256). The restore policy, which judges
	// what other hosts send (policy.go), does not apply to it.
	Local bool
}

// Features are what the engine and its CRIU can do on this host.
type Features struct {
	Engine        string `json:"engine"`         // "podman", "docker", "fake"
	EngineVersion string `json:"engine_version"` // the service's own version
	CRIUVersion   string `json:"criu_version"`   // e.g. "4.2.1"; empty when CRIU is absent
	// PreCopy: the kernel tracks dirty memory (soft-dirty), so the engine's
	// own pre-checkpoint works.
	PreCopy bool `json:"pre_copy"`
	// LazyPages: CRIU can restore with userfaultfd lazy pages.
	LazyPages bool   `json:"lazy_pages"`
	Kernel    string `json:"kernel,omitempty"`
	Arch      string `json:"arch,omitempty"`
}

// Engine is the full set of operations orchestrate needs from a container
// engine on one host. Consumers should declare the smaller interface they use
// (Checkpointer, Restorer, ...) rather than take an Engine.
type Engine interface {
	Checkpointer
	Restorer
	Resumer
	Lister
	Remover
	Images
	FeatureReporter
}

// Checkpointer freezes a running container and writes its archive to w as it
// is produced. On error, the container is left as the engine left it: with
// LeaveRunning or when the dump itself failed, it is still running.
type Checkpointer interface {
	Checkpoint(ctx context.Context, id string, w io.Writer, opts CheckpointOptions) (Stats, error)
}

// Restorer creates and starts a container from an archive read from r. If
// reading r fails (including a verification error the reader returns at
// EOF), or the restore fails, no new container is left behind.
type Restorer interface {
	Restore(ctx context.Context, r io.Reader, opts RestoreOptions) (Container, Stats, error)
}

// Resumer restores a checkpointed container in place from the checkpoint the
// engine kept (CheckpointOptions.Keep). This is how a migration source rolls
// back.
type Resumer interface {
	Resume(ctx context.Context, id string) error
}

// Lister reports containers.
type Lister interface {
	List(ctx context.Context) ([]Container, error)
	Inspect(ctx context.Context, id string) (Container, error)
}

// Remover removes a container, stopping it first if needed (force).
type Remover interface {
	Remove(ctx context.Context, id string) error
}

// Images moves images between hosts: a target that lacks a container's image
// is sent it before the container is frozen.
type Images interface {
	// HasImage reports whether the image with this ID (or name) is present.
	HasImage(ctx context.Context, ref string) (bool, error)
	// ExportImage writes the image as an archive LoadImage accepts.
	ExportImage(ctx context.Context, ref string, w io.Writer) error
	// LoadImage loads an archive written by ExportImage and returns the
	// loaded image's ID or name.
	LoadImage(ctx context.Context, r io.Reader) (string, error)
}

// FeatureReporter reports what the engine and CRIU can do here.
type FeatureReporter interface {
	Features(ctx context.Context) (Features, error)
}

// PageSink carries one CRIU page-server session: conn is CRIU's own
// connection, from the dump, which the sink forwards to a page server and
// closes when done. Its error is the sink's own (e.g. a recording that could
// not be written); a session the far end cut shows as CRIU's dump failing.
type PageSink func(ctx context.Context, conn io.ReadWriteCloser) error

// PageStats describe one page session as the receiving side saw it.
type PageStats struct {
	Bytes int64 `json:"bytes"` // protocol bytes, pages included
	Pages int64 `json:"pages"` // memory pages carried
}

// PageMover is an optional capability: migrations whose memory pages
// travel while CRIU dumps them, and whose restore finds them in place, so
// that the engine's archive carries only metadata.
//
// Source: CheckPages before anything is done, then CheckpointPages.
// Target, before the source freezes: PreparePages; during the dump:
// ReceivePages; then Restore of the small archive, which keeps the
// container's ID and finds the pages; after a failure: DiscardPages.
// Source rollback: ReplayPages from a recording of the session, then
// Resume.
type PageMover interface {
	// CheckPages says, without doing anything, whether CheckpointPages can
	// run for the container here (an error wrapping ErrNoPageServer says
	// why not).
	CheckPages(ctx context.Context, id string) error
	CheckpointPages(ctx context.Context, id string, w io.Writer, sink PageSink, opts CheckpointOptions) (Stats, error)
	PreparePages(ctx context.Context, id string) error
	ReceivePages(ctx context.Context, id string, conn io.ReadWriteCloser) (PageStats, error)
	DiscardPages(ctx context.Context, id string) error
	ReplayPages(ctx context.Context, id string, recording io.ReadSeeker) error
}
