package simhost

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Reboot simulates a reboot of the host (simhost.sh reboot): everything
// running in it dies at once (its agent too), its runtime state goes (the
// mount namespace with /dev/shm and the overlay mounts, /run/runc, libpod's
// and dockerd's runtime directories, IPAM, container interfaces), and its
// Podman service (and dockerd, if it ran) starts again on the same storage.
// Start the agent again with StartAgent.
func (h *AgentHost) Reboot(t testing.TB) {
	t.Helper()
	out, err := exec.Command(script("simhost.sh"), "reboot", h.Name).CombinedOutput()
	if err != nil {
		t.Fatalf("simhost reboot %s: %v\n%s", h.Name, err, out)
	}
	if !strings.Contains(string(out), "socket=") {
		t.Fatalf("simhost reboot %s: unexpected output:\n%s", h.Name, out)
	}
	if h.cmd != nil {
		select {
		case <-h.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("the agent of %s survived the simulated reboot", h.Name)
		}
	}
	h.cmd = nil
}

// NewClusterEnginesWith is NewClusterEngines with extra YAML per host (see
// NewClusterWith).
func NewClusterEnginesWith(t testing.TB, engines []string, extra func(i int, h *Host) string) *Cluster {
	t.Helper()
	for _, e := range engines {
		if e == "docker" {
			RequireDocker(t)
		}
	}
	return newCluster(t, engines, extra)
}
