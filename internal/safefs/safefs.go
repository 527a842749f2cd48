// Package safefs checks the files and directories the agent trusts with
// secrets and checkpoints before it uses them: its data directory and the
// staging directories under it, and the cluster secret. It owns no state.
//
// The rule is the one ssh applies to keys: a path is trusted only if this
// process's user (root, for the agent) or root owns it, it is not a
// symbolic link, and nobody else can write it (directories) or read it
// (secrets). Anything else is refused with ErrUnsafe and a message that
// says how to fix it; nothing is ever created in a directory that fails the
// check. A directory somebody else could have created first (in /tmp,
// /dev/shm) fails it, so staging never lands where another user can swap
// files.
package safefs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// ErrUnsafe: a path fails the ownership, type or mode check.
var ErrUnsafe = errors.New("unsafe path")

// owner returns the file's owner, or -1 when the platform has none.
func owner(fi fs.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}

// trustedOwner: this process's user or root.
func trustedOwner(uid int) bool { return uid == 0 || uid == os.Geteuid() }

// PrivateDir makes sure dir is a directory only this process's user can
// use: it creates it (and missing parents) with mode 0700, or checks an
// existing one. An existing directory must not be a symbolic link, must be
// owned by this user or root, and must not be writable by group or others;
// one that is merely readable by them is tightened to 0700 (its owner made
// it so, nobody else could have put anything in it). Everything else is
// refused with ErrUnsafe.
func PrivateDir(dir string) error {
	if dir == "" {
		return fmt.Errorf("%w: empty directory name", ErrUnsafe)
	}
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
			return fmt.Errorf("private directory %s: %w", dir, err)
		}
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("private directory %s: %w", dir, err)
		}
		// Check what is there now: a racing creator may have won.
		if fi, err = os.Lstat(dir); err != nil {
			return fmt.Errorf("private directory %s: %w", dir, err)
		}
	} else if err != nil {
		return fmt.Errorf("private directory %s: %w", dir, err)
	}
	if err := CheckDir(dir, fi); err != nil {
		return err
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("private directory %s: %w", dir, err)
		}
	}
	return nil
}

// CheckDir checks fi (from os.Lstat of dir) as PrivateDir does, without
// changing anything.
func CheckDir(dir string, fi fs.FileInfo) error {
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%w: %s is a symbolic link; use a real directory owned by root with mode 0700", ErrUnsafe, dir)
	case !fi.IsDir():
		return fmt.Errorf("%w: %s is not a directory", ErrUnsafe, dir)
	case !trustedOwner(owner(fi)):
		return fmt.Errorf("%w: %s is owned by uid %d, not by root: somebody else may have created it first; remove it (or chown root and chmod 0700 if you trust its contents)", ErrUnsafe, dir, owner(fi))
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%w: %s has mode %04o: others can write it; chmod 0700 (and check its contents)", ErrUnsafe, dir, fi.Mode().Perm())
	}
	return nil
}

// ReadSecret reads a secret file that only root (or this process's user)
// can read: a regular file owned by this user or root with mode 0600 or
// 0400, as ssh demands of private keys. A symbolic link is followed; the
// file it leads to is what is checked.
func ReadSecret(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := CheckSecret(path, fi); err != nil {
		return nil, err
	}
	// A secret is a line of hex; anything much larger is not one.
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// CheckSecret checks fi (the secret file's) as ReadSecret does.
func CheckSecret(path string, fi fs.FileInfo) error {
	switch perm := fi.Mode().Perm(); {
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%w: %s is not a regular file", ErrUnsafe, path)
	case !trustedOwner(owner(fi)):
		return fmt.Errorf("%w: %s is owned by uid %d: the secret must be owned by root (chown root %s)", ErrUnsafe, path, owner(fi), path)
	case perm != 0o600 && perm != 0o400:
		return fmt.Errorf("%w: %s has mode %04o: the secret must be readable by its owner only (chmod 0600 %s)", ErrUnsafe, path, perm, path)
	}
	return nil
}
