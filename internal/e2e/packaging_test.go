package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// The systemd unit passes `systemd-analyze verify` (with the unit's
// binary path pointed at a freshly built binary).
func TestSystemdUnitVerifies(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	bin := simhost.Binary(t)
	unit, err := os.ReadFile(filepath.Join(simhost.Root(), "scripts", "systemd", "orchestrate.service"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "orchestrate.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/orchestrate", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput()
	// Without a running systemd the tool may warn about the environment;
	// what must not appear is a complaint about this unit.
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "orchestrate.service") {
			t.Errorf("systemd-analyze: %s", l)
		}
	}
	if err != nil && strings.Contains(string(out), "orchestrate.service") {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// The Vagrantfile is valid Vagrant (checked when Vagrant is installed;
// `make setup` installs it from Debian's packages).
func TestVagrantfileValidates(t *testing.T) {
	if _, err := exec.LookPath("vagrant"); err != nil {
		if os.Getenv("ORCHESTRATE_REQUIRE_HOSTS") == "1" {
			t.Fatal("vagrant is not installed (make setup installs it)")
		}
		t.Skip("vagrant is not installed")
	}
	dir := t.TempDir()
	src, err := os.ReadFile(filepath.Join(simhost.Root(), "vagrant", "Vagrantfile"))
	if err != nil {
		t.Fatal(err)
	}
	// Validate a copy, so the check writes no secret into the tree.
	if err := os.WriteFile(filepath.Join(dir, "Vagrantfile"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("vagrant", "validate", "--ignore-provider")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "VAGRANT_HOME="+filepath.Join(dir, ".vagrant.d"), "VAGRANT_CHECKPOINT_DISABLE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("vagrant validate: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "Vagrantfile validated successfully") {
		t.Fatalf("vagrant validate said:\n%s", out)
	}
}
