package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"strings"
	"syscall"
	"time"

	"github.com/pkg/sftp"
)

// spoolPath turns an SFTP path ("/a/b", cleaned by pkg/sftp against "/") or
// a client-supplied name into a name relative to the spool root, or
// ErrBadName. "/" itself maps to ".". os.Root then refuses anything that
// would escape through a symlink.
func spoolPath(p string) (string, error) {
	if strings.ContainsRune(p, 0) || strings.Contains(p, `\`) {
		return "", fmt.Errorf("%w: %q", ErrBadName, p)
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return "", fmt.Errorf("%w: %q", ErrBadName, p)
		}
	}
	rel := strings.TrimPrefix(path.Clean("/"+p), "/")
	if rel == "" {
		return ".", nil
	}
	return rel, nil
}

// spoolFS serves SFTP requests from the spool root. Files are plain spool
// files; symlink and hard-link creation are refused so nothing in the spool
// can point out of it.
type spoolFS struct {
	s   *Server
	log *slog.Logger
}

var (
	_ sftp.FileReader           = spoolFS{}
	_ sftp.FileWriter           = spoolFS{}
	_ sftp.FileCmder            = spoolFS{}
	_ sftp.FileLister           = spoolFS{}
	_ sftp.PosixRenameFileCmder = spoolFS{}
)

func (s *Server) sftpHandlers(log *slog.Logger) sftp.Handlers {
	fsys := spoolFS{s: s, log: log}
	return sftp.Handlers{FileGet: fsys, FilePut: fsys, FileCmd: fsys, FileList: fsys}
}

func (f spoolFS) Fileread(r *sftp.Request) (io.ReaderAt, error) {
	rel, err := spoolPath(r.Filepath)
	if err != nil {
		return nil, err
	}
	return f.s.root.Open(rel)
}

func (f spoolFS) Filewrite(r *sftp.Request) (io.WriterAt, error) {
	rel, err := spoolPath(r.Filepath)
	if err != nil {
		return nil, err
	}
	pf := r.Pflags()
	flags := os.O_WRONLY
	if pf.Creat {
		flags |= os.O_CREATE
	}
	if pf.Trunc {
		flags |= os.O_TRUNC
	}
	if pf.Excl {
		flags |= os.O_EXCL
	}
	if pf.Append {
		flags |= os.O_APPEND
	}
	file, err := f.s.root.OpenFile(rel, flags, 0o600)
	if err != nil {
		return nil, err
	}
	return &spoolWriter{File: file, fs: f, rel: rel}, nil
}

// spoolWriter removes a partial upload as soon as the disk is full: the
// upload cannot finish, and the space is better given back at once.
type spoolWriter struct {
	*os.File
	fs  spoolFS
	rel string
}

func (w *spoolWriter) WriteAt(p []byte, off int64) (int, error) {
	n, err := 0, w.fs.s.checkWrite(off, len(p))
	if err == nil {
		n, err = w.File.WriteAt(p, off)
	}
	if err != nil && errors.Is(err, syscall.ENOSPC) && strings.HasSuffix(w.rel, partialSuffix) {
		w.fs.log.Warn("spool full, removing partial upload", "name", w.rel)
		_ = w.fs.s.root.Remove(w.rel)
	}
	return n, err
}

func (f spoolFS) Filecmd(r *sftp.Request) error {
	rel, err := spoolPath(r.Filepath)
	if err != nil {
		return err
	}
	root := f.s.root
	switch r.Method {
	case "Setstat":
		attrs := r.AttrFlags()
		if attrs.Size {
			file, err := root.OpenFile(rel, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer file.Close()
			return file.Truncate(int64(r.Attributes().Size))
		}
		return nil // modes and times are not kept in the spool
	case "Rename", "PosixRename":
		target, err := spoolPath(r.Target)
		if err != nil {
			return err
		}
		return root.Rename(rel, target)
	case "Remove":
		return root.Remove(rel)
	case "Rmdir":
		return root.Remove(rel)
	case "Mkdir":
		return root.Mkdir(rel, 0o700)
	case "Link", "Symlink":
		return sftp.ErrSSHFxOpUnsupported
	}
	return sftp.ErrSSHFxOpUnsupported
}

func (f spoolFS) PosixRename(r *sftp.Request) error {
	r.Method = "PosixRename"
	return f.Filecmd(r)
}

func (f spoolFS) Filelist(r *sftp.Request) (sftp.ListerAt, error) {
	rel, err := spoolPath(r.Filepath)
	if err != nil {
		return nil, err
	}
	switch r.Method {
	case "List":
		dir, err := f.s.root.Open(rel)
		if err != nil {
			return nil, err
		}
		defer dir.Close()
		ents, err := dir.Readdir(-1)
		if err != nil {
			return nil, err
		}
		return listerAt(ents), nil
	case "Stat":
		fi, err := f.s.root.Stat(rel)
		if err != nil {
			return nil, err
		}
		return listerAt{fi}, nil
	case "Lstat":
		fi, err := f.s.root.Lstat(rel)
		if err != nil {
			return nil, err
		}
		return listerAt{fi}, nil
	}
	return nil, sftp.ErrSSHFxOpUnsupported
}

type listerAt []os.FileInfo

func (l listerAt) ListAt(out []os.FileInfo, off int64) (int, error) {
	if off >= int64(len(l)) {
		return 0, io.EOF
	}
	n := copy(out, l[off:])
	if off+int64(n) >= int64(len(l)) {
		return n, io.EOF
	}
	return n, nil
}

// sweepPartials removes *.partial files older than PartialTTL: uploads whose
// client never came back to resume them.
func (s *Server) sweepPartials() {
	cutoff := time.Now().Add(-s.cfg.PartialTTL)
	_ = fs.WalkDir(s.root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, partialSuffix) {
			return nil
		}
		info, err := d.Info()
		if err != nil || info.ModTime().After(cutoff) {
			return nil
		}
		if err := s.root.Remove(p); err == nil {
			s.log.Info("removed stale partial upload", "name", p, "modified", info.ModTime())
		}
		return nil
	})
}

func (s *Server) sweepLoop(ctx context.Context) {
	t := time.NewTicker(max(s.cfg.PartialTTL/2, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.done:
			return
		case <-t.C:
			s.sweepPartials()
		}
	}
}
