package spot

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/policy"
)

// fakeIMDS is an httptest fake of EC2's IMDSv2.
type fakeIMDS struct {
	mu          sync.Mutex
	tokens      map[string]bool
	issued      int
	unauthed    int
	gets        map[string]int
	body        map[string]string // path → answer; absent → 404
	hang        bool              // GETs block until the client gives up
	hanging     int
	tokenTTLSet bool
}

func newFakeIMDS(t *testing.T) (*fakeIMDS, *httptest.Server) {
	f := &fakeIMDS{tokens: map[string]bool{}, gets: map[string]int{}, body: map[string]string{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeIMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	if r.Method == http.MethodPut && r.URL.Path == awsTokenPath {
		if r.Header.Get(awsTokenTTLHeader) == "" {
			f.mu.Unlock()
			http.Error(w, "missing ttl", http.StatusBadRequest)
			return
		}
		f.tokenTTLSet = true
		f.issued++
		tok := fmt.Sprintf("token-%d", f.issued)
		f.tokens[tok] = true
		f.mu.Unlock()
		w.Header().Set(awsTokenTTLHeader, r.Header.Get(awsTokenTTLHeader)) // as IMDS does
		fmt.Fprint(w, tok)
		return
	}
	if r.Method != http.MethodGet {
		f.mu.Unlock()
		http.Error(w, "method", http.StatusMethodNotAllowed)
		return
	}
	if !f.tokens[r.Header.Get(awsTokenHeader)] {
		f.unauthed++
		f.mu.Unlock()
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	f.gets[r.URL.Path]++
	if f.hang {
		f.hanging++
		f.mu.Unlock()
		<-r.Context().Done() // a server that never answers
		return
	}
	body, ok := f.body[r.URL.Path]
	f.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	fmt.Fprint(w, body)
}

func (f *fakeIMDS) set(path, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if body == "" {
		delete(f.body, path)
	} else {
		f.body[path] = body
	}
}

func (f *fakeIMDS) locked(fn func()) { f.mu.Lock(); defer f.mu.Unlock(); fn() }

func TestAWSNothingPending(t *testing.T) {
	f, srv := newFakeIMDS(t)
	ts, err := NewAWS(testConfig(srv.URL)).Poll(context.Background())
	if err != nil || len(ts) != 0 {
		t.Fatalf("Poll = %v, %v; want nothing", ts, err)
	}
	f.locked(func() {
		if f.issued != 1 || !f.tokenTTLSet || f.gets[awsInstanceAction] != 1 || f.gets[awsRebalance] != 1 || f.gets[awsMaintenance] != 1 {
			t.Fatalf("issued %d gets %v", f.issued, f.gets)
		}
	})
}

func TestAWSNotices(t *testing.T) {
	f, srv := newFakeIMDS(t)
	f.set(awsInstanceAction, `{"action":"terminate","time":"2026-11-27T10:02:00Z"}`)
	f.set(awsRebalance, `{"noticeTime":"2026-11-27T09:58:00Z"}`)
	f.set(awsMaintenance, `[
	 {"Code":"system-reboot","Description":"scheduled reboot","EventId":"instance-event-0d59937288b749b32","NotBefore":"21 Jan 2019 09:00:43 GMT","NotAfter":"21 Jan 2019 09:17:23 GMT","State":"active"},
	 {"Code":"instance-stop","EventId":"instance-event-old","NotBefore":"1 Jan 2019 09:00:43 GMT","State":"completed"}]`)
	out, _ := startRun(t, NewAWS(testConfig(srv.URL)))
	got := map[string]policy.Trigger{}
	for range 3 {
		tr := recv(t, out)
		got[tr.Kind] = tr
	}
	st := got[policy.KindSpotTerminate]
	if !st.Deadline.Equal(time.Date(2026, 11, 27, 10, 2, 0, 0, time.UTC)) || st.Host != "h1" || st.Source != AWS || len(st.ID) != 32 {
		t.Fatalf("spot trigger %+v", st)
	}
	if rb := got[policy.KindRebalanceRecommendation]; !rb.Deadline.IsZero() || rb.ID == "" {
		t.Fatalf("rebalance trigger %+v", rb)
	}
	m := got[policy.KindMaintenance]
	if !m.Deadline.Equal(time.Date(2019, 1, 21, 9, 0, 43, 0, time.UTC)) || m.EventID != "instance-event-0d59937288b749b32" {
		t.Fatalf("maintenance trigger %+v", m)
	}
	// Each notice is sent once however often it is polled.
	var before int
	f.locked(func() { before = f.gets[awsInstanceAction] })
	waitFor(t, "three more polls", func() (ok bool) {
		f.locked(func() { ok = f.gets[awsInstanceAction] >= before+3 })
		return ok
	})
	none(t, out)
	// A changed notice (stop instead of terminate) is a new trigger.
	f.set(awsInstanceAction, `{"action":"stop","time":"2026-11-27T10:02:00Z"}`)
	if tr := recv(t, out); tr.Kind != policy.KindSpotStop || tr.ID == st.ID {
		t.Fatalf("after change: %+v", tr)
	}
}

func TestAWSExpiredTokenRefetched(t *testing.T) {
	f, srv := newFakeIMDS(t)
	a := NewAWS(testConfig(srv.URL))
	if _, err := a.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.locked(func() { f.tokens = map[string]bool{} }) // token expired server-side
	f.set(awsInstanceAction, `{"action":"hibernate","time":"2026-11-27T10:02:00Z"}`)
	ts, err := a.Poll(context.Background())
	if err != nil || len(ts) != 1 || ts[0].Kind != policy.KindSpotHibernate {
		t.Fatalf("Poll = %+v, %v", ts, err)
	}
	f.locked(func() {
		if f.issued != 2 || f.unauthed != 1 {
			t.Fatalf("tokens issued %d, 401s %d; want 2 and 1", f.issued, f.unauthed)
		}
	})
}

func TestAWSMalformedThenRecovers(t *testing.T) {
	for _, tc := range []struct{ path, bad, good, kind string }{
		{awsInstanceAction, `{"action":`, `{"action":"terminate","time":"2026-11-27T10:02:00Z"}`, policy.KindSpotTerminate},
		{awsInstanceAction, `{"action":"explode","time":"2026-11-27T10:02:00Z"}`, `{"action":"stop","time":"2026-11-27T10:02:00Z"}`, policy.KindSpotStop},
		{awsInstanceAction, `{"action":"stop","time":"soon"}`, `{"action":"stop","time":"2026-11-27T10:02:00Z"}`, policy.KindSpotStop},
		{awsRebalance, `<html>`, `{"noticeTime":"2026-11-27T09:58:00Z"}`, policy.KindRebalanceRecommendation},
		{awsMaintenance, `{"Code":"x"}`, `[{"Code":"system-reboot","EventId":"e1","NotBefore":"21 Jan 2019 09:00:43 GMT","State":"active"}]`, policy.KindMaintenance},
		{awsMaintenance, `[{"Code":"system-reboot","EventId":"e1","NotBefore":"2019-01-21","State":"active"}]`, `[{"Code":"system-reboot","EventId":"e1","NotBefore":"21 Jan 2019 09:00:43 GMT","State":"active"}]`, policy.KindMaintenance},
	} {
		t.Run(tc.bad, func(t *testing.T) {
			f, srv := newFakeIMDS(t)
			f.set(tc.path, tc.bad)
			a := NewAWS(testConfig(srv.URL))
			if _, err := a.Poll(context.Background()); err == nil {
				t.Fatal("malformed answer: want an error")
			}
			out, _ := startRun(t, a)
			waitFor(t, "polls of the bad answer", func() (ok bool) {
				f.locked(func() { ok = f.gets[tc.path] >= 3 })
				return ok
			})
			none(t, out)
			f.set(tc.path, tc.good)
			if tr := recv(t, out); tr.Kind != tc.kind {
				t.Fatalf("got %+v, want %s", tr, tc.kind)
			}
		})
	}
}

// A server that accepts requests and never answers must not stall the
// watcher past RequestTimeout, and must not stop ctx from ending it.
func TestAWSHangingServer(t *testing.T) {
	f, srv := newFakeIMDS(t)
	f.locked(func() { f.hang = true })
	cfg := testConfig(srv.URL)
	cfg.RequestTimeout = 30 * time.Millisecond
	a := NewAWS(cfg)
	start := time.Now()
	if _, err := a.Poll(context.Background()); err == nil {
		t.Fatal("hanging server: want a timeout error")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Poll took %v with a 30ms request timeout", d)
	}
	out, cancel := startRun(t, a)
	waitFor(t, "the watcher to retry through hangs", func() (ok bool) {
		f.locked(func() { ok = f.hanging >= 5 })
		return ok
	})
	f.set(awsInstanceAction, `{"action":"terminate","time":"2026-11-27T10:02:00Z"}`)
	f.locked(func() { f.hang = false })
	if tr := recv(t, out); tr.Kind != policy.KindSpotTerminate {
		t.Fatalf("got %+v", tr)
	}
	// Hang again and cancel mid-request: startRun's cleanup checks Run
	// returns within 2s.
	f.locked(func() { f.hang = true; f.hanging = 0 })
	waitFor(t, "a hanging request", func() (ok bool) {
		f.locked(func() { ok = f.hanging >= 1 })
		return ok
	})
	cancel()
}

// A watcher of a dead endpoint keeps trying (never returns, never panics)
// until ctx ends; startRun's cleanup checks it then returns nil.
func TestAWSUnreachableKeepsTrying(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // connection refused from now on
	a := NewAWS(testConfig(url))
	if _, err := a.Poll(context.Background()); err == nil {
		t.Fatal("want a connection error")
	}
	out, _ := startRun(t, a)
	none(t, out)
}

func TestBackoffAndJitter(t *testing.T) {
	base, max := 10*time.Millisecond, 75*time.Millisecond
	for failures, want := range map[int]time.Duration{1: 10 * time.Millisecond, 2: 20 * time.Millisecond, 3: 40 * time.Millisecond, 4: 75 * time.Millisecond, 50: 75 * time.Millisecond} {
		if got := backoff(base, max, failures); got != want {
			t.Errorf("backoff(%d) = %v, want %v", failures, got, want)
		}
	}
	for range 1000 {
		if j := jitter(time.Second); j > time.Second || j < 800*time.Millisecond {
			t.Fatalf("jitter(1s) = %v, want within [0.8s, 1s]", j)
		}
	}
}
