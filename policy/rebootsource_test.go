package policy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"
)

type checkResult struct {
	required bool
	reason   string
	err      error
}

func TestRebootSource(t *testing.T) {
	results := make(chan checkResult)
	calls := make(chan struct{}, 100)
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	src := &RebootSource{
		Checker: CheckerFunc(func(ctx context.Context) (bool, string, error) {
			calls <- struct{}{}
			select {
			case r := <-results:
				return r.required, r.reason, r.err
			case <-ctx.Done():
				return false, "", ctx.Err()
			}
		}),
		Host:       "h1",
		Interval:   time.Millisecond,
		MaxBackoff: 2 * time.Millisecond,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now:        func() time.Time { now = now.Add(time.Minute); return now },
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan Trigger, 10)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, out) }()
	feed := func(r checkResult) {
		t.Helper()
		select {
		case results <- r:
		case <-time.After(5 * time.Second):
			t.Fatal("checker not called")
		}
	}
	// Feed a sequence; after each, the next call proves the previous result
	// was handled (emitted or not).
	seq := []checkResult{
		{err: errors.New("dpkg locked")},
		{required: false},
		{required: true, reason: "kernel"},
		{required: true, reason: "kernel"},
		{err: errors.New("flaky")},
		{required: true, reason: "kernel"},
		{required: true, reason: "sentinel"},
		{required: false},
		{required: true, reason: "kernel"},
	}
	for _, r := range seq {
		feed(r)
	}
	for range len(seq) + 1 { // the call after the last result has started: all handled
		select {
		case <-calls:
		case <-time.After(5 * time.Second):
			t.Fatal("checker not called again")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	close(out)
	var got []Trigger
	for tr := range out {
		got = append(got, tr)
	}
	if len(got) != 3 {
		t.Fatalf("got %d triggers, want 3 (kernel, sentinel, kernel again): %+v", len(got), got)
	}
	for i, want := range []string{"kernel", "sentinel", "kernel"} {
		if got[i].Detail != want || got[i].Kind != KindRebootPending || got[i].Host != "h1" {
			t.Errorf("trigger %d = %+v, want reason %q", i, got[i], want)
		}
	}
	if got[0].ID == got[2].ID {
		t.Error("a new occurrence after a negative check reused the old ID")
	}
}
