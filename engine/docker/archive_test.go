package docker

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A tree written by addTree extracts to the same files, modes, links,
// whiteouts and opaque marks; entries that would leave the base fail.
func TestTreeRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("devices and trusted.* xattrs need root")
	}
	src, dst := t.TempDir(), t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "etc/opaque"), 0o750))
	must(os.WriteFile(filepath.Join(src, "etc/file"), []byte("hello"), 0o640))
	must(os.Symlink("file", filepath.Join(src, "etc/rel")))
	must(mknodWhiteout(filepath.Join(src, "etc/gone")))
	must(setOpaque(filepath.Join(src, "etc/opaque")))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	n, err := addTree(tw, src, "rootfs", true)
	must(err)
	must(tw.Close())
	if n != 5 {
		t.Fatalf("%d entries, want 5", n)
	}
	into, err := openTree("rootfs", dst)
	must(err)
	defer into.close()
	into.whiteouts = true
	tr := tar.NewReader(&buf)
	for {
		hdr, err := tr.Next()
		if err != nil {
			break
		}
		_, rel, _ := strings.Cut(hdr.Name, "/")
		must(into.extract(rel, hdr, tr))
	}
	if b, err := os.ReadFile(filepath.Join(dst, "etc/file")); err != nil || string(b) != "hello" {
		t.Fatalf("file: %q %v", b, err)
	}
	if fi, _ := os.Stat(filepath.Join(dst, "etc/file")); fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v", fi.Mode())
	}
	if l, _ := os.Readlink(filepath.Join(dst, "etc/rel")); l != "file" {
		t.Fatalf("symlink %q", l)
	}
	if fi, err := os.Lstat(filepath.Join(dst, "etc/gone")); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Fatalf("whiteout: %v %v", fi, err)
	}
	if xs := xattrs(filepath.Join(dst, "etc/opaque")); xs["trusted.overlay.opaque"] != "y" {
		t.Fatalf("opaque mark lost: %v", xs)
	}
}

func mknodWhiteout(p string) error { return unix.Mknod(p, unix.S_IFCHR, 0) }
func setOpaque(p string) error     { return unix.Lsetxattr(p, "trusted.overlay.opaque", []byte("y"), 0) }
