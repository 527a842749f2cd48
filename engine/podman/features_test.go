//go:build remote

package podman_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/engine/podman"
	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// A feature probe cut short by the caller's deadline (CRIU is slow to start
// on a loaded or emulated host) is not cached as "no CRIU": the next call
// probes again and finds it.
func TestFeaturesProbeCutShortIsRetried(t *testing.T) {
	h := simhost.New(t)
	slow := filepath.Join(t.TempDir(), "criu")
	if err := os.WriteFile(slow, []byte("#!/bin/sh\nsleep 3\nexec criu \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e, err := podman.New(context.Background(), podman.Config{Socket: h.Socket, CRIU: slow})
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	if f, err := e.Features(short); err == nil {
		t.Fatalf("features within 1.5s: %+v, want the deadline's error", f)
	}
	f, err := e.Features(context.Background())
	if err != nil || f.CRIUVersion == "" {
		t.Fatalf("second probe: %+v %v, want CRIU found", f, err)
	}
}
