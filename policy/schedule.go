package policy

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/robfig/cron/v3"
)

// ScheduleSource is a Source that emits a KindRebalanceSchedule trigger
// each time rebalance.schedule fires. Host is empty (cluster-wide); the ID
// hashes the scheduled instant, so leaders that run one each dedup to one
// rebalance per tick. Missed ticks (suspended host, slow consumer) are not
// replayed: after each emission it waits for the next tick after now.
type ScheduleSource struct {
	spec  string
	sched cron.Schedule
	log   *slog.Logger
	// Now and After are the clock; tests replace them. Defaults: time.Now
	// and a stoppable timer.
	Now   func() time.Time
	After func(ctx context.Context, d time.Duration) <-chan time.Time
}

var _ Source = (*ScheduleSource)(nil)

// NewScheduleSource parses spec: 5 standard cron fields or a descriptor
// (@hourly, @daily, @every 1h), optionally prefixed "CRON_TZ=Zone ".
func NewScheduleSource(spec string, logger *slog.Logger) (*ScheduleSource, error) {
	s, err := cron.ParseStandard(spec)
	if err != nil {
		return nil, fmt.Errorf("rebalance.schedule %q: %w", spec, err)
	}
	if logger == nil {
		logger = slog.Default()
	}
	return &ScheduleSource{spec: spec, sched: s, log: logger, Now: time.Now, After: afterCtx}, nil
}

// Name implements Source.
func (s *ScheduleSource) Name() string { return "rebalance-schedule" }

// Next is the first tick strictly after t.
func (s *ScheduleSource) Next(t time.Time) time.Time { return s.sched.Next(t) }

// Run implements Source: it returns nil when ctx ends.
func (s *ScheduleSource) Run(ctx context.Context, out chan<- Trigger) error {
	for {
		next := s.sched.Next(s.Now())
		if next.IsZero() {
			s.log.Warn("rebalance schedule never fires", "schedule", s.spec)
			<-ctx.Done()
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.After(ctx, next.Sub(s.Now())):
		}
		t := Trigger{
			ID:     TriggerID(s.Name(), KindRebalanceSchedule, "", time.Time{}, next.UTC().Format(time.RFC3339)),
			Kind:   KindRebalanceSchedule,
			Source: s.Name(),
			Detail: fmt.Sprintf("schedule %q at %s", s.spec, next.UTC().Format(time.RFC3339)),
		}
		select {
		case <-ctx.Done():
			return nil
		case out <- t:
		}
	}
}

// afterCtx is time.After whose timer is released when ctx ends.
func afterCtx(ctx context.Context, d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	t := time.NewTimer(d)
	go func() {
		defer t.Stop()
		select {
		case v := <-t.C:
			ch <- v
		case <-ctx.Done():
		}
	}()
	return ch
}
