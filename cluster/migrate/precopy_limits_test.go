package migrate

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/edgemigrate/orchestrate/internal/safefs"
	"github.com/edgemigrate/orchestrate/transfer"
	"github.com/edgemigrate/orchestrate/transfer/delta"
)

func deltaOf(t *testing.T, data []byte) *bytes.Buffer {
	t.Helper()
	var d bytes.Buffer
	e, err := delta.NewEncoder(&d, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	return &d
}

// A base larger than MaxBaseBytes is refused and leaves no file; a base
// directory somebody else created first is never written; without a
// directory no base is kept.
func TestBaseStoreLimits(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "precopy")
	s := newBaseStore(dir, 1000)
	if _, err := s.receive("m", deltaOf(t, make([]byte, 5000)), nil); !errors.Is(err, transfer.ErrTooLarge) {
		t.Fatalf("oversized base: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("oversized base left %d files", len(ents))
	}
	if _, err := s.receive("m", deltaOf(t, make([]byte, 1000)), nil); err != nil {
		t.Fatalf("base at the limit: %v", err)
	}
	if fi, err := os.Lstat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("base directory: %v, %v", fi.Mode(), err)
	}

	taken := filepath.Join(t.TempDir(), "taken")
	if err := os.Mkdir(taken, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(taken, 65534, 65534); err != nil {
		t.Skipf("chown needs root: %v", err)
	}
	if _, err := newBaseStore(taken, 0).receive("m", deltaOf(t, []byte("x")), nil); !errors.Is(err, safefs.ErrUnsafe) {
		t.Fatalf("base in a directory nobody created first: %v", err)
	}
	if ents, _ := os.ReadDir(taken); len(ents) != 0 {
		t.Fatal("a base was written into somebody else's directory")
	}
	if _, err := newBaseStore("", 0).receive("m", deltaOf(t, []byte("x")), nil); err == nil {
		t.Fatal("a store without a directory kept a base")
	}
}
