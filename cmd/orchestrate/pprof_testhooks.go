//go:build testhooks

package main

import (
	"net/http/pprof"

	"github.com/edgemigrate/orchestrate/cluster"
)

// registerDebug adds Go's profiles under /debug/pprof/ to the agent API
// (testhooks builds only: the scale harness profiles its agents).
func registerDebug(c *cluster.Cluster) {
	c.HandleFunc("GET /debug/pprof/", pprof.Index)
	c.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
}
