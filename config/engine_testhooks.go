//go:build testhooks

package config

// testEngine accepts the in-memory engine of testhooks builds (the scale
// harness's agents, see internal/scale).
func testEngine(t string) bool { return t == "fake" }
