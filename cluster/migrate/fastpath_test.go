package migrate

import (
	"testing"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/transfer"
	"github.com/edgemigrate/orchestrate/transfer/delta"
)

func TestPagesDecision(t *testing.T) {
	cases := []struct {
		label                       string
		enabled, engine, sender, ok bool
		why                         string
	}{
		{"", true, true, true, true, ""},
		{"on", true, true, true, true, ""},
		{"off", true, true, true, false, "orchestrate.pages=off"},
		{"OFF", true, true, true, false, "orchestrate.pages=off"},
		{"false", true, true, true, false, "orchestrate.pages=off"},
		{"", false, true, true, false, "the page path is not configured on this host (no recording directory)"},
		{"", true, false, true, false, "the engine cannot send pages while it dumps"},
		{"", true, true, false, false, "the transfer client has no page channels"},
	}
	for _, c := range cases {
		ok, why := pagesDecision(c.label, c.enabled, c.engine, c.sender)
		if ok != c.ok || why != c.why {
			t.Errorf("pagesDecision(%q, %v, %v, %v) = %v %q, want %v %q", c.label, c.enabled, c.engine, c.sender, ok, why, c.ok, c.why)
		}
	}
}

// The record's method says which path ran.
func TestRecordPagesMethod(t *testing.T) {
	cases := []struct {
		name       string
		pre        PrecopyReport
		saved      int64
		oneWay     bool
		wantMethod string
	}{
		{"fast link", PrecopyReport{Method: MethodDirect, Reason: "link 900 Mbit/s is fast: direct streaming"}, 0, false, MethodPages},
		{"slow link, small container", PrecopyReport{Method: MethodDirect}, 0, true, MethodPages},
		{"after pre-copy", PrecopyReport{Method: MethodContent}, 5 << 20, true, MethodContentPages},
		{"pre-copy lost its base", PrecopyReport{Method: MethodContent, Fallback: "the target no longer holds the pre-copied archive"}, 0, true, MethodPagesAfterPrecopy},
	}
	for _, c := range cases {
		pre := c.pre
		pre.recordPages(engine.Stats{Bytes: 100}, transfer.StreamStats{Bytes: 100, WireBytes: 90},
			&PageReport{PageBytes: 64 << 20, WireBytes: 32 << 20, DeltaSaved: c.saved}, delta.Stats{LiteralBytes: 1 << 20, DeltaBytes: 1 << 20}, c.oneWay)
		if pre.Method != c.wantMethod || pre.Final == nil || pre.Final.ArchiveBytes != 64<<20+100 || pre.WireBytes != 32<<20+90 {
			t.Errorf("%s: method %s, final %+v, wire %d", c.name, pre.Method, pre.Final, pre.WireBytes)
		}
		if pre.Reason == "" {
			t.Errorf("%s: no reason", c.name)
		}
	}
}
