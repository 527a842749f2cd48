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

// linkStats is what the client has learnt about sending to one peer, kept
// across streams so the next stream starts from a good guess.
//
// Adaptive mode measures rather than models: it sends windows of chunks
// either raw or compressed and records, per mode, the goodput the stream
// actually achieved (uncompressed bytes per second from the sender's point
// of view). That one number includes the link's speed, the compressor's
// speed and what they cost each other on a busy CPU: on loopback or a fast
// LAN, zstd loses (it is the bottleneck) and chunks go raw; on a slow link it
// wins and chunks are compressed. When they tie (the engine's export is
// the bottleneck) chunks are compressed: the same time, half the bytes. One
// window in exploreEvery tries the other mode so that a change in the link
// is noticed.
type linkStats struct {
	mu      sync.Mutex
	good    [2]float64 // EWMA goodput, bytes/s: [0] raw, [1] zstd
	windows int        // windows decided so far
	mode    bool       // current window's mode (true: compress)
	left    int        // chunks left in the current window
}

const (
	ewmaWeight = 0.3
	// adaptiveWindow chunks are sent in one mode before deciding again.
	adaptiveWindow = 8
	// exploreEvery: one window in this many tries the losing mode.
	exploreEvery = 8
	// rawMargin: send raw only when that is clearly faster. When the two
	// tie, the producer (the engine's export) is the bottleneck and
	// compression costs no time but halves the bytes; and a raw window's
	// goodput is flattered by socket and channel buffers filling up, which
	// a tie must not reward.
	rawMargin = 1.1
)

func ewma(old, sample float64) float64 {
	if old == 0 {
		return sample
	}
	return old + ewmaWeight*(sample-old)
}

// decide reports whether the next chunk should be compressed.
func (l *linkStats) decide() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.left == 0 {
		l.mode = l.pick()
		l.left = adaptiveWindow
		l.windows++
	}
	l.left--
	return l.mode
}

// pick chooses the next window's mode. Callers hold l.mu.
func (l *linkStats) pick() bool {
	switch {
	case l.good[1] == 0:
		return true // explore zstd first: slow links are where it matters
	case l.good[0] == 0:
		return false
	}
	best := l.good[0] <= l.good[1]*rawMargin
	if l.windows%exploreEvery == exploreEvery-1 {
		return !best
	}
	return best
}

// observe records that bytes of uncompressed data sent in the given mode
// took d, from the first chunk's completion to the last's.
func (l *linkStats) observe(compressed bool, bytes int64, d time.Duration) {
	if d <= 0 || bytes <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	i := 0
	if compressed {
		i = 1
	}
	l.good[i] = ewma(l.good[i], float64(bytes)/d.Seconds())
}

func (l *linkStats) snapshot() (raw, zstd float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.good[0], l.good[1]
}
