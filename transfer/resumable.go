package transfer

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
)

// Resumable file transfers are for bytes worth resuming after a cut link:
// image archives, snapshots on their way into a store, stored checkpoints
// on their way to the host that restores a copy of them. The sender stages
// the bytes in a local file (StageFile: written as NAME.partial while
// hashed, synced, renamed), then Client.Upload sends the file into the
// peer's spool over SFTP; after a cut it reconnects and resumes where the
// remote partial file ends, and it renames the upload only once the server
// has verified size and sha256. The receiver reads the file with
// OpenSpooled, which fails at EOF (ErrVerify) unless size and sha256 match
// what the sender announced, or moves it out of the spool with
// TakeSpooled, which verifies first. Live migrations do not take this
// path: staging would add the archive's write and read to the downtime.

// Staged is a file ready to upload.
type Staged struct {
	Path   string `json:"-"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// StageFile writes what produce writes into path, via path.partial, hashing
// it in the same pass, and syncs it. On error nothing is left.
func StageFile(path string, produce func(w io.Writer) error) (Staged, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return Staged{}, err
	}
	partial := path + partialSuffix
	f, err := os.OpenFile(partial, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return Staged{}, err
	}
	h := sha256.New()
	cw := &countingWriter{w: io.MultiWriter(f, h)}
	err = produce(cw)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(partial, path)
	}
	if err != nil {
		os.Remove(partial)
		return Staged{}, err
	}
	return Staged{Path: path, Size: cw.n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// errNoSpool: the server was configured without a spool directory.
var errNoSpool = errors.New("transfer server has no spool")

// OpenSpooled opens a file uploaded into the spool for reading. The reader
// ends with io.EOF only when size and sha256 match; otherwise with an error
// wrapping ErrVerify, so that a consumer such as engine.Restorer fails and
// creates nothing.
func (s *Server) OpenSpooled(name string, size int64, sum string) (io.ReadCloser, error) {
	if s.root == nil {
		return nil, errNoSpool
	}
	if err := CheckName(name); err != nil {
		return nil, err
	}
	f, err := s.root.Open(name)
	if err != nil {
		return nil, fmt.Errorf("spooled %s: %w", name, err)
	}
	return &spooledReader{f: f, h: sha256.New(), size: size, sum: sum, name: name}, nil
}

// RemoveSpooled removes a spooled file (and any partial upload of it); a
// missing file is not an error.
func (s *Server) RemoveSpooled(name string) error {
	if s.root == nil {
		return errNoSpool
	}
	if err := CheckName(name); err != nil {
		return err
	}
	_ = s.root.Remove(name + partialSuffix)
	if err := s.root.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// TakeSpooled moves a spooled file to dst (outside the spool, on the same
// file system) after checking its size and sha256; on a mismatch the file
// is removed and the error wraps ErrVerify.
func (s *Server) TakeSpooled(name, dst string, size int64, sum string) error {
	r, err := s.OpenSpooled(name, size, sum)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, r)
	r.Close()
	if err != nil {
		_ = s.RemoveSpooled(name)
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	// CheckName and os.Root above refused anything outside the spool.
	if err := os.Rename(filepath.Join(s.cfg.SpoolDir, name), dst); err != nil {
		return fmt.Errorf("take spooled %s: %w", name, err)
	}
	return nil
}

type spooledReader struct {
	f    *os.File
	h    hash.Hash
	n    int64
	size int64
	sum  string
	name string
}

func (r *spooledReader) Read(p []byte) (int, error) {
	n, err := r.f.Read(p)
	r.h.Write(p[:n])
	r.n += int64(n)
	if r.n > r.size {
		return n, fmt.Errorf("%w: spooled %s is longer than the %d bytes announced", ErrVerify, r.name, r.size)
	}
	if errors.Is(err, io.EOF) {
		if got := hexSum(r.h.Sum(nil)); r.n != r.size || got != r.sum {
			return n, fmt.Errorf("%w: spooled %s has %d bytes sha256 %s, the sender announced %d bytes sha256 %s", ErrVerify, r.name, r.n, got, r.size, r.sum)
		}
	}
	return n, err
}

func (r *spooledReader) Close() error { return r.f.Close() }
