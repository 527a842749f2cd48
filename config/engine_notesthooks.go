//go:build !testhooks

package config

// testEngine: production builds have no test engines.
func testEngine(string) bool { return false }
