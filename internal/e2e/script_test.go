package e2e

import (
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/edgemigrate/orchestrate/internal/simhost"
)

func runScript(args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(simhost.Root(), "scripts", "simhost.sh"), args...).CombinedOutput()
	return string(out), err
}

func syscallKill(pid int) error { return syscall.Kill(pid, syscall.SIGTERM) }
