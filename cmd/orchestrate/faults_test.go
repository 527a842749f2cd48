package main

import (
	"log/slog"
	"testing"

	"github.com/edgemigrate/orchestrate/transfer"
)

// The fault-injection variable works only in binaries built with the
// testhooks tag; `make build` ignores it.
func TestFaultInjectionOnlyInTestBuilds(t *testing.T) {
	t.Setenv("ORCHESTRATE_FAULT_CORRUPT_STREAM_AFTER", "4096")
	var cc transfer.ClientConfig
	if err := applyFaults(&cc, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	want := int64(0)
	if testHooks {
		want = 4096
	}
	if cc.CorruptAfter != want {
		t.Fatalf("CorruptAfter = %d with testhooks=%v, want %d", cc.CorruptAfter, testHooks, want)
	}
}
