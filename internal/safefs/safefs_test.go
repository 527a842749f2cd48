package safefs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

const nobody = 65534

func TestPrivateDir(t *testing.T) {
	base := t.TempDir()
	mk := func(name string, mode os.FileMode, uid int) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if uid >= 0 {
			if err := os.Chown(p, uid, -1); err != nil {
				t.Skipf("chown needs root: %v", err)
			}
		}
		return p
	}
	target := mk("target", 0o700, -1)
	link := filepath.Join(base, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		path     string
		wantErr  bool
		wantMode os.FileMode
	}{
		{"missing, created with parents", filepath.Join(base, "a", "b", "c"), false, 0o700},
		{"ours 0700", target, false, 0o700},
		{"ours 0755 is tightened", mk("open", 0o755, -1), false, 0o700},
		{"group-writable", mk("gw", 0o770, -1), true, 0},
		{"world-writable sticky, like /tmp", mk("tmp", 0o1777, -1), true, 0},
		{"created first by nobody", mk("nobody", 0o700, nobody), true, 0},
		{"symbolic link to a good directory", link, true, 0},
		{"a file", file, true, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := PrivateDir(c.path)
			if c.wantErr {
				if !errors.Is(err, ErrUnsafe) {
					t.Fatalf("PrivateDir(%s) = %v, want ErrUnsafe", c.path, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Lstat(c.path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != c.wantMode || !fi.IsDir() {
				t.Fatalf("mode %v, want dir %04o", fi.Mode(), c.wantMode)
			}
		})
	}
}

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode, uid int) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("s3cret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if uid >= 0 {
			if err := os.Chown(p, uid, -1); err != nil {
				t.Skipf("chown needs root: %v", err)
			}
		}
		return p
	}
	for _, c := range []struct {
		name string
		path string
		ok   bool
	}{
		{"0600", write("a", 0o600, -1), true},
		{"0400", write("b", 0o400, -1), true},
		{"0644", write("c", 0o644, -1), false},
		{"0640", write("d", 0o640, -1), false},
		{"0700", write("e", 0o700, -1), false},
		{"owned by nobody", write("f", 0o600, nobody), false},
		{"a directory", dir, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, err := ReadSecret(c.path)
			if c.ok && (err != nil || string(b) != "s3cret\n") {
				t.Fatalf("ReadSecret = %q, %v", b, err)
			}
			if !c.ok && !errors.Is(err, ErrUnsafe) {
				t.Fatalf("ReadSecret = %v, want ErrUnsafe", err)
			}
		})
	}
}
