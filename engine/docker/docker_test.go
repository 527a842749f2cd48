package docker_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/docker"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// harness runs the behaviour suite against a private dockerd in a
// simulated host.
type harness struct {
	host *simhost.Host
	eng  *docker.Engine
}

func newHost(t *testing.T) (*simhost.Host, *docker.Engine) {
	t.Helper()
	simhost.RequireDocker(t)
	h := simhost.New(t)
	sock := h.StartDocker()
	e, err := docker.New(context.Background(), docker.Config{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return h, e
}

func (h *harness) Engine() engine.Engine { return h.eng }

func (h *harness) Start(t *testing.T, name string, mib int) enginetest.Workload {
	port := simhost.Port()
	id := h.host.RunDockerWorkload(simhost.Workload{Name: name, MiB: mib, Port: port})
	return enginetest.Workload{ID: id, Name: name, Key: fmt.Sprint(port)}
}

func (h *harness) Probe(t *testing.T, w enginetest.Workload) (enginetest.Probe, error) {
	var port int
	fmt.Sscan(w.Key, &port)
	rep, err := h.host.Probe(port)
	return enginetest.Probe{Start: rep.Start, Counter: rep.Counter, Checksum: rep.Checksum}, err
}

func TestDockerBehaviour(t *testing.T) {
	h, e := newHost(t)
	enginetest.Suite(t, &harness{host: h, eng: e}, "dk-")
}

// A restore that CRIU fails reports CRIU's own error lines, which dockerd's
// message lacks and whose log the shim deletes. Here the archive lacks the
// writable layer, so the file the process holds open there is missing.
func TestRestoreFailureKeepsCRIULog(t *testing.T) {
	h, e := newHost(t)
	ctx := context.Background()
	port := simhost.Port()
	id := strings.TrimSpace(h.MustDocker("run", "-d", "--name", "held", "--network", "host", "--entrypoint", "/bin/sh", simhost.WorkloadImage,
		"-c", fmt.Sprintf("echo x > /tmp/held; exec 3</tmp/held; exec /bin/workload -mib 4 -listen 127.0.0.1:%d", port)))
	h.WaitReport(port, 30*time.Second)
	var buf bytes.Buffer
	if _, err := e.Checkpoint(ctx, id, &buf, engine.CheckpointOptions{}); err != nil {
		t.Fatal(err)
	}
	// Drop the writable layer from the archive.
	var out bytes.Buffer
	tr, tw := tar.NewReader(&buf), tar.NewWriter(&out)
	n := 0
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(hdr.Name, "rootfs/") {
			continue
		}
		body, _ := io.ReadAll(tr)
		if hdr.Name == "orchestrate-docker.end" {
			body = []byte(fmt.Sprintf(`{"entries":%d}`, n))
			hdr.Size = int64(len(body))
		}
		n++
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	tw.Close()
	_, _, err := e.Restore(ctx, &out, engine.RestoreOptions{Name: "held2"})
	if !errors.Is(err, engine.ErrCRIU) || !strings.Contains(err.Error(), "criu log: ") || !strings.Contains(err.Error(), "Error (") {
		t.Fatalf("restore without the writable layer: %v, want ErrCRIU with CRIU's log lines", err)
	}
	t.Logf("expected CRIU failure: %v", err)
	if st := h.DockerState("held2"); st != "" {
		t.Fatalf("a failed restore left held2 (%s)", st)
	}
}

// Docker's limits are refused before the container freezes.
func TestRefusalsBeforeFreeze(t *testing.T) {
	h, e := newHost(t)
	ctx := context.Background()
	port := simhost.Port()
	id := h.RunDockerWorkload(simhost.Workload{Name: "tcp", MiB: 4, Port: port, SelfConn: true})
	before, _ := h.Probe(port)
	_, err := e.Checkpoint(ctx, id, io.Discard, engine.CheckpointOptions{TCPEstablished: true, Keep: true})
	if !errors.Is(err, docker.ErrUnsupported) || !strings.Contains(err.Error(), "established TCP") {
		t.Fatalf("checkpoint with an established connection: %v", err)
	}
	after, err := h.Probe(port)
	if err != nil || after.Start != before.Start || after.MaxGapMS > 1000 || !after.SelfConn {
		t.Fatalf("after the refusal: %+v %v", after, err)
	}
	// Missing bind-mount source on the restoring host: refused before
	// anything is created there.
	h.MustRun("mkdir", "-p", "/dev/shm/bindsrc")
	bport := simhost.Port()
	bid := h.RunDockerWorkload(simhost.Workload{Name: "bind", MiB: 4, Port: bport}, "-v", "/dev/shm/bindsrc:/bind")
	var buf bytes.Buffer
	if _, err := e.Checkpoint(ctx, bid, &buf, engine.CheckpointOptions{Keep: true}); err != nil {
		t.Fatal(err)
	}
	h.MustRun("rmdir", "/dev/shm/bindsrc")
	n := len(h.MustDocker("ps", "-aq"))
	if _, _, err := e.Restore(ctx, &buf, engine.RestoreOptions{Name: "bind2"}); !errors.Is(err, docker.ErrUnsupported) || !strings.Contains(err.Error(), "/dev/shm/bindsrc") {
		t.Fatalf("restore with a missing bind source: %v", err)
	}
	if m := len(h.MustDocker("ps", "-aq")); m != n {
		t.Fatalf("the refused restore changed the containers")
	}
	// The source rolls back from its kept checkpoint.
	h.MustRun("mkdir", "-p", "/dev/shm/bindsrc")
	if err := e.Resume(ctx, bid); err != nil {
		t.Fatal(err)
	}
	h.WaitReport(bport, 10*time.Second)

	// The restore policy: a container with an added capability is
	// described as such (the preflight), refused by the default policy,
	// and its archive too, before anything is created.
	cport := simhost.Port()
	cid := h.RunDockerWorkload(simhost.Workload{Name: "capped", MiB: 4, Port: cport}, "--cap-add", "SYS_ADMIN")
	spec, err := e.RestoreSpec(ctx, cid)
	if err != nil || len(spec.CapAdd) != 1 || spec.CapAdd[0] != "CAP_SYS_ADMIN" {
		t.Fatalf("RestoreSpec: %+v, %v", spec, err)
	}
	if err := e.CheckRestore(ctx, spec); !errors.Is(err, engine.ErrPolicy) {
		t.Fatalf("CheckRestore: %v", err)
	}
	buf.Reset()
	if _, err := e.Checkpoint(ctx, cid, &buf, engine.CheckpointOptions{Keep: true}); err != nil {
		t.Fatal(err)
	}
	n = len(h.MustDocker("ps", "-aq"))
	if _, _, err := e.Restore(ctx, &buf, engine.RestoreOptions{Name: "capped2"}); !errors.Is(err, engine.ErrPolicy) || !strings.Contains(err.Error(), "CAP_SYS_ADMIN") {
		t.Fatalf("restore of a container with an added capability: %v", err)
	}
	if m := len(h.MustDocker("ps", "-aq")); m != n {
		t.Fatalf("the refused restore changed the containers")
	}
	if err := e.Resume(ctx, cid); err != nil {
		t.Fatal(err)
	}
	h.WaitReport(cport, 10*time.Second)
}
