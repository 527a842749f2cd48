package forensics

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
	"github.com/edgemigrate/orchestrate/internal/linkcut"
	"github.com/edgemigrate/orchestrate/transfer"
)

type resMux struct{}

func (resMux) HandleFunc(string, func(http.ResponseWriter, *http.Request)) {}

// pendingLocks is the replicated state a store host reads to authorise an
// upload: only its locks.
type pendingLocks []cluster.Lock

func (p pendingLocks) Locks() []cluster.Lock { return p }

// The other Cluster methods are not used by the store side of an upload.
func (pendingLocks) Name() string                               { return "h2" }
func (pendingLocks) Members() []cluster.Member                  { return nil }
func (pendingLocks) PeerClient(string) (*cluster.Client, error) { return nil, cluster.ErrNotFound }
func (pendingLocks) PS(context.Context) cluster.PSResult        { return cluster.PSResult{} }
func (pendingLocks) RefreshReports(context.Context, []string, time.Duration) error {
	return nil
}
func (pendingLocks) Snapshots() []cluster.SnapshotRecord             { return nil }
func (pendingLocks) Migrations() []cluster.MigrationRecord           { return nil }
func (pendingLocks) DeleteSnapshots(context.Context, []string) error { return nil }
func (pendingLocks) ReleaseLock(context.Context, string, string) error {
	return nil
}
func (pendingLocks) Snapshot(id string) (cluster.SnapshotRecord, error) {
	return cluster.SnapshotRecord{}, cluster.ErrNotFound
}
func (pendingLocks) PutSnapshot(context.Context, cluster.SnapshotRecord) error { return nil }
func (pendingLocks) IsLeader() bool                                            { return false }
func (pendingLocks) LeaderClient() (*cluster.Client, error)                    { return nil, cluster.ErrNoLeader }
func (pendingLocks) StepClient(string) (*cluster.Client, error)                { return nil, cluster.ErrNotFound }
func (pendingLocks) LeaderStep(h http.HandlerFunc) http.HandlerFunc            { return h }
func (pendingLocks) AcquireLock(context.Context, cluster.AcquireLockRequest) error {
	return nil
}

// A snapshot on its way into another host's store survives a link cut at
// half way: the upload resumes where it stopped, sends only the rest, and
// the store keeps bytes verified end to end.
func TestSnapshotTransferResumesAfterCutAtHalf(t *testing.T) {
	dir := t.TempDir()
	eng := enginetest.NewFake()
	c := eng.Run("web", "img", 48<<20, nil)
	var archive bytes.Buffer
	if _, err := eng.Checkpoint(context.Background(), c.ID, &archive, engine.CheckpointOptions{LeaveRunning: true}); err != nil {
		t.Fatal(err)
	}
	size := int64(archive.Len())
	sum := sha256.Sum256(archive.Bytes())
	pair := linkcut.NewPair(t, filepath.Join(dir, "store"), size/2)
	log := slog.New(slog.DiscardHandler)
	id := NewID(time.Now())
	// The replicated state says the pair's client is sending this snapshot
	// into h2 (the store host accepts nothing else).
	pend := pendingLocks{cluster.Lock{Name: uploadLock(id), Limit: 1, Holders: map[string]cluster.LockHolder{
		linkcut.ClientNode: {Holder: linkcut.ClientNode, Reason: uploadReason("h2", c.ID), AcquiredAt: time.Now()}}}}
	store := NewAgent(Config{Host: "h2", DataDir: filepath.Join(dir, "store"), Logger: log}, nil, nil, pend)
	store.Register(resMux{}, pair.Server)
	src := NewAgent(Config{Host: "h1", DataDir: filepath.Join(dir, "src"), Logger: log}, eng, pair.Client, nil)
	src.SetStage(filepath.Join(dir, "src", "stage"))
	out, err := src.sendSnapshot(context.Background(), pair.Addr, "h2", transfer.StreamHeader{Kind: KindSnapshot, ID: id},
		func(w io.Writer) error { _, err := w.Write(archive.Bytes()); return err })
	if err != nil {
		t.Fatal(err)
	}
	var got received
	if err := json.Unmarshal(out, &got); err != nil || got.Size != size || got.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("store answered %s (%v)", out, err)
	}
	sent := pair.Dialer.Written()
	var after int64
	for _, n := range sent[1:] {
		after += n
	}
	t.Logf("snapshot %d bytes; cut after %d; sent per connection %v", size, size/2, sent)
	if !pair.Dialer.Cut() || len(sent) < 2 {
		t.Fatalf("no cut: %v", sent)
	}
	// The resume starts at most 4 MiB before where the cut left the file.
	if rest := size - size/2 + 4<<20; after > rest+rest/20+(1<<20) {
		t.Fatalf("after the cut %d bytes went for the remaining %d", after, size-size/2)
	}
	b, err := os.ReadFile(store.st.path(id))
	if err != nil || !bytes.Equal(b, archive.Bytes()) {
		t.Fatalf("stored snapshot differs (%v)", err)
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "src", "stage")); len(left) != 0 {
		t.Fatalf("staging keeps %v", left)
	}
}
