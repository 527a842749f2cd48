package spot

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/policy"
)

// fakeGCE is an httptest fake of GCE's metadata server, with ETags and
// wait_for_change hanging GETs.
type fakeGCE struct {
	mu      sync.Mutex
	values  map[string]string // key under /computeMetadata/v1/ → value
	gen     map[string]int    // ETag generation per key
	changed chan struct{}     // closed and replaced on every change
	waiting int               // hanging GETs in progress
	plain   int               // immediate GETs answered
	ignore  bool              // answer hanging GETs at once (a broken proxy)
}

func newFakeGCE(t *testing.T) (*fakeGCE, *httptest.Server) {
	f := &fakeGCE{
		values:  map[string]string{gcpPreempted: "FALSE", gcpMaintenance: "NONE"},
		gen:     map[string]int{},
		changed: make(chan struct{}),
	}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeGCE) set(key, v string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.values[key] = v
	f.gen[key]++
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeGCE) locked(fn func()) { f.mu.Lock(); defer f.mu.Unlock(); fn() }

func (f *fakeGCE) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get(gcpFlavorHeader) != gcpFlavor {
		http.Error(w, "missing Metadata-Flavor", http.StatusForbidden)
		return
	}
	w.Header().Set(gcpFlavorHeader, gcpFlavor)
	key := strings.TrimPrefix(r.URL.Path, gcpPrefix)
	if key == "" {
		fmt.Fprint(w, "instance/\nproject/\n")
		return
	}
	f.mu.Lock()
	if _, ok := f.values[key]; !ok {
		f.mu.Unlock()
		http.NotFound(w, r)
		return
	}
	etag := func() string { return key + "-" + strconv.Itoa(f.gen[key]) }
	q := r.URL.Query()
	if q.Get("wait_for_change") == "true" && q.Get("last_etag") == etag() && !f.ignore {
		f.waiting++
		for q.Get("last_etag") == etag() {
			ch := f.changed
			f.mu.Unlock()
			select {
			case <-ch:
			case <-r.Context().Done():
				f.mu.Lock()
				f.waiting--
				f.mu.Unlock()
				return
			}
			f.mu.Lock()
		}
		f.waiting--
	} else {
		f.plain++
	}
	v, tag := f.values[key], etag()
	f.mu.Unlock()
	w.Header().Set("ETag", tag)
	fmt.Fprint(w, v)
}

func gcpTestConfig(url string) Config {
	cfg := testConfig(url)
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	cfg.Now = func() time.Time { return now }
	return cfg
}

func TestGCPPreemptionViaHangingGET(t *testing.T) {
	f, srv := newFakeGCE(t)
	out, _ := startRun(t, NewGCP(gcpTestConfig(srv.URL)))
	waitFor(t, "both hanging GETs", func() (ok bool) {
		f.locked(func() { ok = f.waiting == 2 })
		return ok
	})
	none(t, out)
	f.set(gcpPreempted, "TRUE")
	tr := recv(t, out)
	want := time.Date(2026, 11, 27, 10, 0, 30, 0, time.UTC)
	if tr.Kind != policy.KindSpotTerminate || !tr.Deadline.Equal(want) || tr.Host != "h1" || tr.Source != GCP {
		t.Fatalf("trigger %+v, want spot-terminate due %v", tr, want)
	}
	// Back to waiting on the new ETag, with no duplicate.
	waitFor(t, "hanging GETs again", func() (ok bool) {
		f.locked(func() { ok = f.waiting == 2 })
		return ok
	})
	none(t, out)
}

func TestGCPAlreadyPreemptedAtStart(t *testing.T) {
	f, srv := newFakeGCE(t)
	f.set(gcpPreempted, "TRUE")
	out, _ := startRun(t, NewGCP(gcpTestConfig(srv.URL)))
	if tr := recv(t, out); tr.Kind != policy.KindSpotTerminate {
		t.Fatalf("got %+v", tr)
	}
}

func TestGCPMaintenanceEvents(t *testing.T) {
	f, srv := newFakeGCE(t)
	out, _ := startRun(t, NewGCP(gcpTestConfig(srv.URL)))
	f.set(gcpMaintenance, "MIGRATE_ON_HOST_MAINTENANCE")
	first := recv(t, out)
	if first.Kind != policy.KindMaintenance || !strings.Contains(first.Detail, "MIGRATE_ON_HOST_MAINTENANCE") ||
		!first.Deadline.Equal(time.Date(2026, 11, 27, 10, 1, 0, 0, time.UTC)) {
		t.Fatalf("got %+v", first)
	}
	f.set(gcpMaintenance, "NONE")
	waitFor(t, "the watcher to see NONE", func() (ok bool) {
		f.locked(func() { ok = f.waiting == 2 && f.gen[gcpMaintenance] == 2 })
		return ok
	})
	f.set(gcpMaintenance, "TERMINATE_ON_HOST_MAINTENANCE")
	if tr := recv(t, out); !strings.Contains(tr.Detail, "TERMINATE_ON_HOST_MAINTENANCE") || tr.ID == first.ID {
		t.Fatalf("got %+v", tr)
	}
}

func TestGCPMalformedValueThenRecovers(t *testing.T) {
	f, srv := newFakeGCE(t)
	f.set(gcpPreempted, "MAYBE")
	w := &gcpWatch{g: NewGCP(gcpTestConfig(srv.URL)), key: gcpPreempted, kind: policy.KindSpotTerminate, notice: gcpPreemptNotice}
	if _, err := w.poll(context.Background()); err == nil {
		t.Fatal("want an error for MAYBE")
	}
	out, _ := startRun(t, NewGCP(gcpTestConfig(srv.URL)))
	waitFor(t, "a hanging GET after the bad value", func() (ok bool) {
		f.locked(func() { ok = f.waiting >= 1 })
		return ok
	})
	f.set(gcpPreempted, "TRUE")
	if tr := recv(t, out); tr.Kind != policy.KindSpotTerminate {
		t.Fatalf("got %+v", tr)
	}
}

// A proxy that ignores wait_for_change must not turn the watch into a busy
// loop: requests stay at most one per PollInterval per key.
func TestGCPIgnoredWaitDoesNotSpin(t *testing.T) {
	f, srv := newFakeGCE(t)
	f.locked(func() { f.ignore = true })
	cfg := gcpTestConfig(srv.URL)
	cfg.PollInterval = 50 * time.Millisecond
	start := time.Now()
	_, cancel := startRun(t, NewGCP(cfg))
	waitFor(t, "some polls", func() (ok bool) {
		f.locked(func() { ok = f.plain >= 6 })
		return ok
	})
	cancel()
	elapsed := time.Since(start)
	var n int
	f.locked(func() { n = f.plain })
	if limit := 2 * (int(elapsed/cfg.PollInterval) + 2); n > limit {
		t.Fatalf("%d requests in %v, want at most %d", n, elapsed, limit)
	}
}

func TestGCPDeadServerAndCancel(t *testing.T) {
	// Accepts requests, never answers: the first (immediate) GET times out
	// after RequestTimeout and the watcher keeps retrying until ctx ends.
	var mu sync.Mutex
	hits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	cfg := gcpTestConfig(srv.URL)
	cfg.RequestTimeout = 20 * time.Millisecond
	out, _ := startRun(t, NewGCP(cfg))
	waitFor(t, "retries", func() bool { mu.Lock(); defer mu.Unlock(); return hits >= 6 })
	none(t, out)
}
