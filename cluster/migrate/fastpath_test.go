package migrate

import (
	"testing"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/transfer"
	"github.com/edgemigrate/orchestrate/transfer/delta"
)

func TestPagesDecision(t *testing.T) {
	cases := []struct {
		label                   string
		enabled, engine, sender bool
		why                     string
	}{
		{"", true, true, true, ""},
		{"on", true, true, true, ""},
		{"off", true, true, true, "orchestrate.pages=off"},
		{"OFF", true, true, true, "orchestrate.pages=off"},
		{"false", true, true, true, "orchestrate.pages=off"},
		{"", false, true, true, "the page path is not configured on this host (no recording directory)"},
		{"", true, false, true, "the engine cannot send pages while it dumps"},
		{"", true, true, false, "the transfer client has no page channels"},
	}
	for _, c := range cases {
		if why := pagesDecision(c.label, c.enabled, c.engine, c.sender); why != c.why {
			t.Errorf("pagesDecision(%q, %v, %v, %v) = %q, want %q", c.label, c.enabled, c.engine, c.sender, why, c.why)
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
		// What the record says before the freeze is what it says after.
		if v := variant(&c.pre, c.saved > 0); v != c.wantMethod {
			t.Errorf("%s: variant before the freeze %s, want %s", c.name, v, c.wantMethod)
		}
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

// CRIU that never connected (a runtime that ignores runc.conf) leaves the
// pages in the archive: the record's variant does not claim the page path.
func TestPagesNotUsedByCRIU(t *testing.T) {
	pre := PrecopyReport{Method: MethodDirect}
	p := &PageReport{}
	pre.recordPages(engine.Stats{Bytes: 64 << 20}, transfer.StreamStats{Bytes: 64 << 20}, p, delta.Stats{}, false)
	if pre.Method != MethodDirect || p.Fallback == "" {
		t.Fatalf("method %s, fallback %q", pre.Method, p.Fallback)
	}
	pre = PrecopyReport{Method: MethodContent}
	pre.recordPages(engine.Stats{}, transfer.StreamStats{}, &PageReport{}, delta.Stats{}, true)
	if pre.Method != MethodFallback {
		t.Fatalf("after pre-copy: method %s", pre.Method)
	}
}
