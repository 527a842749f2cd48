package docker

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"

	"github.com/docker/docker/api/types/container"
	"golang.org/x/sys/unix"
)

// Confined extraction.
//
// An archive comes from another host and is not trusted until its stream
// verified, which is only at its end. So every entry is created under a
// tree's root by file descriptor, never by path: each parent directory is
// opened component by component from the root with O_NOFOLLOW (a symbolic
// link or ".." anywhere on the way fails the entry), and the entry itself
// is created, owned, moded and labelled through its parent's descriptor or
// its own, never by a path the kernel could resolve through a link. An
// existing non-directory in a directory's place, a symbolic link included,
// is replaced, not followed. Device nodes are accepted only where the tree
// allows them: overlay's whiteouts (character 0:0) in a writable layer,
// and the device numbers the container was given (its HostConfig.Devices,
// already judged by the restore policy). Extended attributes must be on
// the allowlist (xattrDecision); ones that describe only the source host's
// overlay are dropped.

// ErrUnsafeEntry: an archive entry would leave its tree, go through a
// symbolic link, create a device the container did not have, or set an
// extended attribute off the allowlist.
var ErrUnsafeEntry = errors.New("unsafe archive entry")

// devKey is a device node's type and number.
type devKey struct {
	typ          byte // tar.TypeChar or tar.TypeBlock
	major, minor uint32
}

// tree is one directory entries are extracted into. Not safe for
// concurrent use.
type tree struct {
	name      string // for errors: "rootfs", "checkpoint", "volumes/NAME"
	root      int    // O_PATH descriptor of the directory
	whiteouts bool   // character 0:0 devices allowed (an overlay upper directory)
	fifos     bool
	devices   map[devKey]bool

	// The last parent directory opened, kept for the next entry (an
	// archive lists a directory's entries together).
	lastDir string
	lastFd  int
}

// openTree opens dir as a tree. dir itself may be reached through links
// (it is the daemon's path, resolved by inRoot); nothing under it may.
func openTree(name, dir string) (*tree, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	return &tree{name: name, root: fd, lastFd: -1}, nil
}

func (t *tree) close() {
	if t.lastFd >= 0 {
		unix.Close(t.lastFd)
		t.lastFd = -1
	}
	if t.root >= 0 {
		unix.Close(t.root)
		t.root = -1
	}
}

// splitRel checks rel (a path under the tree, "" for the root) and splits
// it into its parent directory and final name.
func splitRel(rel string) (dir, name string, err error) {
	rel = strings.TrimSuffix(rel, "/")
	if rel == "" {
		return "", "", nil
	}
	if path.Clean("/"+rel) != "/"+rel || strings.ContainsAny(rel, "\\\x00") {
		return "", "", fmt.Errorf("%w: path %q leaves its tree or is not clean", ErrUnsafeEntry, rel)
	}
	dir, name = path.Split(rel)
	return strings.TrimSuffix(dir, "/"), name, nil
}

// parent returns a descriptor of rel's parent directory (owned by the
// tree: do not close it), creating missing directories with mode 0755.
func (t *tree) parent(dir string) (int, error) {
	if dir == "" {
		return t.root, nil
	}
	if t.lastFd >= 0 && t.lastDir == dir {
		return t.lastFd, nil
	}
	cur := t.root
	for _, comp := range strings.Split(dir, "/") {
		next, err := openDirAt(cur, comp)
		if errors.Is(err, unix.ENOENT) {
			if err = unix.Mkdirat(cur, comp, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
				next, err = openDirAt(cur, comp)
			}
		}
		if cur != t.root {
			unix.Close(cur)
		}
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return -1, fmt.Errorf("%w: %s/%s goes through a symbolic link or a file", ErrUnsafeEntry, t.name, dir)
		}
		if err != nil {
			return -1, fmt.Errorf("%s/%s: %w", t.name, dir, err)
		}
		cur = next
	}
	if t.lastFd >= 0 {
		unix.Close(t.lastFd)
	}
	t.lastDir, t.lastFd = dir, cur
	return cur, nil
}

func openDirAt(dirfd int, name string) (int, error) {
	return unix.Openat(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// extract creates one entry (rel is its path under the tree; "" is the
// tree's own root, which is left as it is).
func (t *tree) extract(rel string, hdr *tar.Header, r io.Reader) error {
	dir, name, err := splitRel(rel)
	if err != nil || name == "" {
		return err
	}
	xs, err := entryXattrs(hdr)
	if err != nil {
		return err
	}
	if err := t.allowed(hdr); err != nil {
		return err
	}
	pfd, err := t.parent(dir)
	if err != nil {
		return err
	}
	mode := uint32(hdr.Mode & 0o7777)
	switch hdr.Typeflag {
	case tar.TypeDir:
		var st unix.Stat_t
		if err := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if err := unix.Unlinkat(pfd, name, 0); err != nil {
				return err
			}
		}
		if err := unix.Mkdirat(pfd, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
		fd, err := unix.Openat(pfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrUnsafeEntry, hdr.Name, err)
		}
		defer unix.Close(fd)
		return setMeta(fd, hdr, xs, mode)
	case tar.TypeReg:
		if err := clearPlace(pfd, name); err != nil {
			return err
		}
		fd, err := unix.Openat(pfd, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), hdr.Name)
		defer f.Close()
		if _, err := io.Copy(f, r); err != nil {
			return err
		}
		if err := setMeta(fd, hdr, xs, mode); err != nil {
			return err
		}
		return setTimes(pfd, name, hdr)
	case tar.TypeSymlink:
		if err := clearPlace(pfd, name); err != nil {
			return err
		}
		if err := unix.Symlinkat(hdr.Linkname, pfd, name); err != nil {
			return err
		}
		if err := unix.Fchownat(pfd, name, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		for k, v := range xs {
			if err := unix.Lsetxattr(fdPath(pfd)+"/"+name, k, []byte(v), 0); err != nil {
				return fmt.Errorf("xattr %s: %w", k, err)
			}
		}
		return setTimes(pfd, name, hdr)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if err := clearPlace(pfd, name); err != nil {
			return err
		}
		typ := uint32(unix.S_IFCHR)
		switch hdr.Typeflag {
		case tar.TypeBlock:
			typ = unix.S_IFBLK
		case tar.TypeFifo:
			typ = unix.S_IFIFO
		}
		dev := int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
		if err := unix.Mknodat(pfd, name, typ|0o600, dev); err != nil {
			return err
		}
		// Opened as a path only: a device or FIFO is never opened for I/O.
		fd, err := unix.Openat(pfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Fchownat(fd, "", hdr.Uid, hdr.Gid, unix.AT_EMPTY_PATH); err != nil {
			return err
		}
		for k, v := range xs {
			if err := unix.Setxattr(fdPath(fd), k, []byte(v), 0); err != nil {
				return fmt.Errorf("xattr %s: %w", k, err)
			}
		}
		if err := unix.Fchmodat(unix.AT_FDCWD, fdPath(fd), mode, 0); err != nil {
			return err
		}
		return setTimes(pfd, name, hdr)
	}
	return fmt.Errorf("%w: %s: entry type %q", ErrUnsafeEntry, hdr.Name, hdr.Typeflag)
}

// allowed refuses device nodes and FIFOs the tree does not take.
func (t *tree) allowed(hdr *tar.Header) error {
	switch hdr.Typeflag {
	case tar.TypeFifo:
		if !t.fifos {
			return fmt.Errorf("%w: %s: a FIFO in %s", ErrUnsafeEntry, hdr.Name, t.name)
		}
	case tar.TypeChar, tar.TypeBlock:
		k := devKey{hdr.Typeflag, uint32(hdr.Devmajor), uint32(hdr.Devminor)}
		if t.whiteouts && k == (devKey{tar.TypeChar, 0, 0}) || t.devices[k] {
			return nil
		}
		kind := "character"
		if hdr.Typeflag == tar.TypeBlock {
			kind = "block"
		}
		return fmt.Errorf("%w: %s: %s device %d:%d, which the container was not given", ErrUnsafeEntry, hdr.Name, kind, hdr.Devmajor, hdr.Devminor)
	}
	return nil
}

// clearPlace removes a non-directory (a symbolic link included, never
// followed) or an empty directory where an entry goes.
func clearPlace(pfd int, name string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil
	}
	flags := 0
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		flags = unix.AT_REMOVEDIR
	}
	return unix.Unlinkat(pfd, name, flags)
}

// setMeta sets owner, extended attributes and mode (in that order: a
// chown clears set-id bits) through an open descriptor.
func setMeta(fd int, hdr *tar.Header, xs map[string]string, mode uint32) error {
	if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
		return err
	}
	for k, v := range xs {
		if err := unix.Fsetxattr(fd, k, []byte(v), 0); err != nil {
			return fmt.Errorf("xattr %s: %w", k, err)
		}
	}
	return unix.Fchmod(fd, mode)
}

func setTimes(pfd int, name string, hdr *tar.Header) error {
	ts := []unix.Timespec{unix.NsecToTimespec(hdr.AccessTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	if hdr.AccessTime.IsZero() {
		ts[0] = ts[1]
	}
	_ = unix.UtimesNanoAt(pfd, name, ts, unix.AT_SYMLINK_NOFOLLOW)
	return nil
}

func fdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// xattrDecision says what happens to an extended attribute of an entry:
// keep (set it), drop (it only describes the source host's overlay: the
// lower inode a file was copied up from), or refuse the archive.
func xattrDecision(name, value string) (keep bool, err error) {
	switch {
	case strings.HasPrefix(name, "user."):
		return true, nil
	case name == "trusted.overlay.opaque":
		if value != "y" {
			return false, fmt.Errorf("%w: %s=%q", ErrUnsafeEntry, name, value)
		}
		return true, nil
	case name == "security.capability":
		// File capabilities inside the container's own layer; they are
		// bounded by the container's capability set when executed there.
		return true, nil
	case name == "trusted.overlay.origin" || name == "trusted.overlay.impure" || name == "trusted.overlay.nlink":
		return false, nil
	}
	return false, fmt.Errorf("%w: extended attribute %s is not on the allowlist (user.*, trusted.overlay.opaque, security.capability)", ErrUnsafeEntry, name)
}

// entryXattrs returns the extended attributes of hdr to set.
func entryXattrs(hdr *tar.Header) (map[string]string, error) {
	var out map[string]string
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, xattrPrefix)
		if !ok {
			continue
		}
		keep, err := xattrDecision(name, v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", hdr.Name, err)
		}
		if keep {
			if out == nil {
				out = map[string]string{}
			}
			out[name] = v
		}
	}
	return out, nil
}

// volumeSwap replaces an existing volume's contents only once the archive
// that carries the new ones verified: the archive is extracted into a
// directory beside the volume's (incoming), apply swaps the two by rename,
// commit drops the old contents once the container started, and undo puts
// back whatever was there before.
type volumeSwap struct {
	dir      string // the volume's directory, as this process sees it
	incoming string
	old      string
	applied  bool
}

// newVolumeSwap prepares the incoming directory, removing leftovers of an
// interrupted restore.
func newVolumeSwap(dir string) (*volumeSwap, error) {
	sw := &volumeSwap{dir: dir, incoming: dir + ".orc-incoming", old: dir + ".orc-old"}
	if _, err := os.Lstat(sw.old); err == nil {
		// An interrupted swap: the old contents are the volume's.
		if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
			if err := os.Rename(sw.old, dir); err != nil {
				return nil, err
			}
		}
	}
	for _, p := range []string{sw.incoming, sw.old} {
		if err := os.RemoveAll(p); err != nil {
			return nil, err
		}
	}
	if err := os.Mkdir(sw.incoming, 0o700); err != nil {
		return nil, err
	}
	return sw, nil
}

// apply gives the incoming directory the volume directory's owner and mode
// and swaps it in.
func (sw *volumeSwap) apply() error {
	fi, err := os.Lstat(sw.dir)
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*unix.Stat_t); ok {
		if err := os.Lchown(sw.incoming, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
	}
	if err := os.Chmod(sw.incoming, fi.Mode()&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky)); err != nil {
		return err
	}
	if err := os.Rename(sw.dir, sw.old); err != nil {
		return err
	}
	if err := os.Rename(sw.incoming, sw.dir); err != nil {
		_ = os.Rename(sw.old, sw.dir)
		return err
	}
	sw.applied = true
	return nil
}

// commit drops the old contents.
func (sw *volumeSwap) commit() { _ = os.RemoveAll(sw.old) }

// undo restores the volume as it was before the restore began.
func (sw *volumeSwap) undo(log interface{ Warn(string, ...any) }) {
	if sw.applied {
		if err := os.Rename(sw.dir, sw.incoming); err != nil {
			log.Warn("could not put a volume's previous contents back", "dir", sw.dir, "err", err)
			return
		}
		if err := os.Rename(sw.old, sw.dir); err != nil {
			log.Warn("could not put a volume's previous contents back", "dir", sw.dir, "kept", sw.old, "err", err)
			return
		}
		sw.applied = false
	}
	_ = os.RemoveAll(sw.incoming)
}

// givenDevices resolves the devices the container was given (its host
// config, which the restore policy judged) on this host: device nodes of
// these numbers may appear in its writable layer and volumes.
func givenDevices(root string, hc *container.HostConfig) (map[devKey]bool, error) {
	out := map[devKey]bool{}
	for _, d := range hc.Devices {
		var st unix.Stat_t
		if err := unix.Stat(inRoot(root, d.PathOnHost), &st); err != nil {
			return nil, fmt.Errorf("%w: device %s: %v", ErrUnsupported, d.PathOnHost, err)
		}
		typ := byte(tar.TypeChar)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFCHR:
		case unix.S_IFBLK:
			typ = tar.TypeBlock
		default:
			return nil, fmt.Errorf("%w: %s is not a device", ErrUnsupported, d.PathOnHost)
		}
		out[devKey{typ, unix.Major(st.Rdev), unix.Minor(st.Rdev)}] = true
	}
	return out, nil
}
