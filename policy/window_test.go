package policy

import (
	"testing"
	"time"
)

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	l, err := time.LoadLocation(name)
	if err != nil {
		t.Skipf("no tzdata for %s: %v", name, err)
	}
	return l
}

func TestParseWindow(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    string
		wantErr bool
	}{
		{in: "02:00-05:00", want: "02:00-05:00 UTC"},
		{in: "Mon-Fri 22:00-04:00 Europe/Berlin", want: "Mon,Tue,Wed,Thu,Fri 22:00-04:00 Europe/Berlin"},
		{in: "Sat-Mon,Wed 00:00-24:00", want: "Sun,Mon,Wed,Sat 00:00-00:00 UTC"},
		{in: "mon 1:30-2:00", want: "Mon 01:30-02:00 UTC"},
		{in: "", want: "00:00-00:00 UTC"},
		{in: "Mon", wantErr: true},
		{in: "Funday 02:00-03:00", wantErr: true},
		{in: "02:00", wantErr: true},
		{in: "25:00-03:00", wantErr: true},
		{in: "02:00-03:60", wantErr: true},
		{in: "02:00-03:00 Mars/Olympus", wantErr: true},
		{in: "02:00-03:00 UTC extra", wantErr: true},
	} {
		w, err := ParseWindow(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseWindow(%q) err = %v, wantErr %v", tc.in, err, tc.wantErr)
			continue
		}
		if err == nil && w.String() != tc.want {
			t.Errorf("ParseWindow(%q) = %q, want %q", tc.in, w.String(), tc.want)
		}
	}
}

func TestWindowContainsAndNext(t *testing.T) {
	berlin := mustLoc(t, "Europe/Berlin")
	ny := mustLoc(t, "America/New_York")
	utc := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	// 2026-11-27 is a Friday.
	for _, tc := range []struct {
		name     string
		w        Window
		at       time.Time
		contains bool
		next     time.Time
	}{
		{"zero window always open", Window{}, utc("2026-11-27T13:14:00Z"), true, utc("2026-11-27T13:14:00Z")},
		{"inside", Window{Start: 120, End: 300}, utc("2026-11-27T03:00:00Z"), true, utc("2026-11-27T03:00:00Z")},
		{"start inclusive", Window{Start: 120, End: 300}, utc("2026-11-27T02:00:00Z"), true, utc("2026-11-27T02:00:00Z")},
		{"end exclusive", Window{Start: 120, End: 300}, utc("2026-11-27T05:00:00Z"), false, utc("2026-11-28T02:00:00Z")},
		{"before today", Window{Start: 120, End: 300}, utc("2026-11-27T01:00:00Z"), false, utc("2026-11-27T02:00:00Z")},
		{"cross midnight, evening", Window{Start: 22 * 60, End: 4 * 60}, utc("2026-11-27T23:00:00Z"), true, utc("2026-11-27T23:00:00Z")},
		{"cross midnight, morning after", Window{Start: 22 * 60, End: 4 * 60}, utc("2026-11-28T03:59:00Z"), true, utc("2026-11-28T03:59:00Z")},
		{"cross midnight, afternoon", Window{Start: 22 * 60, End: 4 * 60}, utc("2026-11-27T12:00:00Z"), false, utc("2026-11-27T22:00:00Z")},
		{"Fri-only window runs into Saturday", Window{Days: []time.Weekday{time.Friday}, Start: 22 * 60, End: 4 * 60}, utc("2026-11-28T01:00:00Z"), true, utc("2026-11-28T01:00:00Z")},
		{"Fri-only window not Saturday night", Window{Days: []time.Weekday{time.Friday}, Start: 22 * 60, End: 4 * 60}, utc("2026-11-28T23:00:00Z"), false, utc("2026-12-04T22:00:00Z")},
		{"weekend only, asked on Friday", Window{Days: []time.Weekday{time.Saturday, time.Sunday}, Start: 60, End: 120}, utc("2026-11-27T01:30:00Z"), false, utc("2026-11-28T01:00:00Z")},
		// Berlin is UTC+1 in November: 02:00-05:00 local is 01:00-04:00Z.
		{"time zone inside", Window{Start: 120, End: 300, Location: berlin}, utc("2026-11-27T01:30:00Z"), true, utc("2026-11-27T01:30:00Z")},
		{"time zone outside", Window{Start: 120, End: 300, Location: berlin}, utc("2026-11-27T04:30:00Z"), false, utc("2026-11-28T01:00:00Z")},
		// DST: New York springs forward 2026-03-08 02:00 → 03:00. A
		// 01:00-04:00 window is two hours long that night.
		{"DST spring, after gap", Window{Start: 60, End: 240, Location: ny}, time.Date(2026, 3, 8, 3, 30, 0, 0, ny), true, time.Date(2026, 3, 8, 3, 30, 0, 0, ny)},
		{"DST spring, end", Window{Start: 60, End: 240, Location: ny}, time.Date(2026, 3, 8, 4, 0, 0, 0, ny), false, time.Date(2026, 3, 9, 1, 0, 0, 0, ny)},
		// Fall back 2026-11-01 02:00 → 01:00: 01:30 happens twice, both inside.
		{"DST fall, first 01:30", Window{Start: 60, End: 180, Location: ny}, utc("2026-11-01T05:30:00Z"), true, utc("2026-11-01T05:30:00Z")},
		{"DST fall, second 01:30", Window{Start: 60, End: 180, Location: ny}, utc("2026-11-01T06:30:00Z"), true, utc("2026-11-01T06:30:00Z")},
		{"DST fall, next day", Window{Start: 60, End: 180, Location: ny}, utc("2026-11-01T08:00:00Z"), false, time.Date(2026, 11, 2, 1, 0, 0, 0, ny)},
	} {
		if got := tc.w.Contains(tc.at); got != tc.contains {
			t.Errorf("%s: Contains(%v) = %v, want %v", tc.name, tc.at, got, tc.contains)
		}
		if got := tc.w.Next(tc.at); !got.Equal(tc.next) {
			t.Errorf("%s: Next(%v) = %v, want %v", tc.name, tc.at, got, tc.next)
		}
	}
}

// A window inside the skipped DST hour is empty that day; Next must move on
// and never loop.
func TestWindowInsideDSTGap(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	w := Window{Start: 2*60 + 10, End: 2*60 + 50, Location: ny} // 02:10-02:50
	at := time.Date(2026, 3, 8, 0, 0, 0, 0, ny)
	next := w.Next(at)
	if next.IsZero() || next.Before(at) || !w.Contains(next) {
		t.Fatalf("Next(%v) = %v, want a later open instant", at, next)
	}
}
