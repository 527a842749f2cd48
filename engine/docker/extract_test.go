package docker

import (
	"archive/tar"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
	"golang.org/x/sys/unix"
)

// entry is one tar entry for the extraction tests.
type entry struct {
	name     string
	typ      byte
	mode     int64
	link     string
	body     string
	maj, min int64
	xattrs   map[string]string
}

func (e entry) header() *tar.Header {
	h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Size: int64(len(e.body)),
		Devmajor: e.maj, Devminor: e.min, Format: tar.FormatPAX}
	if h.Mode == 0 {
		h.Mode = 0o644
	}
	for k, v := range e.xattrs {
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords[xattrPrefix+k] = v
	}
	return h
}

// extractAll extracts entries into a fresh rootfs tree (whiteouts allowed)
// and returns the first error.
func extractAll(t *testing.T, dst string, entries ...entry) error {
	t.Helper()
	into, err := openTree("rootfs", dst)
	if err != nil {
		t.Fatal(err)
	}
	defer into.close()
	into.whiteouts, into.fifos = true, true
	for _, e := range entries {
		if err := into.extract(e.name, e.header(), strings.NewReader(e.body)); err != nil {
			return err
		}
	}
	return nil
}

func TestExtractConfined(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("devices, ownership and trusted.* xattrs need root")
	}
	// outside stands for /etc: nothing may change in it.
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "passwd"), []byte("root"), 0o644); err != nil {
		t.Fatal(err)
	}
	unchanged := func(t *testing.T) {
		t.Helper()
		fi, err := os.Lstat(outside)
		if err != nil || fi.Mode().Perm() != 0o755 || fi.Mode()&(os.ModeSticky|os.ModeSetgid) != 0 {
			t.Fatalf("outside changed: %v %v", fi.Mode(), err)
		}
		ents, _ := os.ReadDir(outside)
		if b, _ := os.ReadFile(filepath.Join(outside, "passwd")); len(ents) != 1 || string(b) != "root" {
			t.Fatalf("outside holds %d entries, passwd %q", len(ents), b)
		}
	}
	for _, c := range []struct {
		name    string
		entries []entry
		unsafe  bool   // ErrUnsafeEntry expected
		check   string // a path under dst that must be a real directory afterwards
	}{
		{"symlink, then a directory of the same name", []entry{
			{name: "x", typ: tar.TypeSymlink, link: outside},
			{name: "x/", typ: tar.TypeDir, mode: 0o1700},
			{name: "x/planted", typ: tar.TypeReg, body: "evil"},
		}, false, "x"},
		{"symlink, then a file through it", []entry{
			{name: "y", typ: tar.TypeSymlink, link: outside},
			{name: "y/passwd", typ: tar.TypeReg, body: "evil"},
		}, true, ""},
		{"relative symlink up and out", []entry{
			{name: "d/", typ: tar.TypeDir, mode: 0o755},
			{name: "d/up", typ: tar.TypeSymlink, link: "../../outside"},
			{name: "d/up/passwd", typ: tar.TypeReg, body: "evil"},
		}, true, ""},
		{"symlink replaced by a file, not written through", []entry{
			{name: "z", typ: tar.TypeSymlink, link: filepath.Join(outside, "passwd")},
			{name: "z", typ: tar.TypeReg, body: "mine"},
		}, false, ""},
		{"dot-dot", []entry{{name: "../outside/passwd", typ: tar.TypeReg, body: "evil"}}, true, ""},
		{"unclean path", []entry{{name: "a//b", typ: tar.TypeReg, body: "x"}}, true, ""},
		{"device /dev/mem", []entry{{name: "mem", typ: tar.TypeChar, maj: 1, min: 1}}, true, ""},
		{"block device", []entry{{name: "sda", typ: tar.TypeBlock, maj: 8, min: 0}}, true, ""},
		{"device through a symlink", []entry{
			{name: "w", typ: tar.TypeSymlink, link: outside},
			{name: "w/mem", typ: tar.TypeChar, maj: 1, min: 1},
		}, true, ""},
		{"hard link", []entry{{name: "h", typ: tar.TypeLink, link: filepath.Join(outside, "passwd")}}, true, ""},
		{"xattr trusted.*", []entry{{name: "f", typ: tar.TypeReg, xattrs: map[string]string{"trusted.evil": "1"}}}, true, ""},
		{"xattr security.selinux", []entry{{name: "f", typ: tar.TypeReg, xattrs: map[string]string{"security.selinux": "system_u:object_r:shadow_t:s0"}}}, true, ""},
		{"opaque mark with another value", []entry{{name: "o/", typ: tar.TypeDir, xattrs: map[string]string{"trusted.overlay.opaque": "x"}}}, true, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			dst := filepath.Join(base, strings.NewReplacer(" ", "_", "/", "_").Replace(c.name))
			if err := os.Mkdir(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			err := extractAll(t, dst, c.entries...)
			if c.unsafe != errors.Is(err, ErrUnsafeEntry) {
				t.Fatalf("extract: %v, want unsafe=%v", err, c.unsafe)
			}
			if !c.unsafe && err != nil {
				t.Fatal(err)
			}
			unchanged(t)
			if c.check != "" {
				fi, err := os.Lstat(filepath.Join(dst, c.check))
				if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 || fi.Mode()&os.ModeSticky == 0 {
					t.Fatalf("%s: %v %v, want a real directory 1700", c.check, fi.Mode(), err)
				}
			}
		})
	}
}

func TestExtractAllowed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("devices, ownership and trusted.* xattrs need root")
	}
	dst := t.TempDir()
	into, err := openTree("rootfs", dst)
	if err != nil {
		t.Fatal(err)
	}
	defer into.close()
	into.whiteouts, into.fifos = true, true
	into.devices = map[devKey]bool{{tar.TypeChar, 10, 229}: true} // /dev/fuse, given to the container
	for _, e := range []entry{
		{name: "gone", typ: tar.TypeChar},
		{name: "fuse", typ: tar.TypeChar, maj: 10, min: 229, mode: 0o666},
		{name: "pipe", typ: tar.TypeFifo, mode: 0o640},
		{name: "suid", typ: tar.TypeReg, mode: 0o4755, body: "#!"},
		{name: "f", typ: tar.TypeReg, xattrs: map[string]string{"user.note": "hi", "trusted.overlay.origin": "\x00\xfb", "security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}},
		{name: "o/", typ: tar.TypeDir, mode: 0o755, xattrs: map[string]string{"trusted.overlay.opaque": "y"}},
	} {
		if err := into.extract(e.name, e.header(), strings.NewReader(e.body)); err != nil {
			t.Fatalf("%s: %v", e.name, err)
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dst, "fuse"), &st); err != nil || unix.Major(st.Rdev) != 10 || st.Mode&0o777 != 0o666 {
		t.Fatalf("fuse: %+v %v", st, err)
	}
	if fi, _ := os.Lstat(filepath.Join(dst, "suid")); fi.Mode()&os.ModeSetuid == 0 {
		t.Fatalf("set-uid bit lost: %v", fi.Mode())
	}
	xs := xattrs(filepath.Join(dst, "f"))
	if xs["user.note"] != "hi" || xs["security.capability"] == "" {
		t.Fatalf("allowed xattrs lost: %v", xs)
	}
	if _, ok := xs["trusted.overlay.origin"]; ok {
		t.Fatal("the source's overlay origin was kept")
	}
	if xattrs(filepath.Join(dst, "o"))["trusted.overlay.opaque"] != "y" {
		t.Fatal("opaque mark lost")
	}
	// The checkpoint tree takes no device, not even a whiteout.
	ck, err := openTree("checkpoint", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer ck.close()
	for _, e := range []entry{{name: "gone", typ: tar.TypeChar}, {name: "p", typ: tar.TypeFifo}} {
		if err := ck.extract(e.name, e.header(), strings.NewReader("")); !errors.Is(err, ErrUnsafeEntry) {
			t.Fatalf("checkpoint %s: %v", e.name, err)
		}
	}
}

// An existing volume keeps its contents until apply, gets them back on
// undo, and loses them only on commit.
func TestVolumeSwap(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "_data")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(dir, 0o751))
	must(os.WriteFile(filepath.Join(dir, "old"), []byte("old"), 0o600))
	log := slog.New(slog.DiscardHandler)
	read := func() string {
		ents, _ := os.ReadDir(dir)
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return strings.Join(names, ",")
	}

	sw, err := newVolumeSwap(dir)
	must(err)
	must(os.WriteFile(filepath.Join(sw.incoming, "new"), []byte("new"), 0o600))
	if read() != "old" {
		t.Fatalf("volume changed before apply: %s", read())
	}
	sw.undo(log)
	if read() != "old" {
		t.Fatalf("after undo before apply: %s", read())
	}
	if _, err := os.Lstat(sw.incoming); !os.IsNotExist(err) {
		t.Fatal("incoming directory left")
	}

	sw, err = newVolumeSwap(dir)
	must(err)
	must(os.WriteFile(filepath.Join(sw.incoming, "new"), []byte("new"), 0o600))
	must(sw.apply())
	if read() != "new" {
		t.Fatalf("after apply: %s", read())
	}
	if fi, _ := os.Lstat(dir); fi.Mode().Perm() != 0o751 {
		t.Fatalf("mode after apply %v", fi.Mode())
	}
	sw.undo(log)
	if read() != "old" {
		t.Fatalf("after undo: %s", read())
	}

	sw, err = newVolumeSwap(dir)
	must(err)
	must(os.WriteFile(filepath.Join(sw.incoming, "new"), []byte("new"), 0o600))
	must(sw.apply())
	sw.commit()
	if read() != "new" {
		t.Fatalf("after commit: %s", read())
	}
	if ents, _ := os.ReadDir(base); len(ents) != 1 {
		t.Fatalf("leftovers beside the volume: %d entries", len(ents))
	}
}

func TestGivenDevices(t *testing.T) {
	got, err := givenDevices("", &container.HostConfig{Resources: container.Resources{Devices: []container.DeviceMapping{{PathOnHost: "/dev/null"}}}})
	if err != nil || !got[devKey{tar.TypeChar, 1, 3}] || len(got) != 1 {
		t.Fatalf("givenDevices(/dev/null) = %v, %v", got, err)
	}
	if _, err := givenDevices("", &container.HostConfig{Resources: container.Resources{Devices: []container.DeviceMapping{{PathOnHost: "/etc/passwd"}}}}); err == nil {
		t.Fatal("a regular file was taken for a device")
	}
}
