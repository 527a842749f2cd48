//go:build !testhooks

package clock

// offset is zero outside test builds.
const offset = 0
