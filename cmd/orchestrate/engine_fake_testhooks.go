//go:build testhooks

package main

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"

	"github.com/edgemigrate/orchestrate/config"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
)

// newTestEngine returns the in-memory engine for engine.type fake (testhooks
// builds only; the scale harness, internal/scale, runs its agents with it).
// It starts with ORCHESTRATE_FAKE_CONTAINERS containers named
// <node>-c000..., each reporting ORCHESTRATE_FAKE_MEMORY bytes of memory
// (default 64 MiB) and carrying 4 KiB in its checkpoints. Migrations
// through it are real: checkpoint, SSH stream, restore.
func newTestEngine(cfg config.Config, logger *slog.Logger) (engine.Engine, error) {
	if cfg.Engine.Type != "fake" {
		return nil, nil
	}
	n, err := envInt("ORCHESTRATE_FAKE_CONTAINERS", 0)
	if err != nil {
		return nil, err
	}
	mem, err := envInt("ORCHESTRATE_FAKE_MEMORY", 64<<20)
	if err != nil {
		return nil, err
	}
	f := enginetest.NewFake()
	for i := range n {
		f.RunReported(fmt.Sprintf("%s-c%03d", cfg.Node.Name, i), "registry.example/edge/app:1", int64(mem), 4<<10, map[string]string{"app": "scale"})
	}
	logger.Warn("test build: in-memory engine", "containers", n, "memory_each", mem)
	return f, nil
}

func envInt(name string, def int) (int, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%w: %s=%q: expected a whole number", config.ErrInvalid, name, v)
	}
	return n, nil
}
