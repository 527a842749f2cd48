package forensics

import (
	"archive/tar"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v7/magic"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
	"github.com/edgemigrate/orchestrate/transfer"
)

// TestSnapshotStreamAuthorization: the store host accepts a snapshot
// stream only when a pending upload in the replicated state names it as
// store host and the stream's sender (bound to its SSH key) as holder, and
// a commit only for a record that matches; a forged stream leaves nothing.
func TestSnapshotStreamAuthorization(t *testing.T) {
	w := newWorld(t, "h1", "h2", "h3")
	ctx := context.Background()
	w.hosts["h1"].eng.(*enginetest.Fake).Run("web", "img", 1<<20, nil)
	store := w.hosts["h2"]
	send := func(from, id string) error {
		_, _, err := hostStreamer{w, from}.Stream(ctx, "h2:7922", transfer.StreamHeader{Kind: KindSnapshot, ID: id},
			func(wr io.Writer) error { _, err := wr.Write([]byte("not a real archive")); return err })
		return err
	}
	id := NewID(time.Now())
	// No pending upload at all.
	if err := send("h3", id); err == nil || !strings.Contains(err.Error(), ErrUnauthorized.Error()) {
		t.Fatalf("forged stream: %v", err)
	}
	// Pending from h1 into h2: h3 cannot use it, and h1 cannot send it to h3.
	if err := (*hostView)(w.hosts["h1"]).AcquireLock(ctx, cluster.AcquireLockRequest{Name: uploadLock(id), Holder: "h1", Limit: 1,
		Reason: uploadReason("h2", "c1"), At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := send("h3", id); err == nil || !strings.Contains(err.Error(), "not from h3") {
		t.Fatalf("stream by another member: %v", err)
	}
	other := NewID(time.Now())
	(*hostView)(w.hosts["h1"]).AcquireLock(ctx, cluster.AcquireLockRequest{Name: uploadLock(other), Holder: "h1", Limit: 1, Reason: uploadReason("h3", "c1"), At: time.Now()})
	if err := send("h1", other); err == nil {
		t.Fatal("a stream pending into h3 was accepted by h2")
	}
	// A stream without a known sender.
	if _, _, err := w.Stream(ctx, "h2:7922", transfer.StreamHeader{Kind: KindSnapshot, ID: id}, func(io.Writer) error { return nil }); err == nil {
		t.Fatal("a stream from an unknown sender was accepted")
	}
	// A snapshot handed in as an uploaded spool file needs the same
	// pending upload: a member without one is refused before the spool is
	// touched.
	fctx := transfer.ContextWithSender(ctx, "h3")
	if _, err := store.agent.handleSnapshotFile(fctx, transfer.StreamHeader{Kind: KindSnapshotFile, ID: id,
		Meta: map[string]string{"spool": id + ".tar", "size": "18", "sha256": "x"}}, strings.NewReader("")); err == nil ||
		!strings.Contains(err.Error(), "not from h3") {
		t.Fatalf("forged snapshot file: %v", err)
	}
	if files := ls(t, store.agent.st.dir); len(files) != 0 {
		t.Fatalf("refused streams left files: %v", files)
	}
	// The authorised one is received, but its commit must match the lock.
	if err := send("h1", id); err != nil {
		t.Fatal(err)
	}
	rec := cluster.SnapshotRecord{ID: id, Container: "c2", Host: "h1", StoreHost: "h2", File: id + ".tar", Size: 18, SHA256: "x", At: time.Now()}
	err := w.client("h2").Do(ctx, "POST", "/v1/agent/forensics/commit", CommitRequest{Record: rec}, nil)
	if !errors.Is(err, cluster.ErrInvalid) {
		t.Fatalf("commit of another container than the pending upload's: %v", err)
	}

	// The real path takes and releases the pending upload itself.
	got, err := StoreCheckpoint(ctx, w.client("h1"), CheckpointRequest{Container: "web", LeaveRunning: true, StoreHost: "h2"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := store.agent.pending(got.ID); ok {
		t.Fatal("the pending upload outlived its snapshot")
	}

	// A pending upload whose holder died is released by the store host's
	// prune once it is older than the orphan grace.
	stale := NewID(time.Now())
	(*hostView)(w.hosts["h1"]).AcquireLock(ctx, cluster.AcquireLockRequest{Name: uploadLock(stale), Holder: "h3", Limit: 1,
		Reason: uploadReason("h2", "c3"), At: time.Now().Add(-time.Hour)})
	if _, err := store.agent.prune(ctx, store.agent.cfg.Retention); err != nil {
		t.Fatal(err)
	}
	if _, ok := store.agent.pending(stale); ok {
		t.Fatal("a stale pending upload was kept")
	}
}

// criuArchiveEngine checkpoints into a minimal CRIU archive whose only
// process's memory holds marker, so that stored snapshots can be searched.
type criuArchiveEngine struct {
	Engine
	marker string
}

func (e criuArchiveEngine) Checkpoint(ctx context.Context, id string, w io.Writer, o engine.CheckpointOptions) (engine.Stats, error) {
	img := func(name string, entries ...[]byte) []byte {
		b := binary.LittleEndian.AppendUint32(nil, uint32(magic.LoadMagic().ByName["IMG_COMMON"]))
		b = binary.LittleEndian.AppendUint32(b, uint32(magic.LoadMagic().ByName[name]))
		for _, e := range entries {
			b = binary.LittleEndian.AppendUint32(b, uint32(len(e)))
			b = append(b, e...)
		}
		return b
	}
	m := func(msg proto.Message) []byte { b, _ := proto.Marshal(msg); return b }
	var pe []byte
	pe = protowire.AppendTag(pe, 1, protowire.VarintType)
	pe = protowire.AppendVarint(pe, 0x10000)
	pe = protowire.AppendTag(pe, 2, protowire.VarintType)
	pe = protowire.AppendVarint(pe, 1)
	pe = protowire.AppendTag(pe, 4, protowire.VarintType)
	pe = protowire.AppendVarint(pe, 4)
	page := make([]byte, 4096)
	copy(page[100:], e.marker)
	tw := tar.NewWriter(w)
	for _, f := range []struct {
		name string
		data []byte
	}{
		{"config.dump", []byte(fmt.Sprintf(`{"id":%q,"name":"web"}`, id))},
		{"checkpoint/pstree.img", img("PSTREE", m(&pstree.PstreeEntry{Pid: proto.Uint32(1), Ppid: proto.Uint32(0), Pgid: proto.Uint32(1), Sid: proto.Uint32(1)}))},
		{"checkpoint/pagemap-1.img", img("PAGEMAP", m(&pagemap.PagemapHead{PagesId: proto.Uint32(1)}), pe)},
		{"checkpoint/pages-1.img", page},
	} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(f.data))}); err != nil {
			return engine.Stats{}, err
		}
		tw.Write(f.data)
	}
	return engine.Stats{}, tw.Close()
}

// TestFleetGrep: snapshots stored on two hosts are searched where they are
// stored; matches come back tagged with snapshot, host and process.
func TestFleetGrep(t *testing.T) {
	w := newWorld(t, "h1", "h2", "h3")
	ctx := context.Background()
	w.hosts["h1"].eng.(*enginetest.Fake).Run("web", "img", 1<<20, nil)
	w.hosts["h1"].eng = criuArchiveEngine{Engine: w.hosts["h1"].eng, marker: "FLEET-SECRET-1"}
	var ids []string
	for _, store := range []string{"h2", "h3", "h2"} {
		rec, err := StoreCheckpoint(ctx, w.client("h1"), CheckpointRequest{Container: "web", LeaveRunning: true, StoreHost: store})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rec.ID)
		time.Sleep(2 * time.Millisecond) // distinct times, for the order
	}
	res, err := GrepSnapshots(ctx, w.client("h3"), GrepRequest{Pattern: `FLEET-SECRET-\d`, Regexp: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Searched != 3 || len(res.Matches) != 3 || len(res.HostErrors) != 0 || len(res.Errors) != 0 {
		t.Fatalf("result %+v", res)
	}
	var got []string
	for _, m := range res.Matches {
		if m.Host != "h1" || m.PID != 1 || m.Text != "FLEET-SECRET-1" || m.Address != 0x10000+100 || m.Container != "web" {
			t.Errorf("match %+v", m)
		}
		got = append(got, m.Snapshot+"@"+m.StoreHost)
	}
	want := []string{ids[0] + "@h2", ids[1] + "@h3", ids[2] + "@h2"}
	if !slices.Equal(got, want) {
		t.Fatalf("matches from %v, want %v", got, want)
	}
	if _, err := GrepSnapshots(ctx, w.client("h3"), GrepRequest{Pattern: "(", Regexp: true}); !errors.Is(err, cluster.ErrInvalid) {
		t.Fatalf("a bad regular expression: %v", err)
	}
}
