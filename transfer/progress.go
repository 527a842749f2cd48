package transfer

import (
	"context"
	"sync"
	"time"
)

// Progress is one report about a transfer in flight. Reports come at most
// every ProgressInterval and once more when the transfer ends (Done).
type Progress struct {
	Op    string // "stream", "upload", "download"
	ID    string // stream ID or remote name
	Peer  string
	Bytes int64 // uncompressed bytes so far, including a resumed prefix
	Total int64 // 0 when unknown
	Rate  float64
	// ETA is zero when Total is unknown.
	ETA  time.Duration
	Done bool
}

// ProgressFunc receives progress reports. It runs on the transfer's goroutine
// and must not block.
type ProgressFunc func(Progress)

// ProgressInterval is how often progress is reported at most.
const ProgressInterval = 200 * time.Millisecond

type progressTracker struct {
	fn         ProgressFunc
	every      time.Duration
	p          Progress
	start      time.Time
	startBytes int64
	last       time.Time
}

func newProgress(fn ProgressFunc, every time.Duration, op, id, peer string, total int64) *progressTracker {
	now := time.Now()
	if every <= 0 {
		every = ProgressInterval
	}
	return &progressTracker{fn: fn, every: every, p: Progress{Op: op, ID: id, Peer: peer, Total: total}, start: now, last: now}
}

// resumeAt records bytes that were already there, so they count in Bytes
// but not in Rate.
func (t *progressTracker) resumeAt(n int64) {
	t.p.Bytes, t.startBytes = n, n
}

func (t *progressTracker) add(n int) {
	t.p.Bytes += int64(n)
	if t.fn == nil {
		return
	}
	if now := time.Now(); now.Sub(t.last) >= t.every {
		t.last = now
		t.report(false)
	}
}

func (t *progressTracker) report(done bool) {
	if t.fn == nil {
		return
	}
	p := t.p
	p.Done = done
	if el := time.Since(t.start).Seconds(); el > 0 {
		p.Rate = float64(p.Bytes-t.startBytes) / el
	}
	if p.Total > 0 && p.Rate > 0 && p.Bytes < p.Total {
		p.ETA = time.Duration(float64(p.Total-p.Bytes) / p.Rate * float64(time.Second))
	}
	t.fn(p)
}

// limiter is a token bucket over bytes, shared by all of a client's
// transfers so the limit is per agent, not per transfer.
type limiter struct {
	mu     sync.Mutex
	rate   float64 // bytes per second
	burst  float64
	tokens float64
	last   time.Time
}

func newLimiter(bytesPerSec int64) *limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	b := max(float64(bytesPerSec)/50, 64<<10) // 20 ms worth: smooth, so rates measure true
	return &limiter{rate: float64(bytesPerSec), burst: b, tokens: b, last: time.Now()}
}

// wait blocks until n bytes may be sent or ctx ends. A nil limiter never
// waits.
func (l *limiter) wait(ctx context.Context, n int) error {
	if l == nil {
		return nil
	}
	for n > 0 {
		take := min(float64(n), l.burst)
		l.mu.Lock()
		now := time.Now()
		l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
		l.last = now
		var delay time.Duration
		if l.tokens >= take {
			l.tokens -= take
			n -= int(take)
		} else {
			delay = time.Duration((take - l.tokens) / l.rate * float64(time.Second))
		}
		l.mu.Unlock()
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
	}
	return nil
}
