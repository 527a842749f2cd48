package cluster

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestListenUnix(t *testing.T) {
	base := t.TempDir()
	mode := func(p string) os.FileMode {
		t.Helper()
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Perm()
	}

	// A new directory is 0700, the socket 0600, and no temporary is left.
	path := filepath.Join(base, "run", "orchestrate", "agent.sock")
	ln, err := listenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := mode(filepath.Dir(path)); m != 0o700 {
		t.Errorf("socket directory mode %04o, want 0700", m)
	}
	if m := mode(path); m != 0o600 {
		t.Errorf("socket mode %04o, want 0600", m)
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only the socket", len(ents))
	}
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial the renamed socket: %v", err)
	}
	c.Close()

	// A second agent is refused while the first listens.
	if _, err := listenUnix(path); err == nil || !strings.Contains(err.Error(), "another agent") {
		t.Fatalf("second listen: %v", err)
	}
	ln.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left after Close: %v", err)
	}

	// A stale socket is replaced; an existing 0755 directory holding only
	// the socket is tightened.
	if err := os.Chmod(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	ln, err = listenUnix(path)
	if err != nil {
		t.Fatalf("replace a stale socket: %v", err)
	}
	ln.Close()
	if m := mode(filepath.Dir(path)); m != 0o700 {
		t.Errorf("directory holding only the socket left at %04o", m)
	}

	// A shared directory keeps its mode.
	shared := filepath.Join(base, "shared")
	if err := os.Mkdir(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(shared, "other"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if ln, err = listenUnix(filepath.Join(shared, "agent.sock")); err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if m := mode(shared); m != 0o755 {
		t.Errorf("shared directory changed to %04o", m)
	}

	// Refusals: a directory others can write, a file in the socket's place.
	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(open, 0o1777)
	if _, err := listenUnix(filepath.Join(open, "agent.sock")); err == nil {
		t.Error("listened in a world-writable directory")
	}
	if err := os.WriteFile(filepath.Join(shared, "file.sock"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listenUnix(filepath.Join(shared, "file.sock")); err == nil {
		t.Error("replaced a regular file with the socket")
	}
}
