package simhost

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// DockerCLI is Debian's docker.io client, which matches its daemon (another
// docker binary may come first on PATH).
const DockerCLI = "/usr/bin/docker"

// DockerAvailable reports why a private dockerd cannot run here, or "".
func DockerAvailable() string {
	if why := Available(); why != "" {
		return why
	}
	for _, bin := range []string{"dockerd", "containerd", DockerCLI} {
		if _, err := exec.LookPath(bin); err != nil {
			return bin + " is not installed (run scripts/install-docker.sh)"
		}
	}
	return ""
}

// RequireDocker is Require for tests that need Docker.
func RequireDocker(t testing.TB) {
	t.Helper()
	Require(t)
	if why := DockerAvailable(); why != "" {
		if os.Getenv("ORCHESTRATE_REQUIRE_HOSTS") == "1" {
			t.Fatalf("docker required: %s", why)
		}
		t.Skip(why)
	}
}

// StartDocker starts the host's private dockerd (simhost.sh start-docker),
// loads the workload image into it from the same archive as every other
// host (so the image ID is the same everywhere), and returns its socket
// URI. `simhost.sh down` (the host's cleanup) removes its containers and
// stops it.
func (h *Host) StartDocker() string {
	h.t.Helper()
	out, err := exec.Command(script("simhost.sh"), "start-docker", h.Name).CombinedOutput()
	if err != nil {
		h.t.Fatalf("simhost start-docker %s: %v\n%s", h.Name, err, out)
	}
	var sock string
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "docker="); ok {
			sock = v
		}
	}
	if sock == "" {
		h.t.Fatalf("simhost start-docker %s: unexpected output:\n%s", h.Name, out)
	}
	h.MustRun(DockerCLI, "-H", sock, "load", "-q", "-i", WorkloadImageArchive(h.t))
	return sock
}

// DockerSocket is the URI of the host's private dockerd.
func (h *Host) DockerSocket() string { return "unix://" + StateDir(h.Name) + "/docker.sock" }

// Docker runs the docker CLI against the host's dockerd.
func (h *Host) Docker(args ...string) (string, error) {
	return h.Run(append([]string{DockerCLI, "-H", h.DockerSocket()}, args...)...)
}

// MustDocker is Docker that fails the test on error.
func (h *Host) MustDocker(args ...string) string {
	h.t.Helper()
	out, err := h.Docker(args...)
	if err != nil {
		h.t.Fatal(err)
	}
	return out
}

// RunDockerWorkload starts the workload in the host's dockerd with host
// networking, plus extra `docker run` flags (mounts), and waits until it
// answers. It returns the container ID.
func (h *Host) RunDockerWorkload(w Workload, extra ...string) string {
	h.t.Helper()
	args := []string{"run", "-d", "--name", w.Name, "--network", "host"}
	for k, v := range w.Labels {
		args = append(args, "--label", k+"="+v)
	}
	args = append(args, extra...)
	args = append(args, WorkloadImage, "-mib", fmt.Sprint(w.MiB), "-listen", fmt.Sprintf("127.0.0.1:%d", w.Port))
	if w.SelfConn {
		args = append(args, "-self-conn")
	}
	args = append(args, w.Args...)
	id := strings.TrimSpace(h.MustDocker(args...))
	h.WaitReport(w.Port, 30*time.Second)
	return id
}

// DockerState is the state of the container named name in the host's
// dockerd ("" when there is none).
func (h *Host) DockerState(name string) string {
	out, err := h.Docker("ps", "-a", "--filter", "name=^/"+name+"$", "--format", "{{.State}}")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// NewClusterEngines is NewCluster with a chosen engine per host: "podman"
// or "docker" (a private dockerd is started in that host and its agent
// uses it).
func NewClusterEngines(t testing.TB, engines ...string) *Cluster {
	t.Helper()
	RequireDocker(t)
	return newCluster(t, engines, nil)
}
