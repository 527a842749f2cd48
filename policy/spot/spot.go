// Package spot watches cloud metadata services for notices that a host will
// go away (spot reclaim, preemption, scheduled maintenance) and turns each
// into a normalised policy.Trigger. One file per provider (aws.go, gcp.go,
// azure.go); each watcher is a policy.Source that runs on the affected host
// and sends each distinct notice once on the caller's channel, where the
// leader dedups across hosts by Trigger.ID and drains the host.
//
// Failure behaviour: a watcher never gives up and never panics. Failed or
// malformed answers are logged and retried with capped exponential backoff
// plus jitter; every request has a timeout (except GCP's hanging
// wait_for_change, which is bounded by its own timeout_sec and by ctx).
package spot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"time"

	"github.com/edgemigrate/orchestrate/policy"
)

// Providers, as spelled in spot.provider.
const (
	Auto  = "auto"
	AWS   = "aws"
	GCP   = "gcp"
	Azure = "azure"
	None  = "none"
)

// DefaultEndpoint is the link-local metadata address all three clouds answer on.
const DefaultEndpoint = "http://169.254.169.254"

// ErrNoProvider is returned by Open when spot.provider is none, or auto
// found no metadata service: the caller runs without a spot watcher.
var ErrNoProvider = errors.New("no cloud metadata service")

// Config holds the spot.* settings plus wiring.
type Config struct {
	// Provider (spot.provider): auto, aws, gcp, azure or none.
	Provider string
	// Endpoint (spot.endpoint): base URL of the metadata service, for tests
	// and proxies. Empty means DefaultEndpoint.
	Endpoint string
	// PollInterval (spot.poll_interval): time between polls when healthy,
	// jittered down by up to 20%. At most 2s: AWS gives two minutes' notice.
	PollInterval time.Duration
	// RequestTimeout bounds each request (GCP's hanging GET gets
	// WaitTimeout on top).
	RequestTimeout time.Duration
	// DetectTimeout bounds auto-detection as a whole.
	DetectTimeout time.Duration
	// MaxBackoff caps the wait after repeated errors.
	MaxBackoff time.Duration
	// WaitTimeout is GCP's server-side timeout_sec for wait_for_change.
	WaitTimeout time.Duration
	// Host is this host's orchestrate name, stamped into triggers.
	Host string
	// AzureResource, when set, keeps only Azure events whose Resources
	// include it (scheduled events list every VM of an availability set).
	AzureResource string
	// Client defaults to a shared client that ignores proxy variables.
	// Per-request timeouts come from the context, not Client.Timeout.
	Client *http.Client
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now defaults to time.Now; it stamps deadlines GCP states relatively.
	Now func() time.Time
}

// DefaultConfig: auto-detect, poll every 2s, 2s requests, 3s detection,
// backoff up to 30s, GCP hanging GETs of 60s.
func DefaultConfig() Config {
	return Config{
		Provider:       Auto,
		PollInterval:   2 * time.Second,
		RequestTimeout: 2 * time.Second,
		DetectTimeout:  3 * time.Second,
		MaxBackoff:     30 * time.Second,
		WaitTimeout:    60 * time.Second,
	}
}

// Validate reports the first bad setting, naming the key, the value and
// what is expected.
func (c Config) Validate() error {
	switch c.Provider {
	case Auto, AWS, GCP, Azure, None:
	default:
		return fmt.Errorf("spot.provider: got %q, want one of auto, aws, gcp, azure, none", c.Provider)
	}
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("spot.endpoint: got %q, want an http(s) base URL such as %q", c.Endpoint, DefaultEndpoint)
		}
	}
	if c.PollInterval < 10*time.Millisecond || c.PollInterval > 2*time.Second {
		return fmt.Errorf("spot.poll_interval: got %v, want between 10ms and 2s", c.PollInterval)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"RequestTimeout", c.RequestTimeout}, {"DetectTimeout", c.DetectTimeout}, {"MaxBackoff", c.MaxBackoff}, {"WaitTimeout", c.WaitTimeout}} {
		if d.v <= 0 {
			return fmt.Errorf("spot %s: got %v, want > 0", d.name, d.v)
		}
	}
	return nil
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Endpoint == "" {
		c.Endpoint = DefaultEndpoint
	}
	if c.PollInterval <= 0 {
		c.PollInterval = d.PollInterval
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = d.RequestTimeout
	}
	if c.DetectTimeout <= 0 {
		c.DetectTimeout = d.DetectTimeout
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = d.MaxBackoff
	}
	if c.WaitTimeout <= 0 {
		c.WaitTimeout = d.WaitTimeout
	}
	if c.Client == nil {
		c.Client = defaultClient
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Open returns the watcher for cfg.Provider, detecting it first when auto.
// It returns ErrNoProvider for none or when nothing answers.
func Open(ctx context.Context, cfg Config) (policy.Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := cfg.Provider
	if p == Auto {
		var err error
		if p, err = Detect(ctx, cfg); err != nil {
			return nil, err
		}
	}
	switch p {
	case AWS:
		return NewAWS(cfg), nil
	case GCP:
		return NewGCP(cfg), nil
	case Azure:
		return NewAzure(cfg), nil
	}
	return nil, ErrNoProvider
}

// statusError is a non-2xx answer.
type statusError struct {
	code int
	body string
}

func (e *statusError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.code, e.body) }

// do runs req with a timeout and returns the body of a 2xx answer. A 404
// returns (nil, errNotFound); other statuses a *statusError.
func do(ctx context.Context, c *http.Client, timeout time.Duration, req *http.Request) ([]byte, http.Header, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := c.Do(req.WithContext(ctx))
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", req.URL.Path, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, resp.Header, errNotFound
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		if len(body) > 200 {
			body = body[:200]
		}
		return nil, resp.Header, &statusError{resp.StatusCode, string(body)}
	}
	return body, resp.Header, nil
}

var errNotFound = errors.New("not found")

// defaultClient ignores HTTP(S)_PROXY: the metadata service is link-local
// (set spot.endpoint to go through a proxy on purpose). Shared, so
// detection and the watcher reuse connections.
var defaultClient = func() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	return &http.Client{Transport: t}
}()

// loop calls poll until ctx ends, waiting a jittered interval after a good
// round and a capped, jittered exponential backoff after a failed one, and
// sends each trigger whose ID it has not sent before.
type loop struct {
	name     string
	interval time.Duration
	max      time.Duration
	log      *slog.Logger
	seen     map[string]bool
}

func newLoop(name string, cfg Config) *loop {
	return &loop{name: name, interval: cfg.PollInterval, max: cfg.MaxBackoff, log: cfg.Logger.With("source", name), seen: map[string]bool{}}
}

// run polls until ctx ends. pollWait is how long to wait after a healthy
// round (0 for hanging GETs, which pace themselves).
func (l *loop) run(ctx context.Context, out chan<- policy.Trigger, pollWait time.Duration, poll func(context.Context) ([]policy.Trigger, error)) error {
	failures := 0
	for ctx.Err() == nil {
		ts, err := poll(ctx)
		if !l.emit(ctx, out, ts) {
			return nil
		}
		wait := pollWait
		if err != nil && ctx.Err() == nil {
			failures++
			wait = backoff(l.interval, l.max, failures)
			l.log.Warn("metadata poll failed", "err", err, "failures", failures, "retry_in", wait)
		} else {
			failures = 0
		}
		if wait > 0 && !sleep(ctx, jitter(wait)) {
			return nil
		}
	}
	return nil
}

func (l *loop) emit(ctx context.Context, out chan<- policy.Trigger, ts []policy.Trigger) bool {
	for _, t := range ts {
		if l.seen[t.ID] {
			continue
		}
		select {
		case out <- t:
			l.seen[t.ID] = true
			l.log.Info("notice", "kind", t.Kind, "id", t.ID, "deadline", t.Deadline, "detail", t.Detail)
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// backoff doubles base per consecutive failure, capped at max.
func backoff(base, max time.Duration, failures int) time.Duration {
	d := base
	for i := 1; i < failures && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// jitter returns d reduced by up to 20%, so hosts do not poll in lockstep
// and the interval is never exceeded.
func jitter(d time.Duration) time.Duration {
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}

// sleep waits d or until ctx ends; false means ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func trigger(provider, kind, host string, deadline time.Time, eventID, detail string) policy.Trigger {
	return policy.Trigger{
		ID:       policy.TriggerID(provider, kind, host, deadline, eventID),
		Kind:     kind,
		Host:     host,
		Deadline: deadline,
		Source:   provider,
		Detail:   detail,
		EventID:  eventID,
	}
}
