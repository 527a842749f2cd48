package spot

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/policy"
)

// testConfig is fast: 10ms polls, 100ms requests, 40ms max backoff.
func testConfig(endpoint string) Config {
	cfg := DefaultConfig()
	cfg.Endpoint = endpoint
	cfg.Host = "h1"
	cfg.PollInterval = 10 * time.Millisecond
	cfg.RequestTimeout = 100 * time.Millisecond
	cfg.DetectTimeout = 300 * time.Millisecond
	cfg.MaxBackoff = 40 * time.Millisecond
	cfg.WaitTimeout = 60 * time.Second
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return cfg
}

// waitFor polls cond until it holds or 5s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// recv returns the next trigger or fails after 5s.
func recv(t *testing.T, out <-chan policy.Trigger) policy.Trigger {
	t.Helper()
	select {
	case tr := <-out:
		return tr
	case <-time.After(5 * time.Second):
		t.Fatal("no trigger within 5s")
	}
	return policy.Trigger{}
}

// none fails if a trigger is waiting on out.
func none(t *testing.T, out <-chan policy.Trigger) {
	t.Helper()
	select {
	case tr := <-out:
		t.Fatalf("unexpected trigger %+v", tr)
	default:
	}
}

// startRun runs src until the test ends and checks Run returns nil promptly
// after cancel.
func startRun(t *testing.T, src policy.Source) (chan policy.Trigger, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan policy.Trigger)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v, want nil after cancel", err)
			}
		case <-time.After(2 * time.Second):
			t.Error("Run did not return within 2s of cancel")
		}
	})
	return out, cancel
}
