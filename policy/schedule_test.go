package policy

import (
	"context"
	"strings"
	"testing"
	"time"
)

// fakeClock lets a test fire ScheduleSource's timer by hand.
type fakeClock struct {
	now   time.Time
	waits chan time.Duration
	fire  chan time.Time
}

func (c *fakeClock) Now() time.Time { return c.now }

func (c *fakeClock) After(ctx context.Context, d time.Duration) <-chan time.Time {
	c.waits <- d
	return c.fire
}

func TestScheduleSource(t *testing.T) {
	s, err := NewScheduleSource("@every 1h", nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	clk := &fakeClock{now: start, waits: make(chan time.Duration, 1), fire: make(chan time.Time)}
	s.Now, s.After = clk.Now, clk.After
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out := make(chan Trigger)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, out) }()

	var ids []string
	for i := 0; i < 2; i++ {
		if d := <-clk.waits; d != time.Hour {
			t.Fatalf("wait %d = %v, want 1h", i, d)
		}
		clk.now = clk.now.Add(time.Hour)
		clk.fire <- clk.now
		tr := <-out
		if tr.Kind != KindRebalanceSchedule || tr.Host != "" || tr.Source != "rebalance-schedule" || len(tr.ID) != 32 {
			t.Fatalf("trigger = %+v", tr)
		}
		if !strings.Contains(tr.Detail, clk.now.Format(time.RFC3339)) {
			t.Fatalf("detail %q lacks the tick time", tr.Detail)
		}
		ids = append(ids, tr.ID)
	}
	if ids[0] == ids[1] {
		t.Fatal("two ticks share an ID")
	}
	<-clk.waits
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v, want nil after cancel", err)
	}
}

func TestScheduleSourceStandardSpec(t *testing.T) {
	s, err := NewScheduleSource("30 2 * * 1-5", nil)
	if err != nil {
		t.Fatal(err)
	}
	fri := time.Date(2026, 11, 27, 3, 0, 0, 0, time.Local)
	if got, want := s.Next(fri), time.Date(2026, 11, 30, 2, 30, 0, 0, time.Local); !got.Equal(want) {
		t.Fatalf("Next = %v, want %v (Monday)", got, want)
	}
	if _, err := NewScheduleSource("61 * * * *", nil); err == nil {
		t.Fatal("bad spec accepted")
	}
}

// The real timer path: a cancelled ctx ends Run promptly.
func TestScheduleSourceCancel(t *testing.T) {
	s, err := NewScheduleSource("@daily", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, make(chan Trigger)) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestTriggerID(t *testing.T) {
	dl := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a := TriggerID("aws", KindSpotTerminate, "h1", dl, "e1")
	if len(a) != 32 {
		t.Fatalf("len = %d", len(a))
	}
	if a != TriggerID("aws", KindSpotTerminate, "h1", dl.In(time.FixedZone("x", 3600)), "e1") {
		t.Fatal("same instant in another zone gave another ID")
	}
	for _, b := range []string{
		TriggerID("gcp", KindSpotTerminate, "h1", dl, "e1"),
		TriggerID("aws", KindSpotStop, "h1", dl, "e1"),
		TriggerID("aws", KindSpotTerminate, "h2", dl, "e1"),
		TriggerID("aws", KindSpotTerminate, "h1", dl.Add(time.Second), "e1"),
		TriggerID("aws", KindSpotTerminate, "h1", dl, "e2"),
		TriggerID("aws", KindSpotTerminate, "h1e", dl, "1"),
	} {
		if a == b {
			t.Fatal("different notices share an ID")
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultRebootConfig().Validate(); err != nil {
		t.Fatalf("default reboot config: %v", err)
	}
	if err := DefaultRebalanceConfig().Validate(); err != nil {
		t.Fatalf("default rebalance config: %v", err)
	}
	for _, tc := range []struct {
		err  error
		want []string
	}{
		{func() error { c := DefaultRebootConfig(); c.Concurrency = 0; return c.Validate() }(), []string{"reboot.concurrency", "0", ">= 1"}},
		{func() error { c := DefaultRebootConfig(); c.Command = nil; return c.Validate() }(), []string{"reboot.command"}},
		{func() error { c := DefaultRebootConfig(); c.SentinelCommand = []string{" "}; return c.Validate() }(), []string{"reboot.sentinel_command"}},
		{func() error { c := DefaultRebootConfig(); c.Window = "Mon 26:00-03:00"; return c.Validate() }(), []string{"reboot.window", "26:00", "HH:MM"}},
		{func() error { c := DefaultRebalanceConfig(); c.Schedule = "every hour"; return c.Validate() }(), []string{"rebalance.schedule", "every hour", "@every 1h"}},
		{func() error { c := DefaultRebalanceConfig(); c.Threshold = 1.5; return c.Validate() }(), []string{"rebalance.threshold", "1.5", "(0, 1]"}},
		{func() error { c := DefaultRebalanceConfig(); c.MaxMoves = -1; return c.Validate() }(), []string{"rebalance.max_moves", "-1"}},
	} {
		if tc.err == nil {
			t.Errorf("want an error mentioning %q", tc.want)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(tc.err.Error(), w) {
				t.Errorf("error %q lacks %q", tc.err, w)
			}
		}
	}
	c := DefaultRebalanceConfig()
	c.Schedule, c.Threshold = "@every 1h", 0.3
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}
