package clock

import (
	"testing"
	"time"
)

func TestNowKeepsDurations(t *testing.T) {
	a := Now()
	time.Sleep(10 * time.Millisecond)
	if d := Now().Sub(a); d < 10*time.Millisecond || d > time.Second {
		t.Fatalf("%s between two readings", d)
	}
	if d := Now().Sub(time.Now()); d-Offset() > time.Second || Offset()-d > time.Second {
		t.Fatalf("Now is %s from time.Now with offset %s", d, Offset())
	}
}
