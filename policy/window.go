package policy

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Window is a recurring maintenance window: from Start to End (local wall
// clock in Location) on each of Days. Days name the day the window opens, so
// "Fri 22:00-02:00" runs from Friday 22:00 into Saturday 02:00.
//
// The zero Window is always open (every day, Start == End means 24 hours).
//
// Daylight saving: the window follows the local wall clock. On transition
// days it is an hour shorter or longer, and a bound that falls in a skipped
// hour moves forward by the gap, as time.Date normalises it (02:10-02:50 on
// a spring-forward night in New York runs 03:10-03:50 EDT). Contains and
// Next never loop.
type Window struct {
	// Days the window opens; empty means every day.
	Days []time.Weekday
	// Start and End as minutes after local midnight, in [0, 1440).
	// End <= Start crosses midnight; End == Start is a full day.
	Start, End int
	// Location; nil means UTC.
	Location *time.Location
}

var weekdays = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// ParseWindow parses "[DAYS] HH:MM-HH:MM [ZONE]", where DAYS is a comma list
// of days or ranges (Mon..Sun, e.g. "Mon-Fri,Sun" or "Sat-Mon") and ZONE an
// IANA name (default UTC). Examples: "02:00-05:00",
// "Mon-Fri 22:00-04:00 Europe/Berlin". An empty string is the zero Window
// (always open).
func ParseWindow(s string) (Window, error) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return Window{}, nil
	}
	var w Window
	i := 0
	if i < len(f) && !strings.Contains(f[i], ":") {
		days, err := parseDays(f[i])
		if err != nil {
			return Window{}, err
		}
		w.Days = days
		i++
	}
	if i >= len(f) {
		return Window{}, fmt.Errorf("missing HH:MM-HH:MM in %q", s)
	}
	a, b, ok := strings.Cut(f[i], "-")
	if !ok {
		return Window{}, fmt.Errorf("bad time range %q, want HH:MM-HH:MM", f[i])
	}
	var err error
	if w.Start, err = parseClock(a); err != nil {
		return Window{}, err
	}
	if w.End, err = parseClock(b); err != nil {
		return Window{}, err
	}
	i++
	if i < len(f) {
		loc, err := time.LoadLocation(f[i])
		if err != nil {
			return Window{}, fmt.Errorf("bad time zone %q: %w", f[i], err)
		}
		w.Location = loc
		i++
	}
	if i < len(f) {
		return Window{}, fmt.Errorf("unexpected %q after the time zone", strings.Join(f[i:], " "))
	}
	return w, nil
}

func parseDays(s string) ([]time.Weekday, error) {
	var set [7]bool
	for _, part := range strings.Split(s, ",") {
		a, b, isRange := strings.Cut(part, "-")
		from, ok := weekdays[strings.ToLower(a)]
		if !ok {
			return nil, fmt.Errorf("bad day %q, want Mon..Sun", a)
		}
		to := from
		if isRange {
			if to, ok = weekdays[strings.ToLower(b)]; !ok {
				return nil, fmt.Errorf("bad day %q, want Mon..Sun", b)
			}
		}
		for d := from; ; d = (d + 1) % 7 {
			set[d] = true
			if d == to {
				break
			}
		}
	}
	var days []time.Weekday
	for d, on := range set {
		if on {
			days = append(days, time.Weekday(d))
		}
	}
	return days, nil
}

func parseClock(s string) (int, error) {
	h, m, ok := strings.Cut(s, ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || hh < 0 || hh > 24 || mm < 0 || mm > 59 || (hh == 24 && mm != 0) {
		return 0, fmt.Errorf("bad time of day %q, want HH:MM", s)
	}
	return (hh*60 + mm) % 1440, nil
}

func (w Window) loc() *time.Location {
	if w.Location == nil {
		return time.UTC
	}
	return w.Location
}

func (w Window) opensOn(d time.Weekday) bool {
	if len(w.Days) == 0 {
		return true
	}
	for _, x := range w.Days {
		if x == d {
			return true
		}
	}
	return false
}

// occurrence returns the window that opens on the local calendar day of
// day (any time that day), and whether it opens that day at all.
func (w Window) occurrence(y int, m time.Month, d int) (start, end time.Time, ok bool) {
	loc := w.loc()
	start = time.Date(y, m, d, w.Start/60, w.Start%60, 0, 0, loc)
	if !w.opensOn(time.Date(y, m, d, 12, 0, 0, 0, loc).Weekday()) {
		return start, start, false
	}
	endDay := d
	if w.End <= w.Start {
		endDay++ // crosses midnight, or a full day when equal
	}
	end = time.Date(y, m, endDay, w.End/60, w.End%60, 0, 0, loc)
	return start, end, end.After(start)
}

// Contains reports whether the window is open at t.
func (w Window) Contains(t time.Time) bool {
	lt := t.In(w.loc())
	for back := 1; back >= 0; back-- { // the occurrence opening yesterday may still run
		s, e, ok := w.occurrence(lt.Year(), lt.Month(), lt.Day()-back)
		if ok && !t.Before(s) && t.Before(e) {
			return true
		}
	}
	return false
}

// Next returns the earliest instant at or after t when the window is open:
// t itself when Contains(t). It returns the zero time only if the window
// never opens (no day within a week has a non-empty occurrence).
func (w Window) Next(t time.Time) time.Time {
	if w.Contains(t) {
		return t
	}
	lt := t.In(w.loc())
	for fwd := 0; fwd <= 8; fwd++ {
		s, _, ok := w.occurrence(lt.Year(), lt.Month(), lt.Day()+fwd)
		if ok && !s.Before(t) {
			return s
		}
	}
	return time.Time{}
}

// String renders the window in ParseWindow syntax.
func (w Window) String() string {
	var b strings.Builder
	if len(w.Days) > 0 {
		for i, d := range w.Days {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(d.String()[:3])
		}
		b.WriteByte(' ')
	}
	fmt.Fprintf(&b, "%02d:%02d-%02d:%02d %s", w.Start/60, w.Start%60, w.End/60, w.End%60, w.loc())
	return b.String()
}
