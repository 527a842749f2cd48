//go:build testhooks

package main

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"

	"github.com/edgemigrate/orchestrate/transfer"
)

// testHooks is true in binaries built with the testhooks tag, which only
// the end-to-end tests build (internal/simhost).
const testHooks = true

// applyFaults reads the fault-injection variables the failure tests set.
// Only binaries built with the testhooks tag have this; `make build` never
// does, so a production agent ignores these variables.
//
//	ORCHESTRATE_FAULT_CORRUPT_STREAM_AFTER=N  flip a bit of the first stream frame after N bytes (transfer.ClientConfig.CorruptAfter)
func applyFaults(ccfg *transfer.ClientConfig, logger *slog.Logger) error {
	logger.Warn("this binary was built with the testhooks tag: fault injection is live; never run it in production")
	if v := os.Getenv("ORCHESTRATE_FAULT_CORRUPT_STREAM_AFTER"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return fmt.Errorf("ORCHESTRATE_FAULT_CORRUPT_STREAM_AFTER=%q: %w", v, err)
		}
		ccfg.CorruptAfter = n
		logger.Warn("fault injection: the first stream after this many bytes will be corrupted", "bytes", n)
	}
	return nil
}
