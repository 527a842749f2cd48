//go:build !remote

package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/edgemigrate/orchestrate/config"
	"github.com/edgemigrate/orchestrate/engine"
)

// newEngine fails: this binary was built without the Podman bindings, which
// need cgo-free build tags (see engine_podman.go).
func newEngine(ctx context.Context, c config.Config, logger *slog.Logger) (engine.Engine, error) {
	return nil, fmt.Errorf("%w: engine.type %q: this binary was built without Podman support; rebuild with -tags \"remote exclude_graphdriver_btrfs exclude_graphdriver_devicemapper containers_image_openpgp\" (make build)",
		config.ErrInvalid, c.Engine.Type)
}
