package e2e

import (
	"os/exec"
	"testing"

	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// go.mod and go.sum are tidy: `go mod tidy` would change nothing (direct
// imports are not marked indirect, nothing is missing or left over).
func TestGoModTidy(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the module cache")
	}
	cmd := exec.Command("go", "mod", "tidy", "-diff")
	cmd.Dir = simhost.Root()
	out, err := cmd.CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Fatalf("go mod tidy -diff: %v\n%s", err, out)
	}
}
