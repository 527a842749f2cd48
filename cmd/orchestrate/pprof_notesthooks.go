//go:build !testhooks

package main

import "github.com/edgemigrate/orchestrate/cluster"

// registerDebug: production builds serve no profiles.
func registerDebug(*cluster.Cluster) {}
