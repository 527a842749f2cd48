package vmtest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster/migrate"
	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// TestVMCluster boots three guests once and runs, on them: systemd starting
// the agent at boot and the cluster forming; the install path with Debian's
// CRIU; the engine behaviour suite and the engine pre-copy suite inside a
// guest; and engine (CRIU) pre-copy measured against content pre-copy and
// direct streaming, on the same guests, workload and link.
func TestVMCluster(t *testing.T) {
	Require(t, "all")
	s := Up(t, 3, "")

	t.Run("AgentsStartAtBoot", func(t *testing.T) {
		start := time.Now()
		for i := 1; i <= s.N; i++ {
			out := s.MustSSH(i, "systemctl is-enabled orchestrate; systemctl is-active orchestrate; "+
				"journalctl -b -u orchestrate --no-pager -o cat | grep -c '^Started orchestrate' || true")
			if f := strings.Fields(out); len(f) != 3 || f[0] != "enabled" || f[1] != "active" || f[2] != "1" {
				t.Fatalf("vm%d: is-enabled, is-active, starts this boot: %q; want enabled, active, 1", i, out)
			}
		}
		s.Eventually(5*time.Minute, 3*time.Second, "three members alive with a leader", func() error {
			ms, err := s.Members(1)
			if err != nil {
				return err
			}
			alive, leaders := 0, 0
			for _, m := range ms {
				if m.Status == "alive" {
					alive++
				}
				if m.Role == "leader" {
					leaders++
				}
			}
			if alive != 3 || leaders != 1 {
				return fmt.Errorf("members %+v", ms)
			}
			return nil
		})
		t.Logf("agents enabled, started by systemd at boot, cluster of 3 with a leader %s after ssh answered", time.Since(start).Round(time.Second))
	})

	t.Run("DebianCRIU", func(t *testing.T) {
		out := s.MustSSH(2, "command -v criu; dpkg-query -W -f='${Version}\\n' criu; uname -r; "+
			"ls -d /opt/orchestrate/criu /usr/local/sbin/criu 2>/dev/null | wc -l; "+
			"criu check >/dev/null 2>&1 && echo check-ok; criu check --feature mem_dirty_track >/dev/null 2>&1 && echo dirty-ok")
		f := strings.Fields(out)
		if len(f) != 6 || f[0] != "/usr/sbin/criu" || !strings.HasPrefix(f[1], "3.17") || !strings.HasPrefix(f[2], "6.1.") ||
			f[3] != "0" || f[4] != "check-ok" || f[5] != "dirty-ok" {
			t.Fatalf("criu path, Debian version, kernel, private installs, check, dirty tracking: %q", out)
		}
		// install-host.sh again: idempotent, it keeps Debian's CRIU.
		s.Push(2, filepath.Join(simhost.Root(), "scripts", "install-host.sh"), "/root/install-host.sh")
		out = s.MustSSH(2, "bash /root/install-host.sh")
		if !strings.Contains(out, "works on kernel 6.1") || strings.Contains(out, "privately") || strings.Contains(out, "installing") {
			t.Fatalf("install-host.sh on the guest:\n%s", out)
		}
		t.Logf("install-host.sh on the guest:\n%s", out)
	})

	t.Run("EngineSuite", func(t *testing.T) {
		bin := filepath.Join(t.TempDir(), "guest.test")
		build := exec.Command("go", "test", "-c", "-o", bin, "./internal/vmtest/guest")
		build.Dir = simhost.Root()
		build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-tags="+buildTags)
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build the guest tests: %v\n%s", err, out)
		}
		s.Push(2, bin, "/root/guest.test")
		start := time.Now()
		out, err := s.SSHTimeout(2, "cd /root && ORCHESTRATE_VM_GUEST=1 ./guest.test -test.v -test.count=1 -test.timeout 40m", 45*time.Minute)
		t.Logf("guest tests (%s):\n%s", time.Since(start).Round(time.Second), out)
		if err != nil || !strings.Contains(out, "\nPASS") || strings.Contains(out, "--- SKIP") {
			t.Fatalf("engine suites in the guest failed: %v", err)
		}
	})

	t.Run("PreCopy", func(t *testing.T) { precopyMeasure(t, s) })
}

// buildTags are the Makefile's: the Podman bindings need them.
const buildTags = "remote,exclude_graphdriver_btrfs,exclude_graphdriver_devicemapper,containers_image_openpgp"

// migration is one measured move.
type migration struct {
	label    string
	method   string
	reason   string
	downtime time.Duration // the record's: from the freeze to the target's answer, on the source's clock
	total    time.Duration
	rounds   int
	final    int64 // archive bytes sent while frozen
	frozen   time.Duration
	pre      int64 // bytes sent before the freeze
}

// precopyMeasure moves one workload per method across the shaped link and
// back, and reports what each cost. Timings are logged, not asserted; what
// is asserted is which method ran and that the workload went on.
func precopyMeasure(t *testing.T, s *Set) {
	const mib, rewrite, rate = 64, "1", "100mbit"
	s.Shape(rate)
	defer s.Shape("off")
	labels := []string{"criu", "content", "off", "auto"}
	ports := map[string]int{}
	for n, l := range labels {
		ports[l] = 22000 + n
		s.MustSSH(1, fmt.Sprintf("CONTAINERS_CONF=/etc/orchestrate/containers.conf podman load -q -i /var/cache/orchestrate/workload-image.tar >/dev/null && "+
			"CONTAINERS_CONF=/etc/orchestrate/containers.conf podman run -d --name pc-%s --network host --label %s=%s %s -mib %d -rewrite-mibps %s -listen 0.0.0.0:%d",
			l, migrate.LabelPrecopy, l, simhost.WorkloadImage, mib, rewrite, ports[l]))
	}
	// The target needs the image with the same ID: the agent sends it
	// before the first freeze; load it here so each move measures the same.
	s.MustSSH(2, "CONTAINERS_CONF=/etc/orchestrate/containers.conf podman load -q -i /var/cache/orchestrate/workload-image.tar")
	var all []migration
	for _, hop := range [][2]int{{1, 2}, {2, 1}} {
		for _, l := range labels {
			m := moveOnce(t, s, "pc-"+l, ports[l], hop[0], hop[1])
			m.label = l
			all = append(all, m)
			t.Logf("%-8s vm%d->vm%d %-18s downtime %6s, total %6s, rounds %d, sent before the freeze %3d MiB, final round %5d KiB (CRIU frozen %s)",
				l, hop[0], hop[1], m.method, m.downtime.Round(time.Millisecond), m.total.Round(time.Second),
				m.rounds, m.pre>>20, m.final>>10, m.frozen.Round(time.Millisecond))
			switch l {
			case "criu", "auto":
				if m.method != migrate.MethodEngine {
					t.Errorf("%s: method %s (%s), want %s", l, m.method, m.reason, migrate.MethodEngine)
				}
			case "content":
				if m.method != migrate.MethodContent {
					t.Errorf("content: method %s (%s)", m.method, m.reason)
				}
			case "off":
				if m.method != migrate.MethodDirect {
					t.Errorf("off: method %s (%s)", m.method, m.reason)
				}
			}
		}
	}
	t.Logf("the agent's own choice (no label): %s, because: %s", all[3].method, all[3].reason)
	t.Logf("%d MiB workload rewriting %s MiB/s, link %s, medians of %d moves:", mib, rewrite, rate, len(all)/len(labels))
	t.Logf("%-8s %-18s %10s %10s %14s %14s", "label", "method", "downtime", "total", "final round", "CRIU frozen")
	for _, l := range labels {
		var dt, tot, fz []time.Duration
		var fin []int64
		method := ""
		for _, m := range all {
			if m.label == l {
				dt, tot, fz, fin, method = append(dt, m.downtime), append(tot, m.total), append(fz, m.frozen), append(fin, m.final), m.method
			}
		}
		t.Logf("%-8s %-18s %10s %10s %10d KiB %14s", l, method, median(dt).Round(time.Millisecond),
			median(tot).Round(time.Second), medianInt(fin)>>10, median(fz).Round(time.Millisecond))
	}
}

// moveOnce migrates name from guest from to guest to and measures it.
// Nothing talks to the workload while it moves: with host networking, a
// connection to the source guest's address cannot be restored on another
// guest (CRIU: "Can't bind inet socket back"), so the downtime is the
// record's, measured on the source's one clock from the freeze to the
// target's answer.
func moveOnce(t *testing.T, s *Set, name string, port, from, to int) migration {
	t.Helper()
	before, err := Probe(from, port)
	if err != nil {
		t.Fatalf("%s on vm%d: %v", name, from, err)
	}
	start := time.Now()
	// The direct method, whose pre-copy variants this compares (the page
	// path, the default elsewhere, has none of its own on a slow link).
	out, err := s.SSHTimeout(from, fmt.Sprintf("orchestrate migrate %s --to vm%d --method %s -o json", name, to, migrate.MethodDirect), 15*time.Minute)
	total := time.Since(start)
	if err != nil {
		t.Fatalf("migrate %s: %v", name, err)
	}
	var res struct {
		ID         string `json:"id"`
		Phase      string `json:"phase"`
		Method     string `json:"method"`
		DowntimeMS int64  `json:"downtime_ms"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("migrate %s: %v\n%s", name, err, out)
	}
	s.Eventually(time.Minute, 200*time.Millisecond, name+" counts on vm"+fmt.Sprint(to), func() error {
		after, err := Probe(to, port)
		if err != nil {
			return err
		}
		if after.Start != before.Start || after.Counter <= before.Counter {
			return fmt.Errorf("after %+v, before %+v", after, before)
		}
		return nil
	})
	m := migration{method: res.Method, downtime: time.Duration(res.DowntimeMS) * time.Millisecond, total: total}
	if rep := precopyReport(t, s, from, res.ID); rep != nil {
		// The record names the method asked for (direct); its report, the
		// variant that ran.
		m.method, m.reason, m.rounds = rep.Method, rep.Reason, len(rep.Rounds)
		for _, r := range rep.Rounds {
			m.pre += r.WireBytes
		}
		if rep.Final != nil {
			m.final, m.frozen = rep.Final.WireBytes, rep.Final.Frozen
		}
	}
	return m
}

// precopyReport reads a migration's pre-copy report from its record.
func precopyReport(t *testing.T, s *Set, i int, id string) *migrate.PrecopyReport {
	t.Helper()
	out, err := s.SSH(i, "curl -sf --unix-socket /run/orchestrate/agent.sock http://agent/v1/migrations/"+id)
	if err != nil {
		t.Logf("record %s: %v", id, err)
		return nil
	}
	var rec map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &rec); err != nil {
		t.Logf("record %s: %v", id, err)
		return nil
	}
	raw := rec["precopy"]
	var rep migrate.PrecopyReport
	if raw == nil || json.Unmarshal(raw, &rep) != nil {
		t.Logf("record %s has no pre-copy report: %s", id, out)
		return nil
	}
	return &rep
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func medianInt(xs []int64) int64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
