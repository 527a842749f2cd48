package spot

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/edgemigrate/orchestrate/policy"
)

// GCP metadata paths and notice lengths.
const (
	gcpPrefix        = "/computeMetadata/v1/"
	gcpPreempted     = "instance/preempted"
	gcpMaintenance   = "instance/maintenance-event"
	gcpFlavorHeader  = "Metadata-Flavor"
	gcpFlavor        = "Google"
	gcpPreemptNotice = 30 * time.Second // GCP stops a preempted VM 30s after the notice
	gcpMaintNotice   = 60 * time.Second // and announces host maintenance 60s ahead
)

// GCPWatcher watches GCE's metadata server with hanging GETs
// (wait_for_change with last_etag), one for preemption and one for host
// maintenance. GCP states no deadline, so the watcher stamps one the first
// time it sees a notice (Config.Now + the documented notice length) and
// keeps it, so the trigger ID stays the same.
type GCPWatcher struct{ cfg Config }

var _ policy.Source = (*GCPWatcher)(nil)

// NewGCP returns a watcher; cfg zero fields take DefaultConfig values.
func NewGCP(cfg Config) *GCPWatcher { return &GCPWatcher{cfg: cfg.withDefaults()} }

// Name implements policy.Source.
func (g *GCPWatcher) Name() string { return GCP }

// Run implements policy.Source: both watches run until ctx ends; it
// returns nil then.
func (g *GCPWatcher) Run(ctx context.Context, out chan<- policy.Trigger) error {
	var wg sync.WaitGroup
	for _, w := range []*gcpWatch{
		{g: g, key: gcpPreempted, notice: gcpPreemptNotice, kind: policy.KindSpotTerminate},
		{g: g, key: gcpMaintenance, notice: gcpMaintNotice, kind: policy.KindMaintenance},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			newLoop(GCP+":"+w.key, g.cfg).run(ctx, out, 0, w.poll)
		}()
	}
	wg.Wait()
	return nil
}

// gcpWatch follows one metadata key.
type gcpWatch struct {
	g      *GCPWatcher
	key    string
	kind   string
	notice time.Duration
	etag   string
	last   time.Time // start of the previous request, to refuse to spin
	value  string    // the notice being reported ("" when none)
	since  time.Time // when value was first seen
}

// poll makes one request: immediate the first time (so a notice already
// pending is not missed), then hanging until the value's ETag changes.
func (w *gcpWatch) poll(ctx context.Context) ([]policy.Trigger, error) {
	cfg := w.g.cfg
	// A server that ignores wait_for_change must not make us spin.
	if gap := cfg.PollInterval - time.Since(w.last); !w.last.IsZero() && gap > 0 && !sleep(ctx, gap) {
		return nil, nil
	}
	w.last = time.Now()
	u := cfg.Endpoint + gcpPrefix + w.key
	timeout := cfg.RequestTimeout
	if w.etag != "" {
		q := url.Values{"wait_for_change": {"true"}, "last_etag": {w.etag}, "timeout_sec": {fmt.Sprint(int(cfg.WaitTimeout.Seconds()))}}
		u += "?" + q.Encode()
		timeout += cfg.WaitTimeout
	}
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set(gcpFlavorHeader, gcpFlavor)
	body, hdr, err := do(ctx, cfg.Client, timeout, req)
	if err != nil {
		return nil, fmt.Errorf("gcp %s: %w", w.key, err)
	}
	if hdr != nil && hdr.Get("ETag") != "" {
		w.etag = hdr.Get("ETag")
	} else {
		w.etag = "none" // still wait next time; the server answers at once if it differs
	}
	v := strings.TrimSpace(string(body))
	notice, err := w.parse(v)
	if err != nil {
		return nil, fmt.Errorf("gcp %s: %w", w.key, err)
	}
	if notice == "" {
		w.value = ""
		return nil, nil
	}
	if notice != w.value {
		w.value, w.since = notice, cfg.Now()
	}
	dl := w.since.Add(w.notice)
	return []policy.Trigger{trigger(GCP, w.kind, cfg.Host, dl, w.key+"="+notice, w.key+" "+notice)}, nil
}

// parse returns the notice in v, "" for none.
func (w *gcpWatch) parse(v string) (string, error) {
	if w.key == gcpPreempted {
		switch v {
		case "TRUE":
			return v, nil
		case "FALSE":
			return "", nil
		}
		return "", fmt.Errorf("unexpected value %q, want TRUE or FALSE", v)
	}
	switch {
	case v == "NONE":
		return "", nil
	case v == "":
		return "", errors.New("empty value")
	case strings.Trim(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_") != "":
		return "", fmt.Errorf("unexpected value %q, want NONE or e.g. MIGRATE_ON_HOST_MAINTENANCE", v)
	}
	// MIGRATE_ON_HOST_MAINTENANCE, TERMINATE_ON_HOST_MAINTENANCE, and any
	// later value: all mean the host is about to be disturbed.
	return v, nil
}
