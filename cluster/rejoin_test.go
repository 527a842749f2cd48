package cluster

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// peers.json holds the members last seen alive; a restarted agent joins
// its configured seeds (never itself) and at most maxRejoinPeers of them.
func TestSeedsAfterARestart(t *testing.T) {
	c := &Cluster{cfg: Config{NodeName: "a1", DataDir: t.TempDir(), BindAddr: "10.0.0.1:7946", Join: []string{"10.0.0.1:7946", "10.0.0.2:7946"}},
		logger: slog.New(slog.DiscardHandler), members: map[string]*memberEntry{}}
	if got := c.seeds(); !slices.Equal(got, []string{"10.0.0.2:7946"}) {
		t.Fatalf("seeds without peers.json = %v", got)
	}
	for i, name := range []string{"a1", "a2", "a3", "a4", "a5", "a6"} {
		status := StatusAlive
		if name == "a6" {
			status = StatusDead
		}
		c.members[name] = &memberEntry{name: name, addr: "10.0.0." + string(rune('1'+i)) + ":7946", status: status, since: time.Now()}
	}
	saved := c.savePeers(nil)
	if !slices.Equal(saved, []string{"10.0.0.2:7946", "10.0.0.3:7946", "10.0.0.4:7946", "10.0.0.5:7946"}) {
		t.Fatalf("saved %v", saved)
	}
	if again := c.savePeers(saved); !slices.Equal(again, saved) {
		t.Fatalf("second save %v", again)
	}
	if _, err := os.Stat(filepath.Join(c.cfg.DataDir, peersFile)); err != nil {
		t.Fatal(err)
	}
	got := c.seeds()
	if len(got) != 1+maxRejoinPeers || got[0] != "10.0.0.2:7946" || slices.Contains(got, c.cfg.BindAddr) {
		t.Fatalf("seeds after a restart = %v", got)
	}
	for _, s := range got[1:] {
		if s == "10.0.0.2:7946" || !slices.Contains(saved, s) {
			t.Errorf("seed %s: not a saved peer, or twice", s)
		}
	}
}

// The first peers seen are saved at once, not at the next one-second
// check: an agent killed within a second of its join, whose only seed was
// itself, restarted knowing nobody (seen in CI).
func TestFirstPeersSavedAtOnce(t *testing.T) {
	g1, _ := gossipOnly(t, "p1", "127.0.0.1:0", false)
	g2, _ := gossipOnly(t, "p2", "127.0.0.1:0", false)
	g1.cfg.DataDir, g1.wakePeers = t.TempDir(), make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g1.reconnectLoop(ctx) }()
	defer func() { cancel(); <-done }()
	joined := time.Now()
	if _, err := g2.ml.Join([]string{g1.ml.LocalNode().Address()}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(g1.cfg.DataDir, peersFile)
	waitFor(t, 2*time.Second, "peers.json", func() bool { _, err := os.Stat(path); return err == nil })
	if took := time.Since(joined); took > 500*time.Millisecond {
		t.Fatalf("peers.json written %s after the join", took)
	}
	if got := (&Cluster{cfg: Config{DataDir: g1.cfg.DataDir}}).seeds(); !slices.Equal(got, []string{g2.ml.LocalNode().Address()}) {
		t.Fatalf("seeds after a restart: %v", got)
	}
}
