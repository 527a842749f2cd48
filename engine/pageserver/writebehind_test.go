package pageserver

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dirtyPages asks the kernel (cachestat, Linux 6.5+) how many of f's
// cached pages are dirty, that is not yet handed to the disk.
func dirtyPages(t *testing.T, f *os.File) uint64 {
	t.Helper()
	var rng struct{ off, len uint64 } // len 0: to the end
	var st struct{ cache, dirty, writeback, evicted, recentlyEvicted uint64 }
	_, _, errno := unix.Syscall6(unix.SYS_CACHESTAT, f.Fd(), uintptr(unsafe.Pointer(&rng)), uintptr(unsafe.Pointer(&st)), 0, 0, 0)
	if errno == unix.ENOSYS {
		t.Skip("no cachestat on this kernel")
	}
	if errno != 0 {
		t.Fatalf("cachestat: %v", errno)
	}
	return st.dirty
}

func writeChunks(t *testing.T, w interface{ Write([]byte) (int, error) }, data []byte, chunk int) {
	t.Helper()
	for off := 0; off < len(data); off += chunk {
		if n, err := w.Write(data[off:min(off+chunk, len(data))]); err != nil || n != min(chunk, len(data)-off) {
			t.Fatalf("write at %d: %d, %v", off, n, err)
		}
	}
}

// TestWriteBehindStartsWriteOut: a recording written through WriteBehind
// is handed to the disk as it is written, so that the sync of an overlay
// unmount right after the dump finds at most the last MiB dirty; the same
// bytes written plainly stay dirty.
func TestWriteBehindStartsWriteOut(t *testing.T) {
	dir := t.TempDir()
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type == unix.TMPFS_MAGIC {
		t.Skip("the test directory is on tmpfs: nothing is written to a disk")
	}
	data := bytes.Repeat([]byte("orchestrate pages "), (32<<20)/18)
	open := func(name string) *os.File {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}

	plain := open("plain")
	writeChunks(t, plain, data, 256<<10)
	if d := dirtyPages(t, plain); d*uint64(pageSize) < uint64(len(data))/2 {
		t.Skipf("the kernel wrote the plain file back by itself (%d dirty pages): cannot tell the difference here", d)
	}

	f := open("behind")
	w := NewWriteBehind(f)
	writeChunks(t, w, data, 256<<10)
	// What may stay dirty: the part after the last whole MiB, and pages
	// redirtied by the next chunk while their write-out was queued.
	limit := uint64(writeBehindChunk+256<<10) / uint64(pageSize)
	if d := dirtyPages(t, f); d > limit {
		t.Fatalf("%d of %d pages still dirty after write-behind (at most %d)", d, (len(data)+pageSize-1)/pageSize, limit)
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the file differs from what was written")
	}
}

// TestWriteBehindAppendsAfterExistingContent: the write-out ranges start at
// the file's offset when it was handed over.
func TestWriteBehindAppendsAfterExistingContent(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "rec"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := []byte("already here")
	if _, err := f.Write(head); err != nil {
		t.Fatal(err)
	}
	w := NewWriteBehind(f)
	if w.off != int64(len(head)) || w.synced != int64(len(head)) {
		t.Fatalf("offsets %d/%d, want %d", w.off, w.synced, len(head))
	}
	body := bytes.Repeat([]byte{7}, 3*writeBehindChunk/2)
	writeChunks(t, w, body, 100<<10)
	if w.plain || w.synced <= int64(len(head)) || w.synced > w.off {
		t.Fatalf("plain %v, synced %d of %d", w.plain, w.synced, w.off)
	}
	got, _ := os.ReadFile(f.Name())
	if !bytes.Equal(got, append(head, body...)) {
		t.Fatal("the file differs from what was written")
	}
}

// TestWriteBehindFallsBackToPlainWrites: a file the kernel cannot write
// behind (a character device: sync_file_range says ESPIPE; a pipe, which
// cannot even seek) still takes every byte.
func TestWriteBehindFallsBackToPlainWrites(t *testing.T) {
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	w := NewWriteBehind(null)
	writeChunks(t, w, make([]byte, 3*writeBehindChunk), 256<<10)
	if !w.plain {
		t.Fatal("sync_file_range on /dev/null did not fail: the fallback was not exercised")
	}

	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data := bytes.Repeat([]byte("x"), 2*writeBehindChunk+5)
	got := make(chan []byte)
	go func() {
		var b bytes.Buffer
		_, _ = b.ReadFrom(r)
		got <- b.Bytes()
	}()
	w = NewWriteBehind(pw)
	if !w.plain {
		t.Fatal("a pipe was taken for a file it can write behind")
	}
	writeChunks(t, w, data, 64<<10)
	pw.Close()
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatalf("pipe got %d bytes, want %d", len(b), len(data))
	}
	if _, err := w.Write([]byte("late")); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("write after close: %v, want the file's own error", err)
	}
}
