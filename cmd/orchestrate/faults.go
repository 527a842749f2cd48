//go:build !testhooks

package main

import (
	"log/slog"

	"github.com/edgemigrate/orchestrate/transfer"
)

// testHooks is false in production builds: fault injection is compiled
// out (see faults_testhooks.go).
const testHooks = false

// applyFaults does nothing outside test builds.
func applyFaults(*transfer.ClientConfig, *slog.Logger) error { return nil }
