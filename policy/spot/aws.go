package spot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/edgemigrate/orchestrate/policy"
)

// AWS IMDSv2 paths and headers.
const (
	awsTokenPath       = "/latest/api/token"
	awsTokenTTLHeader  = "X-aws-ec2-metadata-token-ttl-seconds"
	awsTokenHeader     = "X-aws-ec2-metadata-token"
	awsInstanceAction  = "/latest/meta-data/spot/instance-action"
	awsRebalance       = "/latest/meta-data/events/recommendations/rebalance"
	awsMaintenance     = "/latest/meta-data/events/maintenance/scheduled"
	awsTokenTTL        = 6 * time.Hour
	awsMaintenanceTime = "2 Jan 2006 15:04:05 GMT"
)

// AWSWatcher polls EC2's instance metadata service (IMDSv2) for spot
// instance actions, rebalance recommendations and scheduled maintenance.
// It holds one session token, refreshed before it expires and refetched
// when the service answers 401. Not safe for concurrent use: one Run (or
// Poll) at a time.
type AWSWatcher struct {
	cfg      Config
	token    string
	tokenExp time.Time
}

var _ policy.Source = (*AWSWatcher)(nil)

// NewAWS returns a watcher; cfg zero fields take DefaultConfig values.
func NewAWS(cfg Config) *AWSWatcher { return &AWSWatcher{cfg: cfg.withDefaults()} }

// Name implements policy.Source.
func (a *AWSWatcher) Name() string { return AWS }

// Run implements policy.Source. It returns nil when ctx ends.
func (a *AWSWatcher) Run(ctx context.Context, out chan<- policy.Trigger) error {
	l := newLoop(AWS, a.cfg)
	return l.run(ctx, out, a.cfg.PollInterval, a.Poll)
}

// Poll asks all three endpoints once. It returns the notices found even
// when another endpoint failed, with the errors joined.
func (a *AWSWatcher) Poll(ctx context.Context) ([]policy.Trigger, error) {
	var ts []policy.Trigger
	var errs []error
	for _, f := range []func(context.Context) ([]policy.Trigger, error){a.instanceAction, a.rebalance, a.maintenance} {
		t, err := f(ctx)
		ts = append(ts, t...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return ts, errors.Join(errs...)
}

func (a *AWSWatcher) instanceAction(ctx context.Context) ([]policy.Trigger, error) {
	body, err := a.get(ctx, awsInstanceAction)
	if err != nil || body == nil {
		return nil, err
	}
	var v struct {
		Action string `json:"action"`
		Time   string `json:"time"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return nil, fmt.Errorf("aws %s: %w", awsInstanceAction, err)
	}
	at, err := time.Parse(time.RFC3339, v.Time)
	if err != nil {
		return nil, fmt.Errorf("aws %s: bad time %q: %w", awsInstanceAction, v.Time, err)
	}
	kind := map[string]string{"terminate": policy.KindSpotTerminate, "stop": policy.KindSpotStop, "hibernate": policy.KindSpotHibernate}[v.Action]
	if kind == "" {
		return nil, fmt.Errorf("aws %s: unknown action %q", awsInstanceAction, v.Action)
	}
	return []policy.Trigger{trigger(AWS, kind, a.cfg.Host, at, "instance-action", "spot instance-action "+v.Action)}, nil
}

func (a *AWSWatcher) rebalance(ctx context.Context) ([]policy.Trigger, error) {
	body, err := a.get(ctx, awsRebalance)
	if err != nil || body == nil {
		return nil, err
	}
	var v struct {
		NoticeTime string `json:"noticeTime"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return nil, fmt.Errorf("aws %s: %w", awsRebalance, err)
	}
	if _, err := time.Parse(time.RFC3339, v.NoticeTime); err != nil {
		return nil, fmt.Errorf("aws %s: bad noticeTime %q: %w", awsRebalance, v.NoticeTime, err)
	}
	return []policy.Trigger{trigger(AWS, policy.KindRebalanceRecommendation, a.cfg.Host, time.Time{}, v.NoticeTime, "rebalance recommendation at "+v.NoticeTime)}, nil
}

func (a *AWSWatcher) maintenance(ctx context.Context) ([]policy.Trigger, error) {
	body, err := a.get(ctx, awsMaintenance)
	if err != nil || body == nil {
		return nil, err
	}
	var evs []struct {
		Code, NotBefore, EventId, State, Description string
	}
	if err := json.Unmarshal(body, &evs); err != nil {
		return nil, fmt.Errorf("aws %s: %w", awsMaintenance, err)
	}
	var ts []policy.Trigger
	for _, e := range evs {
		if s := strings.ToLower(e.State); s == "completed" || s == "canceled" || s == "cancelled" {
			continue
		}
		at, err := time.Parse(awsMaintenanceTime, e.NotBefore)
		if err != nil {
			return ts, fmt.Errorf("aws %s: event %s: bad NotBefore %q: %w", awsMaintenance, e.EventId, e.NotBefore, err)
		}
		ts = append(ts, trigger(AWS, policy.KindMaintenance, a.cfg.Host, at, e.EventId, fmt.Sprintf("%s %s (%s)", e.Code, e.EventId, e.Description)))
	}
	return ts, nil
}

// get returns the body, or nil body and nil error on 404 (nothing pending).
// On 401 it fetches a new token and retries once.
func (a *AWSWatcher) get(ctx context.Context, path string) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		if err := a.ensureToken(ctx); err != nil {
			return nil, err
		}
		req, err := http.NewRequest(http.MethodGet, a.cfg.Endpoint+path, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set(awsTokenHeader, a.token)
		body, _, err := do(ctx, a.cfg.Client, a.cfg.RequestTimeout, req)
		var se *statusError
		switch {
		case errors.Is(err, errNotFound):
			return nil, nil
		case errors.As(err, &se) && se.code == http.StatusUnauthorized && attempt == 0:
			a.token = "" // expired or revoked: fetch a new one and retry
			continue
		case err != nil:
			return nil, fmt.Errorf("aws %s: %w", path, err)
		}
		return body, nil
	}
}

func (a *AWSWatcher) ensureToken(ctx context.Context) error {
	now := a.cfg.Now()
	if a.token != "" && now.Before(a.tokenExp) {
		return nil
	}
	req, err := http.NewRequest(http.MethodPut, a.cfg.Endpoint+awsTokenPath, nil)
	if err != nil {
		return err
	}
	req.Header.Set(awsTokenTTLHeader, fmt.Sprint(int(awsTokenTTL.Seconds())))
	body, _, err := do(ctx, a.cfg.Client, a.cfg.RequestTimeout, req)
	if err != nil {
		return fmt.Errorf("aws token: %w", err)
	}
	tok := strings.TrimSpace(string(body))
	if tok == "" {
		return errors.New("aws token: empty")
	}
	a.token, a.tokenExp = tok, now.Add(awsTokenTTL-time.Minute)
	return nil
}
