package enginetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/engine"
)

// Workload is a handle on a test workload started by a Harness.
type Workload struct {
	ID   string
	Name string
	Key  string // harness-specific: how Probe finds the workload again
}

// Probe is what a workload says about itself.
type Probe struct {
	Start    string // when the process started: equal before and after a restore
	Counter  uint64 // ticks: larger after a restore, never reset
	Checksum string // of its memory: equal before and after a restore
}

// Harness adapts one engine to the behaviour suite.
type Harness interface {
	Engine() engine.Engine
	// Start starts a running workload of about mib MiB named name.
	Start(t *testing.T, name string, mib int) Workload
	// Probe asks the running workload w (after a restore, the restored one).
	Probe(t *testing.T, w Workload) (Probe, error)
}

// Suite checks the behaviour every engine must share. Each subtest starts
// its own workloads with names prefixed by prefix.
func Suite(t *testing.T, h Harness, prefix string) {
	e := h.Engine()
	ctx := context.Background()
	const mib = 16

	checkpoint := func(t *testing.T, id string, opts engine.CheckpointOptions) []byte {
		t.Helper()
		var buf bytes.Buffer
		st, err := e.Checkpoint(ctx, id, &buf, opts)
		if err != nil {
			t.Fatalf("checkpoint %s: %v", id, err)
		}
		if st.Bytes != int64(buf.Len()) || st.Bytes == 0 {
			t.Fatalf("checkpoint %s: stats say %d bytes, archive has %d", id, st.Bytes, buf.Len())
		}
		return buf.Bytes()
	}
	probe := func(t *testing.T, w Workload) Probe {
		t.Helper()
		p, err := h.Probe(t, w)
		if err != nil {
			t.Fatalf("probe %s: %v", w.Name, err)
		}
		return p
	}
	continued := func(t *testing.T, before, after Probe) {
		t.Helper()
		if after.Start != before.Start {
			t.Fatalf("workload restarted: start %s, was %s", after.Start, before.Start)
		}
		if after.Counter < before.Counter {
			t.Fatalf("counter went back: %d, was %d", after.Counter, before.Counter)
		}
		if after.Checksum != before.Checksum {
			t.Fatalf("memory checksum %s, was %s", after.Checksum, before.Checksum)
		}
	}
	countContainers := func(t *testing.T) int {
		t.Helper()
		list, err := e.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(list)
	}

	t.Run("RestoreUnderNewName", func(t *testing.T) {
		w := h.Start(t, prefix+"new", mib)
		before := probe(t, w)
		archive := checkpoint(t, w.ID, engine.CheckpointOptions{})
		c, err := e.Inspect(ctx, w.ID)
		if err != nil || c.Running {
			t.Fatalf("after checkpoint: running=%v err=%v, want stopped", c.Running, err)
		}
		name := prefix + "new2"
		rc, _, err := e.Restore(ctx, bytes.NewReader(archive), engine.RestoreOptions{Name: name})
		if err != nil {
			t.Fatalf("restore as %s: %v", name, err)
		}
		defer func() { _ = e.Remove(ctx, rc.ID) }()
		if rc.Name != name || !rc.Running || rc.ID == w.ID {
			t.Fatalf("restored %+v, want running %s with a new ID", rc, name)
		}
		continued(t, before, probe(t, Workload{ID: rc.ID, Name: rc.Name, Key: w.Key}))
		if err := e.Remove(ctx, w.ID); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("RestoreUnderOldNameAfterRemove", func(t *testing.T) {
		w := h.Start(t, prefix+"old", mib)
		before := probe(t, w)
		archive := checkpoint(t, w.ID, engine.CheckpointOptions{})
		if err := e.Remove(ctx, w.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Inspect(ctx, w.ID); !errors.Is(err, engine.ErrNotFound) {
			t.Fatalf("inspect removed container: %v, want ErrNotFound", err)
		}
		rc, _, err := e.Restore(ctx, bytes.NewReader(archive), engine.RestoreOptions{})
		if err != nil {
			t.Fatalf("restore: %v", err)
		}
		defer func() { _ = e.Remove(ctx, rc.ID) }()
		if rc.Name != w.Name || rc.ID != w.ID || !rc.Running {
			t.Fatalf("restored %+v, want running %s with ID %s", rc, w.Name, w.ID)
		}
		continued(t, before, probe(t, w))
	})

	t.Run("LeaveRunning", func(t *testing.T) {
		w := h.Start(t, prefix+"lr", mib)
		before := probe(t, w)
		archive := checkpoint(t, w.ID, engine.CheckpointOptions{LeaveRunning: true})
		c, err := e.Inspect(ctx, w.ID)
		if err != nil || !c.Running {
			t.Fatalf("after leave-running checkpoint: running=%v err=%v", c.Running, err)
		}
		// It keeps running: the counter advances past what it was.
		waitFor(t, 10*time.Second, func() error {
			p := probe(t, w)
			if p.Counter <= before.Counter {
				return fmt.Errorf("counter %d not past %d", p.Counter, before.Counter)
			}
			return nil
		})
		// And the snapshot restores to the same memory.
		if err := e.Remove(ctx, w.ID); err != nil {
			t.Fatal(err)
		}
		rc, _, err := e.Restore(ctx, bytes.NewReader(archive), engine.RestoreOptions{})
		if err != nil {
			t.Fatalf("restore snapshot: %v", err)
		}
		defer func() { _ = e.Remove(ctx, rc.ID) }()
		continued(t, before, probe(t, w))
	})

	t.Run("ResumeFromKeptCheckpoint", func(t *testing.T) {
		w := h.Start(t, prefix+"rs", mib)
		defer func() { _ = e.Remove(ctx, w.ID) }()
		before := probe(t, w)
		checkpoint(t, w.ID, engine.CheckpointOptions{Keep: true})
		c, err := e.Inspect(ctx, w.ID)
		if err != nil || c.Running || !c.Checkpointed {
			t.Fatalf("after keep checkpoint: %+v err=%v, want stopped and checkpointed", c, err)
		}
		if err := e.Resume(ctx, w.ID); err != nil {
			t.Fatalf("resume: %v", err)
		}
		continued(t, before, probe(t, w))
		// Resuming a running container changes nothing.
		if err := e.Resume(ctx, w.ID); err != nil {
			t.Fatalf("second resume: %v", err)
		}
	})

	t.Run("UnknownContainer", func(t *testing.T) {
		const ghost = "no-such-container-4711"
		if _, err := e.Checkpoint(ctx, ghost, io.Discard, engine.CheckpointOptions{}); !errors.Is(err, engine.ErrNotFound) {
			t.Fatalf("checkpoint: %v, want ErrNotFound", err)
		}
		if _, err := e.Inspect(ctx, ghost); !errors.Is(err, engine.ErrNotFound) {
			t.Fatalf("inspect: %v, want ErrNotFound", err)
		}
		if err := e.Remove(ctx, ghost); !errors.Is(err, engine.ErrNotFound) {
			t.Fatalf("remove: %v, want ErrNotFound", err)
		}
		if err := e.Resume(ctx, ghost); !errors.Is(err, engine.ErrNotFound) {
			t.Fatalf("resume: %v, want ErrNotFound", err)
		}
	})

	t.Run("BadArchivesLeaveNothing", func(t *testing.T) {
		w := h.Start(t, prefix+"bad", mib)
		archive := checkpoint(t, w.ID, engine.CheckpointOptions{})
		if err := e.Remove(ctx, w.ID); err != nil {
			t.Fatal(err)
		}
		n := countContainers(t)
		corrupt := bytes.Clone(archive)
		for i := 100; i < 160; i++ { // the first tar header's name, mode and checksum
			corrupt[i] ^= 0x5a
		}
		readErr := errors.New("sha256 mismatch (injected)")
		cases := map[string]io.Reader{
			"truncated":       bytes.NewReader(archive[:len(archive)/2]),
			"corrupted":       bytes.NewReader(corrupt),
			"empty":           bytes.NewReader(nil),
			"reader fails":    io.MultiReader(bytes.NewReader(archive[:len(archive)*3/4]), &errReader{readErr}),
			"not an archive":  bytes.NewReader(bytes.Repeat([]byte("orchestrate"), 1000)),
			"header only cut": bytes.NewReader(archive[:700]),
		}
		for name, r := range cases {
			_, _, err := e.Restore(ctx, r, engine.RestoreOptions{})
			if err == nil {
				t.Fatalf("%s: restore succeeded", name)
			}
			if name == "reader fails" && !errors.Is(err, readErr) {
				t.Fatalf("%s: %v, want the reader's error", name, err)
			}
			if name != "reader fails" && !errors.Is(err, engine.ErrBadArchive) {
				t.Fatalf("%s: %v, want ErrBadArchive", name, err)
			}
			if got := countContainers(t); got != n {
				t.Fatalf("%s: %d containers after a failed restore, want %d (error was %v)", name, got, n, err)
			}
			t.Logf("%s: %v", name, err)
		}
	})

	t.Run("Images", func(t *testing.T) {
		w := h.Start(t, prefix+"img", 1)
		defer func() { _ = e.Remove(ctx, w.ID) }()
		c, err := e.Inspect(ctx, w.ID)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := e.HasImage(ctx, c.ImageID); err != nil || !ok {
			t.Fatalf("HasImage(%s) = %v, %v", c.ImageID, ok, err)
		}
		if ok, err := e.HasImage(ctx, "localhost/no-such-image:none"); err != nil || ok {
			t.Fatalf("HasImage(absent) = %v, %v", ok, err)
		}
		var buf bytes.Buffer
		if err := e.ExportImage(ctx, c.ImageID, &buf); err != nil || buf.Len() == 0 {
			t.Fatalf("ExportImage: %d bytes, %v", buf.Len(), err)
		}
		if _, err := e.LoadImage(ctx, &buf); err != nil {
			t.Fatalf("LoadImage: %v", err)
		}
		if err := e.ExportImage(ctx, "localhost/no-such-image:none", io.Discard); !errors.Is(err, engine.ErrNotFound) {
			t.Fatalf("ExportImage(absent): %v, want ErrNotFound", err)
		}
	})

	t.Run("Features", func(t *testing.T) {
		f, err := e.Features(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if f.Engine == "" || f.CRIUVersion == "" || f.Arch == "" {
			t.Fatalf("features %+v: engine, CRIU version and arch must be known", f)
		}
	})
}

type errReader struct{ err error }

func (r *errReader) Read([]byte) (int, error) { return 0, r.err }

func waitFor(t *testing.T, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FakeHarness runs the suite against Fake.
type FakeHarness struct{ F *Fake }

// Engine implements Harness.
func (h FakeHarness) Engine() engine.Engine { return h.F }

// Start implements Harness.
func (h FakeHarness) Start(t *testing.T, name string, mib int) Workload {
	c := h.F.Run(name, "localhost/fake:latest", int64(mib)<<16, nil)
	return Workload{ID: c.ID, Name: c.Name, Key: c.Created.Format(time.RFC3339Nano)}
}

// Probe implements Harness: the fake's "process" is identified by its
// creation time, which its archive carries.
func (h FakeHarness) Probe(t *testing.T, w Workload) (Probe, error) {
	list, _ := h.F.List(context.Background())
	for _, c := range list {
		if !c.Running || c.Created.Format(time.RFC3339Nano) != w.Key {
			continue
		}
		mem, err := h.F.Memory(c.ID)
		if err != nil {
			return Probe{}, err
		}
		sum := sha256.Sum256(mem)
		return Probe{Start: w.Key, Counter: uint64(time.Since(c.Created)), Checksum: hex.EncodeToString(sum[:])}, nil
	}
	return Probe{}, fmt.Errorf("no running fake container started at %s", w.Key)
}
