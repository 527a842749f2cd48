package cluster

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// An agent whose raft store is held by another process (an agent on the
// same data_dir, or one still shutting down) says so instead of waiting
// silently for ever.
func TestRaftStoreLockedByAnother(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "raft"), 0o700); err != nil {
		t.Fatal(err)
	}
	other, err := bbolt.Open(filepath.Join(dir, "raft", "raft.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	old := raftStoreLockWait
	raftStoreLockWait = 300 * time.Millisecond
	defer func() { raftStoreLockWait = old }()
	c := &Cluster{cfg: Config{NodeName: "a1", DataDir: dir}, logger: slog.New(slog.DiscardHandler)}
	start := time.Now()
	err = c.startRaft()
	if err == nil || !strings.Contains(err.Error(), "is another orchestrate agent running with this data_dir") {
		t.Fatalf("startRaft on a locked store: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %s", d)
	}
}
