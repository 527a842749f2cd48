package docker_test

import (
	"context"
	"fmt"
	"testing"

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
