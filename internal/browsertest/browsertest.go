// Package browsertest is test support: it starts Debian's headless Chromium
// (scripts/install-test-tools.sh installs it) and hands tests a chromedp
// context for one tab. The browser, its profile directory and its tab belong
// to the test and end with it, also when it fails.
//
// Chromium runs with the flags this kind of machine needs: headless, no
// sandbox (tests run as root), no GPU, and none of the background traffic
// (QUIC, component updates, sync, first-run pages) that a machine without an
// outside network refuses.
package browsertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Path is the Chromium binary: $CHROMIUM, else Debian's /usr/bin/chromium.
func Path() string {
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	return "/usr/bin/chromium"
}

// Require skips the test when Chromium is not installed, unless
// ORCHESTRATE_REQUIRE_HOSTS=1 (set by `make test`), where it fails: CI must
// never pass by skipping the browser tests.
func Require(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath(Path()); err == nil {
		return
	}
	msg := Path() + " is not installed (run scripts/install-test-tools.sh)"
	if os.Getenv("ORCHESTRATE_REQUIRE_HOSTS") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// Tab is one browser tab of a test.
type Tab struct {
	Ctx context.Context // a chromedp context: pass it to chromedp.Do and chromedp.Run

	mu       sync.Mutex
	messages []chromedp.ConsoleMessage
}

// New starts Chromium with a fresh profile under the test's temp dir and
// opens one tab of the given size. Everything stops when the test ends.
// With -short the test is skipped.
func New(t testing.TB, width, height int) *Tab {
	t.Helper()
	if testing.Short() {
		t.Skip("browser test (-short)")
	}
	Require(t)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(Path()),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(width, height),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	tab := &Tab{Ctx: ctx}
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	// The first Run starts the browser; it must not carry a timeout.
	start := time.Now()
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start %s: %v", Path(), err)
	}
	t.Logf("chromium started in %s", time.Since(start).Round(time.Millisecond))
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			tab.mu.Lock()
			tab.messages = append(tab.messages, m)
			tab.mu.Unlock()
		}
	}()
	return tab
}

// Problems returns the exceptions and console errors the pages raised so
// far, such as a script error or a Content-Security-Policy violation.
func (tab *Tab) Problems() []string {
	tab.mu.Lock()
	defer tab.mu.Unlock()
	var out []string
	for _, m := range tab.messages {
		if m.IsException() || m.Type == chromedp.ConsoleError || strings.Contains(strings.ToLower(m.Text), "content security policy") {
			out = append(out, m.String())
		}
	}
	return out
}

// Do runs the actions with a time limit; on failure the error names the
// problems the page raised.
func (tab *Tab) Do(limit time.Duration, actions ...chromedp.Action[chromedp.Void]) error {
	ctx, cancel := context.WithTimeout(tab.Ctx, limit)
	defer cancel()
	err := chromedp.Do(ctx, actions...)
	if err != nil {
		if p := tab.Problems(); len(p) > 0 {
			return fmt.Errorf("%w; the page raised:\n%s", err, strings.Join(p, "\n"))
		}
	}
	return err
}

// Screenshot writes the tab's viewport to path as PNG.
func (tab *Tab) Screenshot(path string) error {
	b, err := chromedp.Run(tab.Ctx, chromedp.CaptureScreenshot())
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
