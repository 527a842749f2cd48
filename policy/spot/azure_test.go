package spot

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/policy"
)

// fakeAzure is an httptest fake of Azure's Scheduled Events endpoint that
// records acknowledgements.
type fakeAzure struct {
	mu     sync.Mutex
	doc    string
	gets   int
	acks   []string // raw POST bodies
	ackErr bool
}

func newFakeAzure(t *testing.T) (*fakeAzure, *httptest.Server) {
	f := &fakeAzure{doc: `{"DocumentIncarnation":0,"Events":[]}`}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeAzure) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/metadata/scheduledevents" || r.URL.Query().Get("api-version") != "2020-07-01" {
		http.NotFound(w, r)
		return
	}
	if r.Header.Get("Metadata") != "true" {
		http.Error(w, `{"error":"Bad request. Required metadata header not specified"}`, http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.Method {
	case http.MethodGet:
		f.gets++
		fmt.Fprint(w, f.doc)
	case http.MethodPost:
		b, _ := io.ReadAll(r.Body)
		if f.ackErr {
			http.Error(w, "bad event id", http.StatusBadRequest)
			return
		}
		f.acks = append(f.acks, string(b))
	default:
		http.Error(w, "method", http.StatusMethodNotAllowed)
	}
}

func (f *fakeAzure) locked(fn func()) { f.mu.Lock(); defer f.mu.Unlock(); fn() }

const azureDocWithEvents = `{"DocumentIncarnation":3,"Events":[
 {"EventId":"A1","EventStatus":"Scheduled","EventType":"Preempt","ResourceType":"VirtualMachine","Resources":["vm1"],"NotBefore":"Fri, 27 Nov 2026 10:00:30 GMT","EventSource":"Platform"},
 {"EventId":"B2","EventStatus":"Started","EventType":"Reboot","ResourceType":"VirtualMachine","Resources":["vm1"],"NotBefore":"","EventSource":"User"},
 {"EventId":"C3","EventStatus":"Scheduled","EventType":"Freeze","ResourceType":"VirtualMachine","Resources":["vm2"],"NotBefore":"Fri, 27 Nov 2026 10:15:00 GMT","EventSource":"Platform"},
 {"EventId":"D4","EventStatus":"Scheduled","EventType":"Redeploy","ResourceType":"VirtualMachine","Resources":["vm1"],"NotBefore":"Fri, 27 Nov 2026 10:20:00 GMT","EventSource":"Platform"}
]}`

func TestAzureEvents(t *testing.T) {
	f, srv := newFakeAzure(t)
	cfg := testConfig(srv.URL)
	cfg.AzureResource = "vm1" // C3 is for another VM of the availability set
	out, _ := startRun(t, NewAzure(cfg))
	none(t, out)
	f.locked(func() { f.doc = azureDocWithEvents })
	got := map[string]policy.Trigger{}
	for range 3 {
		tr := recv(t, out)
		got[tr.EventID] = tr
	}
	if a := got["A1"]; a.Kind != policy.KindSpotTerminate || !a.Deadline.Equal(time.Date(2026, 11, 27, 10, 0, 30, 0, time.UTC)) || a.Source != Azure {
		t.Fatalf("preempt: %+v", a)
	}
	if b := got["B2"]; b.Kind != policy.KindMaintenance || !b.Deadline.IsZero() {
		t.Fatalf("reboot with empty NotBefore: %+v", b)
	}
	if d := got["D4"]; d.Kind != policy.KindMaintenance {
		t.Fatalf("redeploy: %+v", d)
	}
	var before int
	f.locked(func() { before = f.gets })
	waitFor(t, "more polls", func() (ok bool) { f.locked(func() { ok = f.gets >= before+3 }); return ok })
	none(t, out) // neither repeats nor C3
}

func TestAzureMalformed(t *testing.T) {
	for _, doc := range []string{
		`{"DocumentIncarnation":1,"Events":[`,
		`{"DocumentIncarnation":1,"Events":[{"EventId":"X","EventType":"Reboot","NotBefore":"tomorrow"}]}`,
	} {
		f, srv := newFakeAzure(t)
		f.locked(func() { f.doc = doc })
		if _, err := NewAzure(testConfig(srv.URL)).Poll(context.Background()); err == nil {
			t.Errorf("doc %q: want an error", doc)
		}
	}
}

func TestAzureAck(t *testing.T) {
	f, srv := newFakeAzure(t)
	a := NewAzure(testConfig(srv.URL))
	if err := a.Ack(context.Background(), "A1"); err != nil {
		t.Fatal(err)
	}
	f.locked(func() {
		if len(f.acks) != 1 {
			t.Fatalf("acks = %v", f.acks)
		}
		var body struct{ StartRequests []struct{ EventId string } }
		if err := json.Unmarshal([]byte(f.acks[0]), &body); err != nil || len(body.StartRequests) != 1 || body.StartRequests[0].EventId != "A1" {
			t.Fatalf("ack body %q (%v)", f.acks[0], err)
		}
		f.ackErr = true
	})
	if err := a.Ack(context.Background(), "nope"); err == nil {
		t.Fatal("rejected ack: want an error")
	}
}
