package policy

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"
)

// CheckerFunc adapts a function to Checker (fakes, ad-hoc checks).
type CheckerFunc func(ctx context.Context) (bool, string, error)

// RebootRequired implements Checker.
func (f CheckerFunc) RebootRequired(ctx context.Context) (bool, string, error) { return f(ctx) }

// BlockerFunc adapts a function to Blocker.
type BlockerFunc func(ctx context.Context) (bool, string, error)

// IsBlocked implements Blocker.
func (f BlockerFunc) IsBlocked(ctx context.Context) (bool, string, error) { return f(ctx) }

// RebootSource is the Source for KindRebootPending: it asks Checker every
// Interval (jittered down by up to 20%) and emits a trigger for Host when a
// reboot becomes required, and again when the reason changes. Once the
// check says "not required" (typically after the reboot) the next
// positive is a new occurrence with a new ID. Checker errors are logged
// and retried with capped exponential backoff; they never count as "no
// reboot" and never end Run.
type RebootSource struct {
	Checker Checker
	Host    string
	// Interval between checks; zero means one minute.
	Interval time.Duration
	// MaxBackoff caps the wait after repeated errors; zero means 10 minutes.
	MaxBackoff time.Duration
	Logger     *slog.Logger
	// Now stamps occurrences; nil means time.Now.
	Now func() time.Time
}

var _ Source = (*RebootSource)(nil)

// Name implements Source.
func (s *RebootSource) Name() string { return "reboot" }

// Run implements Source; it returns nil when ctx ends.
func (s *RebootSource) Run(ctx context.Context, out chan<- Trigger) error {
	interval, maxBackoff, log, now := s.Interval, s.MaxBackoff, s.Logger, s.Now
	if interval <= 0 {
		interval = time.Minute
	}
	if maxBackoff <= 0 {
		maxBackoff = 10 * time.Minute
	}
	if log == nil {
		log = slog.Default()
	}
	if now == nil {
		now = time.Now
	}
	log = log.With("source", s.Name())
	var reason string // reason last emitted; "" when not required
	var since time.Time
	wait, failures := time.Duration(0), 0
	for {
		if wait > 0 {
			wait -= time.Duration(rand.Int64N(int64(wait)/5 + 1))
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		required, why, err := s.Checker.RebootRequired(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			failures++
			wait = interval << min(failures-1, 20)
			wait = min(wait, maxBackoff)
			log.Warn("reboot check failed", "err", err, "failures", failures, "retry_in", wait)
			continue
		}
		failures, wait = 0, interval
		if !required {
			reason = ""
			continue
		}
		if why == reason {
			continue
		}
		if reason == "" {
			since = now()
		}
		reason = why
		t := Trigger{
			ID:     TriggerID(s.Name(), KindRebootPending, s.Host, time.Time{}, why+"@"+since.UTC().Format(time.RFC3339Nano)),
			Kind:   KindRebootPending,
			Host:   s.Host,
			Source: s.Name(),
			Detail: why,
		}
		select {
		case <-ctx.Done():
			return nil
		case out <- t:
			log.Info("reboot required", "reason", why, "id", t.ID)
		}
	}
}
