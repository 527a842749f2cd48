package vmtest

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// TestVMRebootKeepsState reboots a guest for real with policy.reboot.mode
// local: the agent, under systemd, checkpoints a counting container to its
// disk, the guest reboots, systemd starts the agent at boot, and the agent
// restores the container, which counts on with the same memory. The reboot
// lock and the cordon are released afterwards. `make test` runs it.
func TestVMRebootKeepsState(t *testing.T) {
	Require(t, "reboot")
	const port = 23000
	s := Up(t, 1, "policy:\n  reboot:\n    mode: local\n")
	s.Eventually(5*time.Minute, 2*time.Second, "the agent leads its cluster of one", func() error {
		ms, err := s.Members(1)
		if err != nil {
			return err
		}
		if len(ms) != 1 || ms[0].Status != "alive" || ms[0].Role != "leader" {
			return fmt.Errorf("members %+v", ms)
		}
		return nil
	})
	s.MustSSH(1, fmt.Sprintf("export CONTAINERS_CONF=/etc/orchestrate/containers.conf; "+
		"podman load -q -i /var/cache/orchestrate/workload-image.tar >/dev/null && "+
		"podman run -d --name counter --network host %s -mib 8 -listen 0.0.0.0:%d", simhost.WorkloadImage, port))
	var before Report
	s.Eventually(2*time.Minute, time.Second, "the counter answers", func() (err error) {
		before, err = Probe(1, port)
		return err
	})
	bootID := strings.TrimSpace(s.MustSSH(1, "cat /proc/sys/kernel/random/boot_id"))

	start := time.Now()
	// The command returns once the reboot command ran; the connection may
	// go down with the guest first.
	out, err := s.SSHTimeout(1, "orchestrate reboot --local", 10*time.Minute)
	t.Logf("orchestrate reboot --local (%s, %v):\n%s", time.Since(start).Round(time.Second), err, out)
	s.Eventually(10*time.Minute, 5*time.Second, "the guest rebooted", func() error {
		id, err := s.SSHTimeout(1, "cat /proc/sys/kernel/random/boot_id", time.Minute)
		if err != nil {
			return err
		}
		if strings.TrimSpace(id) == bootID {
			return fmt.Errorf("same boot %s", bootID)
		}
		return nil
	})
	booted := time.Now()
	t.Logf("guest back on ssh %s after the reboot command", booted.Sub(start).Round(time.Second))

	var after Report
	s.Eventually(10*time.Minute, 2*time.Second, "the agent restored the counter", func() (err error) {
		after, err = Probe(1, port)
		return err
	})
	t.Logf("counter answering %s after ssh was back, %s after the reboot command", time.Since(booted).Round(time.Second), time.Since(start).Round(time.Second))
	if after.Start != before.Start || after.Checksum != before.Checksum || after.Counter < before.Counter {
		t.Fatalf("after the reboot %+v, before %+v: want the same process and memory, counting on", after, before)
	}
	s.Eventually(time.Minute, time.Second, "the counter counts on", func() error {
		again, err := Probe(1, port)
		if err != nil {
			return err
		}
		if again.Counter <= after.Counter {
			return fmt.Errorf("counter %d, was %d", again.Counter, after.Counter)
		}
		return nil
	})

	// systemd started the agent in this boot, once; it was enabled.
	out = s.MustSSH(1, "systemctl is-enabled orchestrate; systemctl is-active orchestrate; "+
		"journalctl -b -u orchestrate --no-pager -o cat | grep -c '^Started orchestrate' || true")
	if f := strings.Fields(out); len(f) != 3 || f[0] != "enabled" || f[1] != "active" || f[2] != "1" {
		t.Fatalf("after the reboot: is-enabled, is-active, starts this boot: %q", out)
	}
	// The lock and the cordon go once the containers are back.
	s.Eventually(5*time.Minute, 2*time.Second, "reboot lock and cordon released", func() error {
		ms, err := s.Members(1)
		if err != nil {
			return err
		}
		if len(ms) != 1 || ms[0].Cordoned || ms[0].Status != "alive" {
			return fmt.Errorf("members %+v", ms)
		}
		out, err := s.SSHTimeout(1, "curl -sf --unix-socket /run/orchestrate/agent.sock http://agent/v1/locks", time.Minute)
		if err != nil {
			return err
		}
		var locks []struct {
			Name    string         `json:"name"`
			Holders map[string]any `json:"holders"`
		}
		if err := json.Unmarshal([]byte(out), &locks); err != nil {
			return fmt.Errorf("locks %s: %w", out, err)
		}
		for _, l := range locks {
			if len(l.Holders) > 0 {
				return fmt.Errorf("lock %s still held: %v", l.Name, l.Holders)
			}
		}
		return nil
	})
	t.Logf("state kept across a real reboot: counter %d -> %d, checksum %s; whole test after boot %s",
		before.Counter, after.Counter, after.Checksum, time.Since(start).Round(time.Second))
}
