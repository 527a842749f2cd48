package e2e

import (
	"os/exec"
	"path/filepath"

	"github.com/edgemigrate/orchestrate/internal/simhost"
)

func runScript(args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(simhost.Root(), "scripts", "simhost.sh"), args...).CombinedOutput()
	return string(out), err
}
