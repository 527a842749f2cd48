package console

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/migrate"
	"github.com/edgemigrate/orchestrate/internal/browsertest"
)

// busyFake is a cluster with something on every page: a cordoned host, a
// dead one, migrations done, in flight and rolled back, triggers and
// snapshots.
func busyFake() *fakeAgent {
	f := newFake()
	now := time.Now().UTC()
	gib := int64(1 << 30)
	f.get["/v1/status"] = cluster.Status{Node: "edge-1", Leader: "edge-1", Term: "7"}
	f.get["/v1/members"] = []cluster.Member{
		{Name: "edge-1", Addr: "10.99.0.11:7946", Status: "alive", Role: "leader", Engine: "podman", CRIUVersion: "4.2.1", Kernel: "6.18.0-edge", CPUs: 4, MemoryUsed: 5 * gib, MemoryTotal: 16 * gib, Containers: 2, Since: now.Add(-3 * time.Hour)},
		{Name: "edge-2", Addr: "10.99.0.12:7946", Status: "alive", Role: "follower", Cordoned: true, Engine: "podman", CRIUVersion: "4.2.1", Kernel: "6.18.0-edge", CPUs: 4, MemoryUsed: 14 * gib, MemoryTotal: 16 * gib, Containers: 1, Since: now.Add(-2 * time.Hour)},
		{Name: "edge-3", Addr: "10.99.0.13:7946", Status: "dead", Role: "follower", Engine: "docker", CRIUVersion: "4.2.1", Kernel: "6.18.0-edge", CPUs: 2, MemoryUsed: 2 * gib, MemoryTotal: 8 * gib, Since: now.Add(-4 * time.Minute)},
	}
	f.get["/v1/hosts"] = []cluster.Host{{Name: "edge-2", Cordoned: true, Reason: "kernel upgrade tonight"}}
	f.get["/v1/ps"] = cluster.PSResult{Containers: []cluster.PSEntry{
		{Host: "edge-1", Name: "sensor-gw", ID: "4f1c2a9b8e7d6c5b4a39", Image: "localhost/sensor-gw:1.4", State: "running"},
		{Host: "edge-1", Name: "mqtt", ID: "9a8b7c6d5e4f3a2b1c0d", Image: "docker.io/library/eclipse-mosquitto:2", State: "running"},
		{Host: "edge-2", Name: "video-cache", ID: "1234567890abcdef1234", Image: "localhost/video-cache:0.9", State: "running"},
	}, Errors: []cluster.HostError{{Host: "edge-3", Error: "no API address"}}}
	var recs []cluster.MigrationRecord
	for i := range 18 {
		start := now.Add(-time.Duration(60-i*3) * time.Minute)
		m := cluster.MigrationRecord{ID: fmt.Sprintf("mig-%04x", 0xa100+i), Container: fmt.Sprintf("%012x", 0xc0ffee000+i), From: "edge-1", To: "edge-2",
			Phase: migrate.Done, StartedAt: start, FinishedAt: start.Add(3 * time.Second), Downtime: time.Duration(380+(i*137)%700) * time.Millisecond,
			Bytes: int64(48+(i*29)%200) << 20, Compression: "zstd", Name: []string{"sensor-gw", "mqtt", "video-cache"}[i%3], Method: "direct"}
		m.History = []cluster.PhaseChange{{Phase: migrate.Planned, At: start}, {Phase: migrate.Checkpointing, At: start.Add(200 * time.Millisecond)},
			{Phase: migrate.Transferring, At: start.Add(300 * time.Millisecond)}, {Phase: migrate.Confirming, At: start.Add(2 * time.Second)}, {Phase: migrate.Done, At: start.Add(3 * time.Second)}}
		recs = append(recs, m)
	}
	rb := now.Add(-5 * time.Minute)
	recs = append(recs, cluster.MigrationRecord{ID: "mig-rb01", Container: "1234567890abcdef1234", From: "edge-2", To: "edge-3", Phase: migrate.RolledBack,
		StartedAt: rb, FinishedAt: rb.Add(4 * time.Second), Error: "restore on edge-3: CRIU: Error (criu/cr-restore.c:1510): can't restore tcp socket: the target lacks the network",
		Name:    "video-cache",
		History: []cluster.PhaseChange{{Phase: migrate.Planned, At: rb}, {Phase: migrate.Checkpointing, At: rb.Add(time.Second)}, {Phase: migrate.Transferring, At: rb.Add(2 * time.Second)}, {Phase: migrate.RollingBack, At: rb.Add(3 * time.Second), Note: "target failed"}, {Phase: migrate.RolledBack, At: rb.Add(4 * time.Second)}}})
	fl := now.Add(-4 * time.Second)
	recs = append(recs, cluster.MigrationRecord{ID: "mig-fly1", Container: "9a8b7c6d5e4f3a2b1c0d", From: "edge-1", To: "edge-2", Phase: migrate.Transferring,
		StartedAt: fl, Bytes: 96 << 20, Name: "mqtt",
		History: []cluster.PhaseChange{{Phase: migrate.Planned, At: fl}, {Phase: migrate.Checkpointing, At: fl.Add(time.Second)}, {Phase: migrate.Transferring, At: fl.Add(1500 * time.Millisecond)}}})
	f.get["/v1/migrations"] = recs
	f.get["/v1/events"] = []cluster.Event{
		{ID: "aws-1f2e", Kind: "trigger/spot-terminate", Host: "edge-3", At: now.Add(-9 * time.Minute), Message: "instance-action terminate", Data: map[string]string{"action": "received", "source": "aws", "deadline": now.Add(-7 * time.Minute).Format(time.RFC3339)}},
		{ID: "evac-1f2e", Kind: "evacuate", Host: "edge-3", At: now.Add(-9 * time.Minute), Data: map[string]string{"action": "evacuate", "result": "1 to move, 1 at a time"}},
		{ID: "rb-77", Kind: "reboot", Host: "edge-2", At: now.Add(-30 * time.Minute), Data: map[string]string{"action": "lock", "result": "acquired"}},
		{ID: "snap-ev-1", Kind: "forensics/snapshot", Host: "edge-3", At: now.Add(-9 * time.Minute), Message: "stored snap-8c1d on edge-2", Data: map[string]string{"action": "snapshot", "result": "stored"}},
		{ID: "reb-3", Kind: "rebalance", At: now.Add(-20 * time.Minute), Data: map[string]string{"action": "rebalance", "result": "2 moves"}},
	}
	f.get["/v1/snapshots"] = []cluster.SnapshotRecord{
		{ID: "snap-8c1d", Name: "sensor-gw", Container: "4f1c2a9b8e7d6c5b4a39", Host: "edge-1", StoreHost: "edge-2", At: now.Add(-40 * time.Minute), Size: 71 << 20, SHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", Reason: "before evacuation: spot-terminate", LeaveRunning: true, FrozenTime: 212 * time.Millisecond},
	}
	f.post["/v1/drain"] = migrate.DrainResult{Host: "edge-1", Moves: []migrate.DrainMove{{Name: "sensor-gw", To: "edge-2", Migration: "m1"}, {Name: "mqtt", Skipped: "orchestrate.migrate=false"}}}
	return f
}

// ScreensDir, when set, receives a copy of every screenshot (for a person
// to look at).
func screensDir(t *testing.T) string {
	dir := os.Getenv("ORCHESTRATE_SCREENS_DIR")
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestPagesInChromium draws every page of a busy cluster in a real browser:
// no script error, no CSP violation, the page's rows are there, and the
// drain confirmation sends one drain after a dry run.
func TestPagesInChromium(t *testing.T) {
	tab := browsertest.New(t, 1360, 860)
	f := busyFake()
	s := startConsole(t, f, nil)
	dir, extra := t.TempDir(), screensDir(t)
	if err := tab.Do(10*time.Second, chromedp.Navigate(s.URL()), chromedp.WaitVisible(`tr[data-host="edge-2"]`)); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct{ page, wait string }{
		{"hosts", `tr[data-host="edge-3"]`},
		{"containers", `tr[data-container="video-cache"]`},
		{"migrations", `div[data-flight="mig-fly1"]`},
		{"events", `main[data-page="events"] tbody tr`},
		{"downtime", `.chart svg rect`},
		{"snapshots", `main[data-page="snapshots"] tbody tr`},
	} {
		if err := tab.Do(10*time.Second, chromedp.Click(`a[data-page="`+p.page+`"]`), chromedp.WaitVisible(p.wait)); err != nil {
			t.Fatalf("%s: %v", p.page, err)
		}
		if p.page == "migrations" { // open the rolled back one's history
			if err := tab.Do(10*time.Second, chromedp.Click(`tr[data-migration="mig-rb01"]`), chromedp.WaitVisible(`tr.detail .history`)); err != nil {
				t.Fatal(err)
			}
		}
		shot(t, tab, dir, extra, "fake-"+p.page)
	}
	// Drain from the hosts page: the dialog shows the dry run's plan.
	if err := tab.Do(10*time.Second, chromedp.Click(`a[data-page="hosts"]`),
		chromedp.Click(`tr[data-host="edge-1"] button[data-action="drain"]`),
		chromedp.WaitVisible(`#modal ul.plan`)); err != nil {
		t.Fatal(err)
	}
	shot(t, tab, dir, extra, "fake-drain-confirm")
	if c := f.posted(); len(c) != 1 || !strings.Contains(c[0].Body, `"dry_run":true`) {
		t.Fatalf("before confirming, the agent got %+v; want one dry run", c)
	}
	if err := tab.Do(10*time.Second, chromedp.Click(`#modal-confirm`), chromedp.WaitNotVisible(`#modal`)); err != nil {
		t.Fatal(err)
	}
	c := f.posted()
	var req migrate.DrainRequest
	if len(c) != 2 || c[1].Path != "/v1/drain" || json.Unmarshal([]byte(c[1].Body), &req) != nil || req.Host != "edge-1" || req.DryRun || req.Deadline != 5*time.Minute || req.Parallel != 2 {
		t.Fatalf("after confirming, the agent got %+v", c)
	}
	// Migrate from the containers page: the dialog offers only alive,
	// schedulable targets (edge-2 is cordoned, edge-3 dead); Cancel sends
	// nothing, Confirm sends one migrate.
	migrate := `tr[data-container="sensor-gw"] button[data-action="migrate"]`
	if err := tab.Do(10*time.Second, chromedp.Click(`a[data-page="containers"]`), chromedp.Click(migrate), chromedp.WaitVisible(`#migrate-to`),
		chromedp.Click(`#modal-cancel`), chromedp.WaitNotVisible(`#modal`)); err != nil {
		t.Fatal(err)
	}
	if c := f.posted(); len(c) != 2 {
		t.Fatalf("Cancel sent %+v", c[2:])
	}
	if err := tab.Do(10*time.Second, chromedp.Click(migrate), chromedp.WaitVisible(`#migrate-to`)); err != nil {
		t.Fatal(err)
	}
	octx, cancel := context.WithTimeout(tab.Ctx, 10*time.Second)
	options, err := chromedp.Run(octx, chromedp.Evaluate[[]string](`[...document.querySelectorAll('#migrate-to option')].map(o => o.value)`))
	cancel()
	if err != nil || len(options) != 1 || options[0] != "" {
		t.Fatalf("target options %q (%v), want only the leader's choice", options, err)
	}
	shot(t, tab, dir, extra, "fake-migrate-confirm")
	if err := tab.Do(10*time.Second, chromedp.Click(`#modal-confirm`), chromedp.WaitNotVisible(`#modal`)); err != nil {
		t.Fatal(err)
	}
	if c := f.posted(); len(c) != 3 || c[2].Path != "/v1/migrate" || c[2].Body != `{"container":"sensor-gw"}` {
		t.Fatalf("after confirming the migration, the agent got %+v", c)
	}
	if p := tab.Problems(); len(p) > 0 {
		t.Fatalf("the pages raised:\n%s", strings.Join(p, "\n"))
	}
	// A refusal stays in the dialog, in words (the browser logs the 503).
	f.mu.Lock()
	f.errs["/v1/cordon"] = fmt.Errorf("POST /v1/cordon: %w: no quorum", cluster.ErrNoLeader)
	f.mu.Unlock()
	if err := tab.Do(10*time.Second, chromedp.Click(`a[data-page="hosts"]`), chromedp.Click(`tr[data-host="edge-1"] td.actions button`),
		chromedp.WaitVisible(`#modal-confirm`), chromedp.Click(`#modal-confirm`), chromedp.WaitVisible(`#modal-body .banner.bad`)); err != nil {
		t.Fatal(err)
	}
	ectx, cancel := context.WithTimeout(tab.Ctx, 5*time.Second)
	msg, err := chromedp.Run(ectx, chromedp.Text(`#modal-body .banner.bad`))
	cancel()
	if err != nil || !strings.Contains(msg, "no quorum") {
		t.Errorf("the dialog shows %q (%v), want the agent's error", msg, err)
	}
	if p := tab.Problems(); len(p) != 1 || !strings.Contains(p[0], "503") {
		t.Fatalf("the pages raised:\n%s", strings.Join(p, "\n"))
	}
}

func shot(t *testing.T, tab *browsertest.Tab, dir, extra, name string) {
	t.Helper()
	path := filepath.Join(dir, name+".png")
	if err := tab.Screenshot(path); err != nil {
		t.Fatal(err)
	}
	if extra != "" {
		b, _ := os.ReadFile(path)
		if err := os.WriteFile(filepath.Join(extra, name+".png"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
