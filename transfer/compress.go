package transfer

import (
	"fmt"
	"runtime"
	"sync"
	"time"
)

// CompressMode chooses how stream chunks are encoded.
type CompressMode int

const (
	// CompressAdaptive (the default) compresses a chunk only when the link,
	// not the compressor, is the bottleneck: it measures per peer how fast
	// the link takes bytes and how fast and how well zstd compresses, and
	// picks the faster of the two pipelines chunk by chunk.
	CompressAdaptive CompressMode = iota
	// CompressNone sends chunks raw.
	CompressNone
	// CompressZstd compresses every chunk.
	CompressZstd
)

func (m CompressMode) String() string {
	switch m {
	case CompressAdaptive:
		return "adaptive"
	case CompressNone:
		return "none"
	case CompressZstd:
		return "zstd"
	}
	return fmt.Sprintf("CompressMode(%d)", int(m))
}

// Compression configures stream compression.
type Compression struct {
	Mode CompressMode
	// Level is the zstd level (1 fastest .. 19); 0 means 1.
	Level int
	// Workers compress chunks concurrently; 0 means GOMAXPROCS.
	Workers int
}

func (c Compression) level() int {
	if c.Level <= 0 {
		return 1
	}
	return c.Level
}

func (c Compression) workers() int {
	if c.Workers <= 0 {
		return runtime.GOMAXPROCS(0)
	}
	return c.Workers
}

// linkStats is what the client has learnt about one peer, kept across
// streams so the first chunks of the next stream start from a good guess.
// Rates are exponentially weighted moving averages.
type linkStats struct {
	mu      sync.Mutex
	linkBps float64 // wire bytes per second the channel accepted
	compBps float64 // uncompressed bytes per second, one worker
	ratio   float64 // compressed / uncompressed
	chunks  int     // decisions made, to schedule probes
}

const (
	ewmaWeight = 0.25
	// probeEvery: while sending raw, still compress one chunk in this
	// many so the ratio and compressor speed stay current.
	probeEvery = 16
	// compressMargin: compress only if it is clearly faster, since it
	// also costs CPU the engine may want.
	compressMargin = 1.1
)

func ewma(old, sample float64) float64 {
	if old == 0 {
		return sample
	}
	return old + ewmaWeight*(sample-old)
}

func (l *linkStats) observeLink(bytes int, d time.Duration) {
	if d <= 0 || bytes < 64<<10 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.linkBps = ewma(l.linkBps, float64(bytes)/d.Seconds())
}

func (l *linkStats) observeCompress(in, out int, d time.Duration) {
	if d <= 0 || in == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.compBps = ewma(l.compBps, float64(in)/d.Seconds())
	l.ratio = ewma(l.ratio, float64(out)/float64(in))
}

// decide reports whether the next chunk should be compressed, given
// workers compressing in parallel.
func (l *linkStats) decide(workers int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.chunks++
	if l.compBps == 0 || l.linkBps == 0 {
		return true // probe: learn the compressor; the link is learnt either way
	}
	// Throughput of the two pipelines, in uncompressed bytes per second.
	raw := l.linkBps
	zst := min(l.compBps*float64(workers), l.linkBps/max(l.ratio, 0.01))
	if zst > raw*compressMargin {
		return true
	}
	return l.chunks%probeEvery == 0
}

func (l *linkStats) snapshot() (linkBps, compBps, ratio float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.linkBps, l.compBps, l.ratio
}
