package docker

import (
	"os"
	"path/filepath"
	"testing"
)

// Early streaming takes images only from a directory containerd (root)
// made: one made first by another user in a world-writable TMPDIR, or
// holding a link or somebody else's file, is ignored.
func TestEarlyImagesOnlyFromContainerd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("ownership checks need root")
	}
	tmp := t.TempDir()
	mk := func(name string, mode os.FileMode, uid int, files ...string) string {
		d := filepath.Join(tmp, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(d, f), []byte(f), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chmod(d, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, uid, -1); err != nil {
			t.Fatal(err)
		}
		return d
	}
	good := mk("ctd-checkpoint1", 0o700, 0, "inventory.img", "pages-1.img")
	files := openAll(good)
	if len(files) != 2 || files[0].name != "inventory.img" {
		t.Fatalf("containerd's directory: %d files", len(files))
	}
	for _, f := range files {
		f.f.Close()
	}
	if !containerdMade(good) {
		t.Fatal("containerd's directory refused")
	}
	for _, d := range []string{
		mk("ctd-checkpoint2", 0o700, 65534, "inventory.img"),
		mk("ctd-checkpoint3", 0o755, 0, "inventory.img"),
	} {
		if containerdMade(d) || openAll(d) != nil {
			t.Errorf("%s accepted", d)
		}
	}
	link := filepath.Join(tmp, "ctd-checkpoint4")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	if containerdMade(link) || openAll(link) != nil {
		t.Error("a link to containerd's directory was followed")
	}
	withLink := mk("ctd-checkpoint5", 0o700, 0, "inventory.img")
	if err := os.Symlink("/etc/shadow", filepath.Join(withLink, "pages-1.img")); err != nil {
		t.Fatal(err)
	}
	if openAll(withLink) != nil {
		t.Error("a link among the images was followed")
	}
	foreign := mk("ctd-checkpoint6", 0o700, 0, "inventory.img")
	if err := os.Chown(filepath.Join(foreign, "inventory.img"), 65534, -1); err != nil {
		t.Fatal(err)
	}
	if openAll(foreign) != nil {
		t.Error("an image owned by another user was taken")
	}
}
