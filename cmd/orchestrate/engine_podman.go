//go:build remote

package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/edgemigrate/orchestrate/config"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/docker"
	"github.com/edgemigrate/orchestrate/engine/podman"
)

// newEngine connects to the engine the config names (engine.type).
func newEngine(ctx context.Context, c config.Config, logger *slog.Logger) (engine.Engine, error) {
	switch c.Engine.Type {
	case "docker":
		return docker.New(ctx, docker.Config{Socket: c.Engine.Socket, Logger: logger, Policy: c.RestorePolicy(),
			StagingDir: filepath.Join(c.Node.DataDir, "stage", "docker")})
	case "podman":
		return podman.New(ctx, podman.Config{Socket: c.Engine.Socket, Logger: logger, Policy: c.RestorePolicy()})
	}
	return nil, fmt.Errorf("%w: engine.type %q (expected podman or docker)", config.ErrInvalid, c.Engine.Type)
}
