package reboot

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// ErrCorrupt: a stored file does not match the size and sha256 recorded
// for it. Nothing was restored from it.
var ErrCorrupt = errors.New("stored checkpoint does not match its manifest")

// writeJSON replaces path with v as JSON, durably: a temporary file is
// written and synced, renamed over path, and the directory synced, so that
// a crash or a power cut leaves either the old or the new content.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// readJSON reads path into v; ok is false when the file does not exist.
func readJSON(path string, v any) (ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	return true, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}

// hashedFile is a file being written under a partial name while its
// sha256 is computed in the same pass.
type hashedFile struct {
	path, partial string
	f             *os.File
	h             hash.Hash
	n             int64
}

func createHashed(path string) (*hashedFile, error) {
	partial := path + ".partial"
	f, err := os.OpenFile(partial, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	return &hashedFile{path: path, partial: partial, f: f, h: sha256.New()}, nil
}

func (w *hashedFile) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// commit syncs the partial file and renames it to its final name.
func (w *hashedFile) commit() (size int64, sum string, err error) {
	if err := w.f.Sync(); err != nil {
		w.abort()
		return 0, "", err
	}
	if err := w.f.Close(); err != nil {
		os.Remove(w.partial)
		return 0, "", err
	}
	if err := os.Rename(w.partial, w.path); err != nil {
		os.Remove(w.partial)
		return 0, "", err
	}
	if err := syncDir(filepath.Dir(w.path)); err != nil {
		return 0, "", err
	}
	return w.n, hex.EncodeToString(w.h.Sum(nil)), nil
}

func (w *hashedFile) abort() {
	w.f.Close()
	os.Remove(w.partial)
}

// verifyingReader yields a stored file and, at its end, io.EOF only when
// size and sha256 match what was recorded; otherwise an error wrapping
// ErrCorrupt. A consumer such as engine.Restorer then fails and creates
// nothing.
type verifyingReader struct {
	r    io.Reader
	h    hash.Hash
	n    int64
	size int64
	sum  string
	name string
}

func newVerifyingReader(r io.Reader, name string, size int64, sum string) *verifyingReader {
	return &verifyingReader{r: r, h: sha256.New(), size: size, sum: sum, name: name}
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.n > v.size {
		return n, fmt.Errorf("%w: %s is longer than the %d bytes recorded", ErrCorrupt, v.name, v.size)
	}
	if errors.Is(err, io.EOF) {
		if got := hex.EncodeToString(v.h.Sum(nil)); v.n != v.size || got != v.sum {
			return n, fmt.Errorf("%w: %s has %d bytes sha256 %s, the manifest says %d bytes sha256 %s", ErrCorrupt, v.name, v.n, got, v.size, v.sum)
		}
	}
	return n, err
}

// openVerified opens a stored file for reading through a verifyingReader.
func openVerified(path string, size int64, sum string) (io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{newVerifyingReader(f, filepath.Base(path), size, sum), f}, nil
}

// FreeBytes is the space available to an unprivileged writer under dir (or
// its nearest existing parent).
func FreeBytes(dir string) (int64, error) {
	for {
		var st syscall.Statfs_t
		err := syscall.Statfs(dir, &st)
		if err == nil {
			return int64(st.Bavail) * int64(st.Bsize), nil
		}
		parent := filepath.Dir(dir)
		if !errors.Is(err, syscall.ENOENT) || parent == dir {
			return 0, err
		}
		dir = parent
	}
}
