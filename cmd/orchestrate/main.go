// Command orchestrate is the agent (`orchestrate agent`) and the CLI that
// talks to it. Commands are thin: configuration comes from package config,
// everything else from cluster (and the engines); this package only wires.
//
// Exit codes: 0 success, 1 the operation failed, 2 bad usage or bad config
// (including a missing cluster secret).
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/config"
)

// version is set with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	root := newRootCmd()
	err := root.Execute()
	if err == nil {
		return
	}
	fmt.Fprintln(os.Stderr, "orchestrate:", err)
	os.Exit(exitCode(err))
}

// usageError marks bad invocations (exit 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func exitCode(err error) int {
	var ue usageError
	switch {
	case errors.As(err, &ue), errors.Is(err, config.ErrInvalid), errors.Is(err, cluster.ErrNoSecret):
		return 2
	}
	// cobra's own parse errors are plain strings.
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "flag needs an argument", "invalid argument", "accepts ", "requires "} {
		if strings.HasPrefix(msg, p) {
			return 2
		}
	}
	return 1
}
