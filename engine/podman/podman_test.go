//go:build remote

package podman_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
	"github.com/edgemigrate/orchestrate/engine/podman"
	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// harness runs the behaviour suite against real Podman on a simulated host.
type harness struct {
	host *simhost.Host
	eng  *podman.Engine
	mu   sync.Mutex
}

func newEngine(t testing.TB, h *simhost.Host) *podman.Engine {
	t.Helper()
	e, err := podman.New(context.Background(), podman.Config{Socket: h.Socket})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (h *harness) Engine() engine.Engine { return h.eng }

func (h *harness) Start(t *testing.T, name string, mib int) enginetest.Workload {
	port := simhost.Port()
	id := h.host.RunWorkload(simhost.Workload{Name: name, MiB: mib, Port: port})
	return enginetest.Workload{ID: id, Name: name, Key: fmt.Sprint(port)}
}

func (h *harness) Probe(t *testing.T, w enginetest.Workload) (enginetest.Probe, error) {
	var port int
	fmt.Sscan(w.Key, &port)
	rep, err := h.host.Probe(port)
	return enginetest.Probe{Start: rep.Start, Counter: rep.Counter, Checksum: rep.Checksum}, err
}

func TestPodmanBehaviour(t *testing.T) {
	h := simhost.New(t)
	enginetest.Suite(t, &harness{host: h, eng: newEngine(t, h)}, "pm-")
}

// A workload holding an established TCP connection cannot be dumped without
// tcp-established: the error carries CRIU's own log line. With it, it moves.
func TestTCPEstablished(t *testing.T) {
	h := simhost.New(t)
	e := newEngine(t, h)
	ctx := context.Background()
	port := simhost.Port()
	id := h.RunWorkload(simhost.Workload{Name: "tcp", MiB: 8, Port: port, SelfConn: true})
	before, err := h.Probe(port)
	if err != nil || !before.SelfConn {
		t.Fatalf("probe: %+v %v", before, err)
	}

	_, err = e.Checkpoint(ctx, id, io.Discard, engine.CheckpointOptions{})
	if !errors.Is(err, engine.ErrCRIU) || !strings.Contains(err.Error(), "criu log: ") || !strings.Contains(err.Error(), "Error (") {
		t.Fatalf("checkpoint without tcp-established: %v, want ErrCRIU with CRIU's log line", err)
	}
	t.Logf("expected CRIU failure: %v", err)
	if c, err := e.Inspect(ctx, id); err != nil || !c.Running {
		t.Fatalf("after a failed dump the container must still run: %+v %v", c, err)
	}

	var buf bytes.Buffer
	if _, err := e.Checkpoint(ctx, id, &buf, engine.CheckpointOptions{TCPEstablished: true}); err != nil {
		t.Fatal(err)
	}
	if err := e.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.Restore(ctx, &buf, engine.RestoreOptions{TCPEstablished: true}); err != nil {
		t.Fatal(err)
	}
	after, err := h.Probe(port)
	if err != nil || after.Start != before.Start || after.Checksum != before.Checksum || !after.SelfConn {
		t.Fatalf("after restore %+v (%v), before %+v", after, err, before)
	}
}

// Checkpoint on one host, send the image and the archive to another, restore
// there: the cross-host move the migration protocol makes.
func TestCrossHost(t *testing.T) {
	h1, h2 := simhost.New(t), simhost.New(t)
	e1, e2 := newEngine(t, h1), newEngine(t, h2)
	ctx := context.Background()
	h2.MustRun("podman", "rmi", "-af")
	port := simhost.Port()
	id := h1.RunWorkload(simhost.Workload{Name: "x", MiB: 32, Port: port})
	before, _ := h1.Probe(port)
	c, err := e1.Inspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := e2.HasImage(ctx, c.ImageID); ok {
		t.Fatal("h2 should lack the image")
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(e1.ExportImage(ctx, c.ImageID, pw)) }()
	if _, err := e2.LoadImage(ctx, pr); err != nil {
		t.Fatal(err)
	}
	if ok, _ := e2.HasImage(ctx, c.ImageID); !ok {
		t.Fatal("after load, h2 lacks the image ID", c.ImageID)
	}

	// Stream the checkpoint straight into the restore.
	pr, pw = io.Pipe()
	var st engine.Stats
	go func() {
		var err error
		st, err = e1.Checkpoint(ctx, id, pw, engine.CheckpointOptions{Keep: true})
		pw.CloseWithError(err)
	}()
	rc, rst, err := e2.Restore(ctx, pr, engine.RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("checkpoint %+v; restore %+v", st, rst)
	if st.FrozenTime == 0 || st.PagesWritten == 0 {
		t.Errorf("CRIU dump statistics missing: %+v", st)
	}
	after := h2.WaitReport(port, 10*time.Second)
	if after.Start != before.Start || after.Checksum != before.Checksum || after.Counter < before.Counter {
		t.Fatalf("on h2 %+v, on h1 before %+v", after, before)
	}
	if rc.ID != id {
		t.Fatalf("restored ID %s, want %s", rc.ID, id)
	}
	// The source still has its stopped, checkpointed copy: the migration
	// removes it only after the target confirms.
	if c, err := e1.Inspect(ctx, id); err != nil || c.Running || !c.Checkpointed {
		t.Fatalf("source copy %+v %v", c, err)
	}
}
