package spot

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/edgemigrate/orchestrate/policy"
)

const (
	azurePath   = "/metadata/scheduledevents?api-version=2020-07-01"
	azureHeader = "Metadata"
)

// AzureWatcher polls Azure's Scheduled Events endpoint. Preempt becomes
// KindSpotTerminate; Terminate, Reboot, Redeploy and Freeze become
// KindMaintenance with the event type in Detail. Events with an empty
// NotBefore (already started, or no deadline given) have a zero Deadline.
type AzureWatcher struct{ cfg Config }

var _ policy.Source = (*AzureWatcher)(nil)

// NewAzure returns a watcher; cfg zero fields take DefaultConfig values.
func NewAzure(cfg Config) *AzureWatcher { return &AzureWatcher{cfg: cfg.withDefaults()} }

// Name implements policy.Source.
func (a *AzureWatcher) Name() string { return Azure }

// Run implements policy.Source. It returns nil when ctx ends.
func (a *AzureWatcher) Run(ctx context.Context, out chan<- policy.Trigger) error {
	return newLoop(Azure, a.cfg).run(ctx, out, a.cfg.PollInterval, a.Poll)
}

type azureDoc struct {
	DocumentIncarnation int
	Events              []struct {
		EventId, EventType, ResourceType, EventStatus, NotBefore, Description, EventSource string
		Resources                                                                          []string
	}
}

// Poll fetches the scheduled events once.
func (a *AzureWatcher) Poll(ctx context.Context) ([]policy.Trigger, error) {
	req, err := http.NewRequest(http.MethodGet, a.cfg.Endpoint+azurePath, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set(azureHeader, "true")
	body, _, err := do(ctx, a.cfg.Client, a.cfg.RequestTimeout, req)
	if err != nil {
		return nil, fmt.Errorf("azure scheduled events: %w", err)
	}
	var doc azureDoc
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("azure scheduled events: %w", err)
	}
	var ts []policy.Trigger
	for _, e := range doc.Events {
		if a.cfg.AzureResource != "" && len(e.Resources) > 0 && !slices.Contains(e.Resources, a.cfg.AzureResource) {
			continue
		}
		if strings.EqualFold(e.EventStatus, "Completed") || strings.EqualFold(e.EventStatus, "Canceled") {
			continue
		}
		var dl time.Time
		if e.NotBefore != "" {
			if dl, err = time.Parse(time.RFC1123, e.NotBefore); err != nil {
				return ts, fmt.Errorf("azure event %s: bad NotBefore %q: %w", e.EventId, e.NotBefore, err)
			}
		}
		kind := policy.KindMaintenance
		switch e.EventType {
		case "Preempt":
			kind = policy.KindSpotTerminate
		case "Terminate", "Reboot", "Redeploy", "Freeze":
		default:
			a.cfg.Logger.Warn("unknown Azure scheduled event type; treating it as maintenance", "type", e.EventType, "event", e.EventId)
		}
		ts = append(ts, trigger(Azure, kind, a.cfg.Host, dl, e.EventId, fmt.Sprintf("%s %s (%s)", e.EventType, e.EventId, e.EventSource)))
	}
	return ts, nil
}

// Ack approves eventID so Azure may proceed before NotBefore. Call it once
// the host is evacuated, from the watcher on the affected host only (the
// caller ensures exactly one agent acknowledges). Azure's reply carries no
// body; any non-2xx answer is an error.
func (a *AzureWatcher) Ack(ctx context.Context, eventID string) error {
	body, err := json.Marshal(map[string][]map[string]string{"StartRequests": {{"EventId": eventID}}})
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodPost, a.cfg.Endpoint+azurePath, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set(azureHeader, "true")
	req.Header.Set("Content-Type", "application/json")
	if _, _, err := do(ctx, a.cfg.Client, a.cfg.RequestTimeout, req); err != nil {
		return fmt.Errorf("azure ack %s: %w", eventID, err)
	}
	return nil
}
