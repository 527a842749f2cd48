package pageserver

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// writeBehindChunk is how much of a recording may stay dirty before its
// write-out is started.
const writeBehindChunk = 1 << 20

// WriteBehind is a recording file (PumpConfig.Record) whose contents the
// kernel starts writing to disk as they are written, a MiB at a time
// (sync_file_range with SYNC_FILE_RANGE_WRITE: start the write-out, do not
// wait for it). The caller owns f and closes it.
//
// Why: the recording is written while CRIU dumps, as a rule on the disk
// that also holds the container's storage, and right after the dump Podman
// unmounts the container's overlay, which syncs the whole file system
// under it. A recording still dirty then is written to disk inside the
// downtime (measured here: 0.11 s per 256 MiB; seconds on an SD card).
// Written behind, it reaches the disk while the pages cross the link.
//
// A file that refuses sync_file_range (a pipe, some network or FUSE file
// systems) simply gets plain writes from then on.
type WriteBehind struct {
	f      *os.File
	fd     int
	off    int64 // bytes written
	synced int64 // write-out started up to here
	plain  bool  // sync_file_range failed once: plain writes only
}

// NewWriteBehind returns a WriteBehind appending to f from its current
// offset.
func NewWriteBehind(f *os.File) *WriteBehind {
	off, err := f.Seek(0, io.SeekCurrent)
	w := &WriteBehind{f: f, fd: int(f.Fd()), off: off, synced: off}
	if err != nil {
		w.plain = true
	}
	return w
}

// Write writes b to the file and starts the write-out of every whole
// chunk now written.
func (w *WriteBehind) Write(b []byte) (int, error) {
	n, err := w.f.Write(b)
	w.off += int64(n)
	if !w.plain && w.off-w.synced >= writeBehindChunk {
		if unix.SyncFileRange(w.fd, w.synced, w.off-w.synced, unix.SYNC_FILE_RANGE_WRITE) != nil {
			w.plain = true
		}
		w.synced = w.off
	}
	return n, err
}
