package simhost

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// SSHPair lets one host scp to another, as an operator's manual pipeline
// would: an OpenSSH sshd in the target's namespace and a client key. The
// sshd stops when the test ends.
type SSHPair struct {
	Key    string // the client's private key
	Target string // the target's address
}

// NewSSHPair starts an sshd on to's address that accepts a new client key.
func NewSSHPair(t testing.TB, to *Host) SSHPair {
	t.Helper()
	dir := StateDir(to.Name) + "/sshd"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"host_key", "client_key"} {
		_ = os.Remove(filepath.Join(dir, k))
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			t.Fatal(string(out), err)
		}
	}
	pub, _ := os.ReadFile(filepath.Join(dir, "client_key.pub"))
	_ = os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600)
	conf := fmt.Sprintf("Port 22\nListenAddress %s\nHostKey %s/host_key\nAuthorizedKeysFile %s/authorized_keys\nPidFile %s/sshd.pid\nStrictModes no\nPermitRootLogin yes\nPasswordAuthentication no\nUsePAM no\nSubsystem sftp internal-sftp\n",
		to.IP, dir, dir, dir)
	_ = os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(conf), 0o600)
	if out, err := to.Run("/usr/sbin/sshd", "-f", filepath.Join(dir, "sshd_config")); err != nil {
		t.Fatal(out, err)
	}
	t.Cleanup(func() {
		if b, err := os.ReadFile(filepath.Join(dir, "sshd.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				_ = syscall.Kill(pid, syscall.SIGTERM)
			}
		}
	})
	return SSHPair{Key: filepath.Join(dir, "client_key"), Target: to.IP}
}

// Copy copies the file local on from to remote on the pair's target.
func (s SSHPair) Copy(t testing.TB, from *Host, local, remote string) {
	t.Helper()
	from.MustRun("scp", "-q", "-i", s.Key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", local, "root@"+s.Target+":"+remote)
}

// ManualPipeline moves container name from one host to the pair's target
// the way an operator would by hand: `podman container checkpoint --export
// F --compress zstd`, scp, `podman container restore --import F`, then the
// source copy goes.
func (s SSHPair) ManualPipeline(t testing.TB, from, to *Host, name string) {
	t.Helper()
	f := DataDir(from.Name) + "/" + name + ".tar.zst"
	g := DataDir(to.Name) + "/" + name + ".tar.zst"
	from.MustRun("podman", "container", "checkpoint", "--export", f, "--compress", "zstd", name)
	s.Copy(t, from, f, g)
	to.MustRun("podman", "container", "restore", "--import", g)
	from.MustRun("podman", "rm", "-f", "-t", "0", name)
	_ = os.Remove(f)
	_ = os.Remove(g)
}
