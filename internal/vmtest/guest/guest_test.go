//go:build remote

// Package guest holds the tests that run inside a QEMU guest (internal/vmtest
// copies this package's test binary there): the engine behaviour suite
// against the guest's own Podman service and Debian's CRIU, and the engine
// pre-copy suite where the guest's kernel tracks dirty pages. Elsewhere they
// skip.
package guest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
	"github.com/edgemigrate/orchestrate/engine/podman"
)

const (
	image        = "localhost/orchestrate-workload:latest"
	imageArchive = "/var/cache/orchestrate/workload-image.tar" // put there by scripts/vm.sh
	socket       = "unix:///run/podman/podman.sock"
)

func requireGuest(t *testing.T) *podman.Engine {
	t.Helper()
	if os.Getenv("ORCHESTRATE_VM_GUEST") != "1" {
		t.Skip("runs inside a VM guest (internal/vmtest sets ORCHESTRATE_VM_GUEST=1)")
	}
	if out, err := podmanCLI("load", "-q", "-i", imageArchive); err != nil {
		t.Fatalf("load the workload image: %v\n%s", err, out)
	}
	e, err := podman.New(context.Background(), podman.Config{Socket: socket})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func podmanCLI(args ...string) (string, error) {
	cmd := exec.Command("podman", args...)
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF=/etc/orchestrate/containers.conf")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// harness runs workloads on the guest's Podman with host networking.
type harness struct{ eng *podman.Engine }

var port atomic.Int32

func init() { port.Store(21000) }

func (h harness) Engine() engine.Engine { return h.eng }

func (h harness) Start(t *testing.T, name string, mib int) enginetest.Workload {
	t.Helper()
	p := port.Add(1)
	out, err := podmanCLI("run", "-d", "--name", name, "--network", "host", image,
		"-mib", fmt.Sprint(mib), "-listen", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		t.Fatalf("podman run %s: %v\n%s", name, err, out)
	}
	w := enginetest.Workload{ID: strings.TrimSpace(out), Name: name, Key: fmt.Sprint(p)}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := h.Probe(t, w); err == nil {
			return w
		} else if time.Now().After(deadline) {
			t.Fatalf("workload %s does not answer: %v", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (h harness) Probe(t *testing.T, w enginetest.Workload) (enginetest.Probe, error) {
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+w.Key, 5*time.Second)
	if err != nil {
		return enginetest.Probe{}, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("\n")); err != nil {
		return enginetest.Probe{}, err
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return enginetest.Probe{}, err
	}
	var rep struct {
		Counter  uint64 `json:"counter"`
		Start    string `json:"start"`
		Checksum string `json:"checksum"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(line), &rep); err != nil {
		return enginetest.Probe{}, err
	}
	return enginetest.Probe{Start: rep.Start, Counter: rep.Counter, Checksum: rep.Checksum}, nil
}

// The behaviour suite every engine passes, here with Debian's CRIU.
func TestGuestEngineSuite(t *testing.T) {
	e := requireGuest(t)
	f, err := e.Features(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("features: %+v", f)
	enginetest.Suite(t, harness{eng: e}, "vm-")
}

// On the guest's kernel, CRIU tracks dirty pages: Features.PreCopy, and
// Podman's pre-checkpoint/with-previous through the engine.
func TestGuestEnginePreCopy(t *testing.T) {
	e := requireGuest(t)
	enginetest.PreCopySuite(t, harness{eng: e}, "vmpre-")
}
