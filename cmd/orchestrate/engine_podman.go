//go:build remote

package main

import (
	"context"
	"log/slog"

	"github.com/edgemigrate/orchestrate/config"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/podman"
)

// newEngine connects to the engine the config names.
func newEngine(ctx context.Context, c config.Config, logger *slog.Logger) (engine.Engine, error) {
	return podman.New(ctx, podman.Config{Socket: c.Engine.Socket, Logger: logger})
}
