package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/migrate"
	"github.com/edgemigrate/orchestrate/internal/browsertest"
	"github.com/edgemigrate/orchestrate/internal/simhost"
	"github.com/edgemigrate/orchestrate/policy"
)

// TestE2EConsoleDrain drives the web console in headless Chromium against
// three simulated hosts: it loads the console, drains a host from the page
// (through the confirmation), watches the migrations reach Done on the
// page, and takes a screenshot of every page (under the test's temp dir,
// and in $ORCHESTRATE_SCREENS_DIR when set).
func TestE2EConsoleDrain(t *testing.T) {
	browsertest.Require(t)
	c := simhost.NewCluster(t, 3)
	h1, h3 := c.Hosts[0], c.Hosts[2]
	p1, p2 := simhost.Port(), simhost.Port()
	h1.RunWorkload(simhost.Workload{Name: "web", MiB: 16, Port: p1})
	h1.RunWorkload(simhost.Workload{Name: "cache", MiB: 32, Port: p2})
	before, _ := h1.Probe(p1)
	// A stored snapshot, so that page has a row.
	if out, errOut, code := h1.CLI("checkpoint", "cache", "--leave-running", "--store", "--reason", "console test"); code != 0 {
		t.Fatalf("checkpoint: exit %d\n%s%s", code, out, errOut)
	}

	start := time.Now()
	url := startConsole(t, c.Bin, h3.Socket)
	tab := browsertest.New(t, 1360, 900)
	dir, extra := t.TempDir(), os.Getenv("ORCHESTRATE_SCREENS_DIR")
	shot := func(name string) {
		t.Helper()
		path := filepath.Join(dir, name+".png")
		if err := tab.Screenshot(path); err != nil {
			t.Fatal(err)
		}
		if extra != "" {
			b, _ := os.ReadFile(path)
			if err := os.MkdirAll(extra, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(extra, name+".png"), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	nav := func(page, wait string) {
		t.Helper()
		if err := tab.Do(15*time.Second, chromedp.Click(`a[data-page="`+page+`"]`), chromedp.WaitVisible(wait)); err != nil {
			t.Fatalf("%s page: %v", page, err)
		}
	}

	// Load: every host alive, both containers listed.
	if err := tab.Do(20*time.Second, chromedp.Navigate(url), chromedp.WaitVisible(`tr[data-host="`+h3.Name+`"]`)); err != nil {
		t.Fatal(err)
	}
	shot("hosts")
	nav("containers", `tr[data-container="cache"]`)
	shot("containers")

	// Drain h1 from the hosts page: the dialog shows the plan, then confirms.
	nav("hosts", `tr[data-host="`+h1.Name+`"] button[data-action="drain"]`)
	if err := tab.Do(15*time.Second, chromedp.Click(`tr[data-host="`+h1.Name+`"] button[data-action="drain"]`),
		chromedp.WaitVisible(`#modal ul.plan`)); err != nil {
		t.Fatal(err)
	}
	shot("drain-confirm")
	if err := tab.Do(15*time.Second, chromedp.Click(`#modal-confirm`), chromedp.WaitNotVisible(`#modal`)); err != nil {
		t.Fatal(err)
	}
	drained := time.Now()
	// The migrations page shows them in flight (when the page is quicker
	// than the migration) and then both Done, live.
	nav("migrations", `tr[data-migration]`)
	if err := tab.Do(5*time.Second, chromedp.WaitVisible(`div[data-flight]`)); err == nil {
		shot("migrations-in-flight")
	} else {
		t.Logf("no migration in flight on the page any more (%v): no in-flight screenshot", err)
	}
	done := `document.querySelectorAll('tr[data-migration][data-phase="Done"]').length === 2`
	if err := tab.Do(90*time.Second, chromedp.Poll[chromedp.Void](done, chromedp.WithPollingInterval(100*time.Millisecond))); err != nil {
		t.Fatalf("the page never showed both migrations Done: %v\n%s", err, settledTable(t, h3))
	}
	t.Logf("the page showed both migrations Done %.1fs after the drain was confirmed", time.Since(drained).Seconds())
	shot("migrations")
	// Events: a rebalance from the CLI, and a pending reboot reported the
	// way a host's policy agent reports it.
	if out, errOut, code := h3.CLI("rebalance"); code != 0 {
		t.Fatalf("rebalance: exit %d\n%s%s", code, out, errOut)
	}
	cl, err := cluster.NewClient(h3.Socket, nil)
	if err != nil {
		t.Fatal(err)
	}
	trig := policy.Trigger{ID: "console-test-reboot", Kind: policy.KindRebootPending, Host: c.Hosts[1].Name, Source: "reboot-required", Detail: "/run/reboot-required"}
	if err := cl.Do(context.Background(), "POST", "/v1/policy/trigger", migrate.TriggerRequest{Trigger: trig}, nil); err != nil {
		t.Fatal(err)
	}
	nav("events", `main[data-page="events"] tbody tr`)
	if err := tab.Do(10*time.Second, chromedp.Poll[chromedp.Void](`document.querySelectorAll('main[data-page="events"] tbody tr').length >= 3`)); err != nil {
		t.Errorf("the events page does not show the drain, the rebalance and the reboot trigger: %v", err)
	}
	// The drain confirmed on the hosts page is an event of its own.
	drainRow := `[...document.querySelectorAll('main[data-page="events"] tbody tr')].some((r) => r.cells[2].textContent === "drain" && r.cells[3].textContent === "` + h1.Name + `" && r.cells[5].textContent.includes("2 to move"))`
	if err := tab.Do(10*time.Second, chromedp.Poll[chromedp.Void](drainRow)); err != nil {
		t.Errorf("the events page does not show the drain of %s: %v", h1.Name, err)
	}
	shot("events")
	nav("downtime", `.chart svg rect.bar-done`)
	shot("downtime")
	nav("snapshots", `main[data-page="snapshots"] tbody tr`)
	shot("snapshots")
	nav("hosts", `tr[data-host="`+h1.Name+`"]`)
	tctx, cancel := context.WithTimeout(tab.Ctx, 5*time.Second)
	cordon, err := chromedp.Run(tctx, chromedp.Text(`tr[data-host="`+h1.Name+`"] .pill.warn`))
	cancel()
	if err != nil || !strings.Contains(cordon, "cordoned") && !strings.Contains(cordon, "draining") {
		t.Errorf("h1 not shown cordoned after the drain: %q %v", cordon, err)
	}
	shot("hosts-after-drain")
	if p := tab.Problems(); len(p) > 0 {
		t.Errorf("the pages raised:\n%s", strings.Join(p, "\n"))
	}
	t.Logf("browser part: %.1fs (screenshots in %s)", time.Since(start).Seconds(), dir)

	// What the page said is what happened.
	fromH1 := 0
	for _, r := range settledMigrations(t, h3, 10*time.Second) {
		if r.Phase != "Done" {
			t.Errorf("migration %+v", r)
		}
		if r.From == h1.Name {
			fromH1++
		}
	}
	if fromH1 != 2 {
		t.Errorf("%d migrations off %s, want 2", fromH1, h1.Name)
	}
	for _, name := range []string{"web", "cache"} {
		if h1.Exists(name) {
			t.Errorf("%s still exists on %s after the drain", name, h1.Name)
		}
	}
	for _, h := range c.Hosts[1:] {
		if h.Running("web") {
			continued(t, h, p1, before)
		}
	}
}

// startConsole runs `orchestrate ui` against an agent's socket and returns
// the URL it prints.
func startConsole(t *testing.T, bin, socket string) string {
	t.Helper()
	cmd := exec.Command(bin, "ui", "--agent", socket, "--listen", "127.0.0.1:0", "--poll", "250ms")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(t.TempDir(), "ui.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("--- orchestrate ui log ---\n%s", b)
		}
	})
	urls := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`http://\S+/\?key=[0-9a-f]+`)
		s := bufio.NewScanner(out)
		for s.Scan() {
			if u := re.FindString(s.Text()); u != "" {
				urls <- u
			}
		}
	}()
	select {
	case u := <-urls:
		return u
	case <-time.After(15 * time.Second):
		t.Fatal("orchestrate ui printed no URL")
		return ""
	}
}

func settledTable(t *testing.T, h *simhost.AgentHost) string {
	var b strings.Builder
	for _, r := range migrations(t, h) {
		fmt.Fprintf(&b, "%s %s %s->%s %s %s\n", r.ID, r.Name, r.From, r.To, r.Phase, r.Error)
	}
	return b.String()
}
