package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// fakeAWS is an IMDSv2 metadata service with a switchable spot notice.
type fakeAWS struct {
	notice atomic.Value // string: JSON of the instance-action, "" for none
}

func (f *fakeAWS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
		fmt.Fprint(w, "token-1")
	case r.Header.Get("X-aws-ec2-metadata-token") != "token-1":
		http.Error(w, "no token", http.StatusUnauthorized)
	case r.URL.Path == "/latest/meta-data/spot/instance-action":
		n, _ := f.notice.Load().(string)
		if n == "" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, n)
	default:
		http.NotFound(w, r)
	}
}

type eventRow struct {
	Time   time.Time `json:"time"`
	Host   string    `json:"host"`
	Kind   string    `json:"kind"`
	ID     string    `json:"id"`
	Action string    `json:"action"`
	Result string    `json:"result"`
}

// A spot notice for host1 from its (fake) AWS metadata service: host1 is
// cordoned and all its containers run elsewhere before the deadline.
func TestE2ESpotNoticeEvacuates(t *testing.T) { spotEvacuation(t, 4, 32) }

// TestBenchSpotEvacuation is the closing-note measurement: 8 x 64 MiB
// against a 30 s deadline (GCP's and Azure's notice time), under make bench.
func TestBenchSpotEvacuation(t *testing.T) {
	if os.Getenv("ORCHESTRATE_BENCH") == "" {
		t.Skip("set ORCHESTRATE_BENCH=1 (make bench)")
	}
	d := spotEvacuation(t, 8, 64)
	fmt.Printf("\nSpot notice to last restore, 8 x 64 MiB, 30 s deadline: %.1f s\n", d.Seconds())
}

func spotEvacuation(t *testing.T, n, mib int) time.Duration {
	aws := &fakeAWS{}
	aws.notice.Store("")
	var srv *httptest.Server
	c := simhost.NewClusterWith(t, 3, func(i int, h *simhost.Host) string {
		if i != 0 {
			return ""
		}
		ln, err := h.ListenInNetns(h.IP + ":8169")
		if err != nil {
			t.Fatal(err)
		}
		srv = httptest.NewUnstartedServer(aws)
		srv.Listener = ln
		srv.Start()
		t.Cleanup(srv.Close)
		return fmt.Sprintf("policy:\n  spot:\n    provider: aws\n    endpoint: http://%s:8169\n    poll_interval: 500ms\n", h.IP)
	})
	h1 := c.Hosts[0]
	ports := map[string]int{}
	reps := map[string]simhost.Report{}
	for k := 0; k < n; k++ {
		name := fmt.Sprintf("s%d", k)
		ports[name] = simhost.Port()
		labels := map[string]string{}
		if k == n-1 {
			labels["orchestrate.priority"] = "10"
		}
		h1.RunWorkload(simhost.Workload{Name: name, MiB: mib, Port: ports[name], Labels: labels})
		reps[name], _ = h1.Probe(ports[name])
	}
	deadline := time.Now().Add(30 * time.Second).UTC().Truncate(time.Second)
	notice := time.Now()
	aws.notice.Store(fmt.Sprintf(`{"action":"terminate","time":%q}`, deadline.Format(time.RFC3339)))

	// Every container leaves host1 before the deadline.
	var last time.Time
	for name, port := range ports {
		for {
			var where *simhost.AgentHost
			for _, h := range c.Hosts[1:] {
				if h.Running(name) {
					where = h
				}
			}
			if where != nil {
				continued(t, where, port, reps[name])
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still not moved at the deadline", name)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	rows := settledMigrations(t, h1, 15*time.Second)
	var first string
	for _, r := range rows {
		if r.Phase != "Done" {
			t.Fatalf("migration %+v", r)
		}
	}
	// The records finish times say when the last restore was confirmed.
	var recs []struct {
		Finished time.Time `json:"finished"`
		Name     string    `json:"name"`
		Started  time.Time `json:"started"`
	}
	if err := h1.JSON(&recs, "migrations"); err != nil {
		t.Fatal(err)
	}
	var firstStart time.Time
	for _, r := range recs {
		if r.Finished.After(last) {
			last = r.Finished
		}
		if firstStart.IsZero() || r.Started.Before(firstStart) {
			firstStart, first = r.Started, r.Name
		}
	}
	if first != fmt.Sprintf("s%d", n-1) {
		t.Errorf("the container with the highest orchestrate.priority should go first, went %s", first)
	}
	if !last.Before(deadline) {
		t.Fatalf("last migration finished at %s, after the deadline %s", last, deadline)
	}
	t.Logf("notice to last restore: %.1fs for %d x %d MiB (deadline 30 s)", last.Sub(notice).Seconds(), n, mib)
	var ms []struct {
		Name     string `json:"name"`
		Cordoned bool   `json:"cordoned"`
	}
	if err := h1.JSON(&ms, "members"); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Name == h1.Name && !m.Cordoned {
			t.Fatal("host1 is not cordoned")
		}
	}
	// The notice is handled once: the event log has one trigger for it.
	var evs []eventRow
	if err := h1.JSON(&evs, "events"); err != nil {
		t.Fatal(err)
	}
	triggers := 0
	for _, e := range evs {
		if strings.HasPrefix(e.Kind, "trigger/spot-terminate") && e.Action == "received" {
			triggers++
		}
	}
	if triggers != 1 {
		t.Fatalf("%d trigger events for one notice: %+v", triggers, evs)
	}
	return last.Sub(notice)
}

// Two hosts with a pending reboot and a lock of 1: each is drained, its
// reboot command runs, and it comes back uncordoned; never both at once.
func TestE2ERebootOneAtATime(t *testing.T) {
	c := simhost.NewClusterWith(t, 3, func(i int, h *simhost.Host) string {
		if i == 0 {
			return ""
		}
		dir := simhost.StateDir(h.Name)
		script := fmt.Sprintf("#!/bin/sh\n# a fake reboot: record it, clear the sentinel, end the agent (the test restarts it)\ndate +%%s.%%N >>%s/reboots\nrm -f %s/reboot-required\nkill -TERM $PPID\n", dir, dir)
		if err := os.WriteFile(dir+"/fake-reboot.sh", []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("policy:\n  reboot:\n    enabled: true\n    sentinel_file: %s/reboot-required\n    command: %s/fake-reboot.sh\n    concurrency: 1\n    check_interval: 500ms\n", dir, dir)
	})
	// The host that never reboots is labelled role=stable and the workloads
	// are constrained to it, so each drain moves its container there in one
	// hop. (A container that hops across three simulated hosts after the
	// first removed its copy cannot be restored: Podman records absolute
	// paths in the first host's storage, and simulated hosts, unlike real
	// ones, keep their storage at different paths.)
	stable := c.Hosts[0]
	stable.StopAgent(syscall.SIGTERM)
	stable.Env = []string{"ORCHESTRATE_NODE_LABELS=role=stable"}
	stable.StartAgent()
	c.WaitFormed(60 * time.Second)
	// A workload on each host that will reboot, so each drain moves something.
	for _, h := range c.Hosts[1:] {
		h.RunWorkload(simhost.Workload{Name: "on-" + h.Name, MiB: 16, Port: simhost.Port(),
			Labels: map[string]string{"orchestrate.constraint.role": "stable"}})
	}
	// Then both hosts learn that a reboot is pending (once the cluster has
	// formed, as after a package upgrade).
	for _, h := range c.Hosts[1:] {
		if err := os.WriteFile(simhost.StateDir(h.Name)+"/reboot-required", nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	both := false
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // watch: never two hosts cordoned for reboot at once
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			var ms []struct {
				Name     string `json:"name"`
				Cordoned bool   `json:"cordoned"`
			}
			if err := c.Hosts[0].JSON(&ms, "members"); err != nil {
				continue
			}
			n := 0
			for _, m := range ms {
				if m.Cordoned {
					n++
				}
			}
			if n > 1 {
				mu.Lock()
				both = true
				mu.Unlock()
			}
		}
	}()
	// Each "reboot" ends its agent; start it again, as the host would.
	for range c.Hosts[1:] {
		var rebooted *simhost.AgentHost
		deadline := time.After(90 * time.Second)
		for rebooted == nil {
			for _, h := range c.Hosts[1:] {
				select {
				case <-h.Exited():
					rebooted = h
				default:
				}
				if rebooted != nil {
					break
				}
			}
			if rebooted == nil {
				select {
				case <-deadline:
					t.Fatal("no host rebooted within 90 s")
				case <-time.After(100 * time.Millisecond):
				}
			}
		}
		t.Logf("%s ran its reboot command; starting its agent again", rebooted.Name)
		rebooted.StartAgent()
	}
	// Both come back uncordoned, the lock is free, and each rebooted once.
	waitUntil(t, 60*time.Second, func() error {
		var ms []struct {
			Name     string `json:"name"`
			Cordoned bool   `json:"cordoned"`
			Status   string `json:"status"`
		}
		if err := c.Hosts[0].JSON(&ms, "members"); err != nil {
			return err
		}
		for _, m := range ms {
			if m.Cordoned || m.Status != "alive" {
				return fmt.Errorf("%s: cordoned=%v status=%s", m.Name, m.Cordoned, m.Status)
			}
		}
		return nil
	})
	close(stop)
	wg.Wait()
	if both {
		t.Fatal("two hosts were cordoned for reboot at the same time")
	}
	for _, h := range c.Hosts[1:] {
		b, err := os.ReadFile(simhost.StateDir(h.Name) + "/reboots")
		if err != nil || strings.Count(string(b), "\n") != 1 {
			t.Fatalf("%s rebooted %q times (%v)", h.Name, b, err)
		}
	}
	var evs []eventRow
	if err := c.Hosts[0].JSON(&evs, "events"); err != nil {
		t.Fatal(err)
	}
	b, _ := json.MarshalIndent(evs, "", " ")
	if !strings.Contains(string(b), "uncordon and release lock") {
		t.Fatalf("events lack the end of the reboot sequence:\n%s", b)
	}
}

func waitUntil(t *testing.T, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
