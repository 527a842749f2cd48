package cluster

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"github.com/edgemigrate/orchestrate/internal/safefs"
)

// listenUnix creates the CLI socket: whoever can connect to it is root's
// equal, because it needs no token. The socket is bound inside a fresh
// directory of mode 0700, made 0600 there and only then renamed to path,
// so at no moment can anyone else connect. The socket's directory is made
// with mode 0700 when it does not exist (and tightened to 0700 when it
// holds nothing but the socket); a directory that others could write is
// refused, because they could replace the socket. A stale socket (no agent
// answers) is replaced; anything else at path is refused. Closing the
// listener removes the socket.
func listenUnix(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := socketDir(dir, filepath.Base(path)); err != nil {
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("api socket %s: exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("api socket %s: another agent is listening", path)
		}
	}
	tmp, err := os.MkdirTemp(dir, ".s")
	if err != nil {
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	defer os.RemoveAll(tmp)
	bound := filepath.Join(tmp, "s")
	ln, err := net.Listen("unix", bound)
	if err != nil {
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	if err := os.Chmod(bound, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	if err := os.Rename(bound, path); err != nil {
		ln.Close()
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	return &unixListener{UnixListener: ul, path: path}, nil
}

// socketDir makes or checks the socket's directory.
func socketDir(dir, sock string) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return safefs.PrivateDir(dir)
	}
	if err != nil {
		return err
	}
	if err := safefs.CheckDir(dir, fi); err != nil {
		return err
	}
	if fi.Mode().Perm() == 0o700 {
		return nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Name() != sock {
			return nil // shared with other files: leave its mode alone
		}
	}
	return os.Chmod(dir, 0o700)
}

// unixListener removes its socket when closed.
type unixListener struct {
	*net.UnixListener
	path string
}

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	if errors.Is(err, net.ErrClosed) {
		return err
	}
	_ = os.Remove(l.path)
	return err
}
