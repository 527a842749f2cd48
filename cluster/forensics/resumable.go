package forensics

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/transfer"
)

// KindSnapshotFile is the stream kind that tells a store host to take a
// snapshot archive already uploaded into its spool; the stream is empty.
const KindSnapshotFile = "snapshot-file"

// Uploader sends a file into a peer's spool, resuming after a cut
// (transfer.Client).
type Uploader interface {
	Upload(ctx context.Context, peer, path, remote string) (transfer.FileStats, error)
}

// spoolTaker moves an uploaded file out of the spool after verifying it
// (transfer.Server).
type spoolTaker interface {
	TakeSpooled(name, dst string, size int64, sum string) error
}

// snapshotFiles sends snapshots to a remote store host as resumable files:
// the checkpoint is staged on this host first (a leave-running snapshot
// has unfrozen by then), so a cut link resumes the upload instead of
// taking the snapshot again.
type snapshotFiles struct {
	stage string // under node.data_dir; "" streams instead
	spool spoolTaker
}

// SetStage makes snapshots for another store host go as resumable files
// staged in dir (under node.data_dir, root-only). Call before Register.
func (a *Agent) SetStage(dir string) { a.files.stage = dir }

func (a *Agent) registerSnapshotFiles(streams StreamHandlers) {
	if sp, ok := streams.(spoolTaker); ok {
		a.files.spool = sp
		streams.Handle(KindSnapshotFile, a.handleSnapshotFile)
	}
}

// sendSnapshot delivers what produce writes to the store host at addr:
// staged and uploaded over SFTP when the store host is another host and
// staging is on, else streamed. It returns the store host's answer.
func (a *Agent) sendSnapshot(ctx context.Context, addr, storeHost string, hdr transfer.StreamHeader, produce func(io.Writer) error) ([]byte, error) {
	up, ok := a.sender.(Uploader)
	if !ok || a.files.stage == "" || storeHost == a.cfg.Host {
		out, _, err := a.sender.Stream(ctx, addr, hdr, produce)
		return out, err
	}
	name := hdr.ID + archiveExt
	staged, err := transfer.StageFile(filepath.Join(a.files.stage, name), produce)
	if err != nil {
		return nil, err
	}
	defer os.Remove(staged.Path)
	fs, err := up.Upload(ctx, addr, staged.Path, name)
	if err != nil {
		return nil, err
	}
	a.log.Info("snapshot sent as a file", "snapshot", hdr.ID, "store", storeHost, "bytes", staged.Size,
		"attempts", fs.Attempts, "resumed_from", fs.ResumedFrom, "duration", fs.Duration)
	note := transfer.StreamHeader{Kind: KindSnapshotFile, ID: hdr.ID, Meta: map[string]string{
		"spool": name, "size": strconv.FormatInt(staged.Size, 10), "sha256": staged.SHA256}}
	out, _, err := a.sender.Stream(ctx, addr, note, func(io.Writer) error { return nil })
	return out, err
}

// handleSnapshotFile moves an uploaded snapshot from the spool into the
// store, verified by size and sha256; on any error nothing is stored.
func (a *Agent) handleSnapshotFile(ctx context.Context, h transfer.StreamHeader, r io.Reader) ([]byte, error) {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, err
	}
	if !validID(h.ID) {
		return nil, fmt.Errorf("snapshot file: bad id %q", h.ID)
	}
	// The same authorisation as a streamed snapshot: only the member
	// holding the pending upload for this store host may hand one in.
	if err := a.authorizeUpload(ctx, h.ID, senderOf(ctx)); err != nil {
		a.log.Warn("refused snapshot file", "snapshot", h.ID, "sender", senderOf(ctx), "err", err)
		return nil, err
	}
	size, err := strconv.ParseInt(h.Meta["size"], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("snapshot file %s: size %q", h.ID, h.Meta["size"])
	}
	final := a.st.path(h.ID)
	if _, err := os.Stat(final); err == nil {
		return nil, fmt.Errorf("snapshot %s: already stored: %w", h.ID, cluster.ErrConflict)
	}
	if err := a.files.spool.TakeSpooled(h.Meta["spool"], final, size, h.Meta["sha256"]); err != nil {
		return nil, fmt.Errorf("receive snapshot %s: %w", h.ID, err)
	}
	return json.Marshal(received{File: filepath.Base(final), Size: size, SHA256: h.Meta["sha256"]})
}
