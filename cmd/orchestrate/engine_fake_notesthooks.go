//go:build !testhooks

package main

import (
	"log/slog"

	"github.com/edgemigrate/orchestrate/config"
	"github.com/edgemigrate/orchestrate/engine"
)

// newTestEngine: production builds have no test engines.
func newTestEngine(config.Config, *slog.Logger) (engine.Engine, error) { return nil, nil }
