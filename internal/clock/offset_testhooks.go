//go:build testhooks

package clock

import (
	"fmt"
	"os"
	"time"
)

// OffsetEnv runs this process's clock ahead (or behind, negative) by a Go
// duration: a skewed host for the one-clock tests.
const OffsetEnv = "ORCHESTRATE_TEST_CLOCK_OFFSET"

var offset = func() time.Duration {
	v := os.Getenv(OffsetEnv)
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q: %v\n", OffsetEnv, v, err)
		os.Exit(2)
	}
	return d
}()
