package transfer

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/pkg/sftp"
)

// resumeBackoff: an upload resumes this far before the remote partial's
// end. SFTP writes are pipelined (up to 64 requests of 32 KiB in flight), so
// after a cut the file can have holes in its last 2 MiB; everything before
// that was acknowledged in order. The final sha256 check covers the rest.
const resumeBackoff = 4 << 20

// FileStats describes one Upload or Download.
type FileStats struct {
	Bytes       int64 // file size
	ResumedFrom int64 // offset the last attempt started at (0: from scratch)
	Attempts    int   // connections used
	Duration    time.Duration
	SHA256      string
	// Verified says how the remote copy was checked: "server-sha256" (our
	// server hashed it), "read-back" (we read it back from a stock sshd),
	// or "size" (Download from a stock sshd: size only; SSH's MAC covers
	// the bytes in transit).
	Verified string
}

// Upload sends the local file at path to remote (a name relative to the
// peer's SFTP root; see CheckName). See UploadFrom.
func (c *Client) Upload(ctx context.Context, peer, path, remote string) (FileStats, error) {
	f, err := os.Open(path)
	if err != nil {
		return FileStats{}, fmt.Errorf("upload %s to %s: %w", remote, peer, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return FileStats{}, fmt.Errorf("upload %s to %s: %w", remote, peer, err)
	}
	return c.UploadFrom(ctx, peer, f, fi.Size(), remote)
}

// UploadFrom writes size bytes of src to remote on peer. The data goes to
// remote+".partial" while its sha256 is computed in the same pass; after a
// dropped connection it reconnects (up to Retries times) and resumes near
// where the partial file ends. The partial is verified (by the server's
// hash, or by reading it back from a stock sshd) and renamed to remote only
// once it matches. On cancel, a verification failure or a remote error
// (e.g. ErrNoSpace) the partial is removed; after exhausted retries it is
// kept for a later call to resume (the server sweeps stale partials).
func (c *Client) UploadFrom(ctx context.Context, peer string, src io.ReaderAt, size int64, remote string) (FileStats, error) {
	st, err := c.upload(ctx, peer, src, size, remote)
	if err != nil {
		return st, fmt.Errorf("upload %s to %s: %w", remote, peer, err)
	}
	return st, nil
}

func (c *Client) upload(ctx context.Context, peer string, src io.ReaderAt, size int64, remote string) (FileStats, error) {
	start := time.Now()
	st := FileStats{Bytes: size}
	if err := CheckName(remote); err != nil {
		return st, err
	}
	partial := remote + partialSuffix
	hs := &hashState{h: sha256.New()}
	prog := newProgress(c.cfg.Progress, c.cfg.progressEvery, "upload", remote, peer, size)
	for {
		st.Attempts++
		pc, err := c.uploadAttempt(ctx, peer, src, size, partial, hs, prog, &st)
		if err == nil {
			break
		}
		if ctx.Err() != nil || !retryable(err) || st.Attempts > c.cfg.Retries {
			if ctx.Err() != nil || !retryable(err) {
				c.removeRemote(peer, partial)
			}
			if ctx.Err() != nil {
				return st, ctx.Err()
			}
			return st, classify(err)
		}
		c.log.Info("upload interrupted, resuming on a new connection", "peer", peer, "name", remote, "err", err)
		if pc != nil {
			c.drop(peer, pc)
		}
	}
	sum := hs.h.Sum(nil)
	st.SHA256 = hexSum(sum)

	pc, _, err := c.conn(ctx, peer)
	if err != nil {
		return st, err
	}
	sc, err := pc.sftpClient()
	if err != nil {
		return st, err
	}
	verified, err := c.verifyRemote(ctx, pc, sc, partial, size, st.SHA256)
	if err != nil {
		c.removeRemote(peer, partial)
		return st, err
	}
	st.Verified = verified
	if err := sc.PosixRename(partial, remote); err != nil {
		// Without posix-rename, plain rename fails if remote exists.
		_ = sc.Remove(remote)
		if err2 := sc.Rename(partial, remote); err2 != nil {
			return st, classify(fmt.Errorf("rename: %w", err))
		}
	}
	prog.report(true)
	st.Duration = time.Since(start)
	return st, nil
}

// hashState is the upload's running sha256: it has seen [0, off).
type hashState struct {
	h   hash.Hash
	off int64
}

// advance feeds p, which starts at offset at, skipping what was hashed.
func (s *hashState) advance(p []byte, at int64) {
	if end := at + int64(len(p)); end > s.off && at <= s.off {
		s.h.Write(p[s.off-at:])
		s.off = end
	}
}

func (c *Client) uploadAttempt(ctx context.Context, peer string, src io.ReaderAt, size int64, partial string, hs *hashState, prog *progressTracker, st *FileStats) (*peerConn, error) {
	pc, _, err := c.conn(ctx, peer)
	if err != nil {
		return nil, err
	}
	sc, err := pc.sftpClient()
	if err != nil {
		return pc, err
	}
	var off int64
	flags := os.O_WRONLY | os.O_CREATE
	if fi, err := sc.Stat(partial); err == nil && fi.Size() <= size {
		off = max(0, fi.Size()-resumeBackoff)
	} else {
		flags |= os.O_TRUNC
	}
	// Catch the hash up to off from the local copy.
	if off > hs.off {
		if _, err := io.Copy(hashWriter{hs}, io.NewSectionReader(src, hs.off, off-hs.off)); err != nil {
			return pc, fmt.Errorf("read local: %w", err)
		}
	}
	st.ResumedFrom = off
	prog.resumeAt(off)
	f, err := sc.OpenFile(partial, flags)
	if err != nil {
		return pc, err
	}
	stop := context.AfterFunc(ctx, func() { f.Close() })
	defer stop()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		f.Close()
		return pc, err
	}
	r := &uploadReader{ctx: ctx, c: c, r: io.NewSectionReader(src, off, size-off), off: off, hs: hs, prog: prog}
	_, err = f.ReadFromWithConcurrency(r, 0)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil && r.err != nil {
		err = r.err // a local read error or cancel, not the remote's fault
	}
	return pc, err
}

type hashWriter struct{ s *hashState }

func (w hashWriter) Write(p []byte) (int, error) {
	w.s.advance(p, w.s.off)
	return len(p), nil
}

// uploadReader feeds the SFTP file: it checks ctx, waits for the bandwidth
// limit, hashes and reports progress.
type uploadReader struct {
	ctx  context.Context
	c    *Client
	r    io.Reader
	off  int64
	hs   *hashState
	prog *progressTracker
	err  error
}

func (u *uploadReader) Read(p []byte) (int, error) {
	if err := u.ctx.Err(); err != nil {
		u.err = err
		return 0, err
	}
	if len(p) > 256<<10 {
		p = p[:256<<10]
	}
	if err := u.c.limit.wait(u.ctx, len(p)); err != nil {
		u.err = err
		return 0, err
	}
	n, err := u.r.Read(p)
	u.hs.advance(p[:n], u.off)
	u.off += int64(n)
	u.prog.add(n)
	if err != nil && !errors.Is(err, io.EOF) {
		u.err = fmt.Errorf("read local: %w", err)
	}
	return n, err
}

// verifyRemote checks the remote file's size and sha256.
func (c *Client) verifyRemote(ctx context.Context, pc *peerConn, sc *sftp.Client, name string, size int64, sum string) (string, error) {
	rsize, rsum, ok, err := pc.hashRemote(name)
	if err != nil {
		return "", err
	}
	how := "server-sha256"
	if !ok {
		how = "read-back"
		f, err := sc.Open(name)
		if err != nil {
			return "", err
		}
		defer f.Close()
		stop := context.AfterFunc(ctx, func() { f.Close() })
		defer stop()
		h := sha256.New()
		rsize, err = f.WriteTo(h)
		if err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			return "", fmt.Errorf("read back: %w", err)
		}
		rsum = hexSum(h.Sum(nil))
	}
	if rsize != size || rsum != sum {
		return "", fmt.Errorf("%w: remote has %d bytes sha256 %s, sent %d bytes sha256 %s", ErrVerify, rsize, rsum, size, sum)
	}
	return how, nil
}

// Download copies remote on peer to the local path. Data goes to
// path+".partial", resuming from its end after a dropped connection or an
// earlier failed call, and is renamed to path once checked: against the
// server's sha256 when it offers one, else by size. On cancel or a remote
// error the local partial is removed.
func (c *Client) Download(ctx context.Context, peer, remote, path string) (FileStats, error) {
	st, err := c.download(ctx, peer, remote, path)
	if err != nil {
		return st, fmt.Errorf("download %s from %s: %w", remote, peer, err)
	}
	return st, nil
}

func (c *Client) download(ctx context.Context, peer, remote, path string) (FileStats, error) {
	start := time.Now()
	var st FileStats
	if err := CheckName(remote); err != nil {
		return st, err
	}
	partial := path + partialSuffix
	out, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return st, err
	}
	fail := func(err error) (FileStats, error) {
		out.Close()
		os.Remove(partial)
		return st, err
	}
	prog := newProgress(c.cfg.Progress, c.cfg.progressEvery, "download", remote, peer, 0)
	var pc *peerConn
	for {
		st.Attempts++
		pc, err = c.downloadAttempt(ctx, peer, remote, out, prog, &st)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return fail(ctx.Err())
		}
		if !retryable(err) {
			return fail(classify(err))
		}
		if st.Attempts > c.cfg.Retries {
			out.Close() // keep the partial: a later call resumes it
			return st, classify(err)
		}
		if pc != nil {
			c.drop(peer, pc)
		}
	}
	// Hash what we have, whole: it may be the union of several attempts.
	if _, err := out.Seek(0, io.SeekStart); err != nil {
		return fail(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, out)
	if err != nil {
		return fail(err)
	}
	st.SHA256 = hexSum(h.Sum(nil))
	st.Verified = "size"
	if n != st.Bytes {
		return fail(fmt.Errorf("%w: have %d bytes, remote has %d", ErrVerify, n, st.Bytes))
	}
	if rsize, rsum, ok, err := pc.hashRemote(remote); err != nil {
		return fail(err)
	} else if ok {
		if rsize != n || rsum != st.SHA256 {
			return fail(fmt.Errorf("%w: have %d bytes sha256 %s, remote has %d bytes sha256 %s", ErrVerify, n, st.SHA256, rsize, rsum))
		}
		st.Verified = "server-sha256"
	}
	if err := out.Sync(); err != nil {
		return fail(classify(err))
	}
	if err := out.Close(); err != nil {
		os.Remove(partial)
		return st, classify(err)
	}
	if err := os.Rename(partial, path); err != nil {
		os.Remove(partial)
		return st, err
	}
	prog.report(true)
	st.Duration = time.Since(start)
	return st, nil
}

func (c *Client) downloadAttempt(ctx context.Context, peer, remote string, out *os.File, prog *progressTracker, st *FileStats) (*peerConn, error) {
	pc, _, err := c.conn(ctx, peer)
	if err != nil {
		return nil, err
	}
	sc, err := pc.sftpClient()
	if err != nil {
		return pc, err
	}
	f, err := sc.Open(remote)
	if err != nil {
		return pc, err
	}
	defer f.Close()
	stop := context.AfterFunc(ctx, func() { f.Close() })
	defer stop()
	fi, err := f.Stat()
	if err != nil {
		return pc, err
	}
	st.Bytes = fi.Size()
	prog.p.Total = fi.Size()
	lfi, err := out.Stat()
	if err != nil {
		return pc, err
	}
	off := lfi.Size()
	if off > fi.Size() {
		off = 0
		if err := out.Truncate(0); err != nil {
			return pc, err
		}
	}
	st.ResumedFrom = off
	prog.resumeAt(off)
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return pc, err
	}
	if _, err := out.Seek(off, io.SeekStart); err != nil {
		return pc, err
	}
	w := &downloadWriter{ctx: ctx, c: c, w: out, prog: prog}
	_, err = f.WriteTo(w)
	if err != nil && w.err != nil {
		err = w.err
	}
	return pc, err
}

type downloadWriter struct {
	ctx  context.Context
	c    *Client
	w    io.Writer
	prog *progressTracker
	err  error
}

func (d *downloadWriter) Write(p []byte) (int, error) {
	if err := d.ctx.Err(); err != nil {
		d.err = err
		return 0, err
	}
	if err := d.c.limit.wait(d.ctx, len(p)); err != nil {
		d.err = err
		return 0, err
	}
	n, err := d.w.Write(p)
	d.prog.add(n)
	if err != nil {
		d.err = classify(fmt.Errorf("write local: %w", err))
	}
	return n, err
}

// sftpClient returns the connection's SFTP session, starting it once.
func (pc *peerConn) sftpClient() (*sftp.Client, error) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.sftp != nil {
		return pc.sftp, nil
	}
	if !pc.alive() {
		return nil, ErrPeerClosed
	}
	sc, err := sftp.NewClient(pc.ssh, sftp.UseConcurrentWrites(true), sftp.UseConcurrentReads(true))
	if err != nil {
		return nil, fmt.Errorf("sftp: %w", err)
	}
	pc.sftp = sc
	return sc, nil
}

// removeRemote removes a partial upload on a best-effort basis, with its own
// short deadline since the caller's ctx may be done.
func (c *Client) removeRemote(peer, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pc, _, err := c.conn(ctx, peer)
	if err != nil {
		return
	}
	sc, err := pc.sftpClient()
	if err != nil {
		return
	}
	_ = sc.Remove(name)
}

// retryable: the connection, not the remote file system, failed. SFTP status
// errors (no space, permission, no such file) will not improve on a new
// connection.
func retryable(err error) bool {
	var se *sftp.StatusError
	if errors.As(err, &se) {
		return false
	}
	if errors.Is(err, ErrVerify) || errors.Is(err, ErrBadName) || errors.Is(err, ErrHostKeyMismatch) ||
		errors.Is(err, ErrUnknownHost) || errors.Is(err, ErrUnauthorized) || errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) || isNoSpace(err) {
		return false
	}
	if strings.Contains(err.Error(), "read local") {
		return false
	}
	return true
}

func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, ErrNoSpace) ||
		strings.Contains(err.Error(), "no space left on device")
}

// classify wraps the sentinel a caller acts on.
func classify(err error) error {
	switch {
	case errors.Is(err, ErrNoSpace):
		return err
	case isNoSpace(err):
		return fmt.Errorf("%w: %v", ErrNoSpace, err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, sftp.ErrSSHFxConnectionLost), errors.Is(err, net.ErrClosed):
		return fmt.Errorf("%w: %v", ErrPeerClosed, err)
	}
	return err
}
