// Package clock is the agents' wall clock for timestamps that leave the
// process (records, progress lines, step signatures). Durations are always
// measured with time.Since on one host, never across two hosts' clocks.
//
// Test builds (the testhooks build tag) can run one agent's clock ahead or
// behind by ORCHESTRATE_TEST_CLOCK_OFFSET (a Go duration), as a host whose
// clock drifted would; production builds have no offset.
package clock

import "time"

// Now is the wall clock (with the test offset in testhooks builds). The
// monotonic reading is kept, so durations between two readings are exact.
func Now() time.Time { return time.Now().Add(offset) }

// Offset is the test offset (0 in production builds).
func Offset() time.Duration { return offset }
