package migrate

import (
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/transfer"
)

// The link probe's rate leaves out what is not the link when the target
// timed its reading; otherwise it is the whole stream's.
func TestProbeRate(t *testing.T) {
	const n = 2 << 20
	whole := transfer.StreamStats{WireBytes: n, Duration: 200 * time.Millisecond} // 10 MB/s with the setup
	cases := []struct {
		name string
		ans  probeAnswer
		want float64
	}{
		{"timed by the target", probeAnswer{Bytes: n - 64<<10, Nanos: int64(20 * time.Millisecond)}, float64(n-64<<10) / 0.02},
		{"an older target", probeAnswer{}, n / 0.2},
		{"too little timed", probeAnswer{Bytes: 64 << 10, Nanos: 1000}, n / 0.2},
	}
	for _, c := range cases {
		if got := probeRate(n, whole, c.ans); got < c.want*0.999 || got > c.want*1.001 {
			t.Errorf("%s: %.0f B/s, want %.0f", c.name, got, c.want)
		}
	}
}

// The target times the probe's data after its first read.
func TestTimedReader(t *testing.T) {
	tr := &timedReader{r: strings.NewReader(strings.Repeat("x", 10))}
	b := make([]byte, 4)
	for {
		if _, err := tr.Read(b); err != nil {
			break
		}
	}
	if tr.n != 10 || tr.firstN != 4 || tr.first.IsZero() || tr.last.Before(tr.first) {
		t.Fatalf("%+v", tr)
	}
}
