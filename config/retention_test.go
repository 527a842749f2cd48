package config

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
)

func TestRetentionAndWitness(t *testing.T) {
	c, err := Load(writeFile(t, base), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.ClusterConfig().Retention; got != cluster.DefaultRetention() {
		t.Errorf("default retention = %+v", got)
	}
	c, err = Load(writeFile(t, base+"  retention: {migrations: 50, events_max_age: 24h}\n"), nil)
	if err == nil {
		t.Fatal("retention outside the cluster section loaded")
	}
	body := strings.Replace(base, "  probe_interval: 250ms\n", "  probe_interval: 250ms\n  retention: {migrations: 50, events_max_age: 24h}\n", 1)
	if c, err = Load(writeFile(t, body), nil); err != nil {
		t.Fatal(err)
	}
	if r := c.ClusterConfig().Retention; r.Migrations != 50 || r.EventsMaxAge != 24*time.Hour || r.Events != 1000 {
		t.Errorf("retention = %+v", r)
	}
	for _, bad := range []string{"{migrations: 0}", "{events: 100001}", "{events_max_age: 0s}"} {
		body := strings.Replace(base, "  probe_interval: 250ms\n", "  probe_interval: 250ms\n  retention: "+bad+"\n", 1)
		if _, err := Load(writeFile(t, body), nil); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "cluster.retention") {
			t.Errorf("retention %s: %v", bad, err)
		}
	}
	// A witness: engine none, no socket needed.
	body = strings.Replace(base, "  type: podman\n  socket: unix:///run/podman/podman.sock\n", "  type: none\n", 1)
	if c, err = Load(writeFile(t, body), nil); err != nil || c.Engine.Type != cluster.EngineNone {
		t.Errorf("witness config: %v", err)
	}
	body = strings.Replace(base, "  type: podman\n", "  type: fake\n", 1)
	if _, err := Load(writeFile(t, body), nil); err == nil && !testEngine("fake") {
		t.Error("the test engine is accepted by a production build")
	}
}
