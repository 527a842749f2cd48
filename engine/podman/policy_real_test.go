//go:build remote

package podman_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/podman"
	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// The restore policy on real Podman: the preflight's description of a
// container with an added capability, the refusal, and the restore of its
// archive refused before the service creates anything; a host whose policy
// allows the capability restores it.
func TestRestorePolicyRefuses(t *testing.T) {
	h := simhost.New(t)
	e := newEngine(t, h)
	ctx := context.Background()
	port := simhost.Port()
	id := strings.TrimSpace(h.MustRun("podman", "run", "-d", "--name", "capped", "--network", "host", "--cap-add", "SYS_ADMIN",
		simhost.WorkloadImage, "-mib", "4", "-listen", fmt.Sprintf("127.0.0.1:%d", port)))
	h.WaitReport(port, 30*time.Second)
	spec, err := e.RestoreSpec(ctx, "capped")
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.CapAdd) != 1 || spec.CapAdd[0] != "CAP_SYS_ADMIN" {
		t.Fatalf("RestoreSpec: %+v", spec)
	}
	if err := e.CheckRestore(ctx, spec); !errors.Is(err, engine.ErrPolicy) {
		t.Fatalf("CheckRestore: %v", err)
	}
	var buf bytes.Buffer
	if _, err := e.Checkpoint(ctx, "capped", &buf, engine.CheckpointOptions{Keep: true}); err != nil {
		t.Fatal(err)
	}
	before, err := e.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	archive := buf.Bytes()
	if _, _, err := e.Restore(ctx, bytes.NewReader(archive), engine.RestoreOptions{Name: "capped2"}); !errors.Is(err, engine.ErrPolicy) {
		t.Fatalf("restore under the default policy: %v", err)
	}
	if after, _ := e.List(ctx); len(after) != len(before) {
		t.Fatalf("the refused restore created a container: %d before, %d after", len(before), len(after))
	}
	// A host's own archive (a local reboot's save) is not judged.
	c, _, err := e.Restore(ctx, bytes.NewReader(archive), engine.RestoreOptions{Name: "capped2", Local: true})
	if err != nil {
		t.Fatalf("a local restore: %v", err)
	}
	if err := e.Remove(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	open, err := podman.New(ctx, podman.Config{Socket: h.Socket, Policy: engine.RestorePolicy{AllowedCapabilities: []string{"SYS_ADMIN"}}})
	if err != nil {
		t.Fatal(err)
	}
	c, _, err = open.Restore(ctx, bytes.NewReader(archive), engine.RestoreOptions{Name: "capped2"})
	if err != nil {
		t.Fatalf("restore where the policy allows it: %v", err)
	}
	if err := open.Remove(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	// The source's kept checkpoint still resumes it.
	if err := e.Resume(ctx, id); err != nil {
		t.Fatal(err)
	}
	h.WaitReport(port, 15*time.Second)
}
