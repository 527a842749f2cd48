package migrate

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/transfer"
)

func TestPrecopyLabel(t *testing.T) {
	for _, tc := range []struct{ label, mode, want string }{
		{"", "", ""},
		{"auto", "auto", ""},
		{"on", "on", ""},
		{"OFF", "off", ""},
		{"criu", "on", precopyWantEngine},
		{"Content", "on", precopyWantContent},
	} {
		mode, want := precopyLabel(map[string]string{LabelPrecopy: tc.label})
		if mode != tc.mode || want != tc.want {
			t.Errorf("label %q: mode %q want %q, expected %q %q", tc.label, mode, want, tc.mode, tc.want)
		}
	}
}

func TestChooseEnginePrecopy(t *testing.T) {
	for _, tc := range []struct {
		name   string
		in     enginePrecopyInput
		use    bool
		reason string
	}{
		{"tracking", enginePrecopyInput{Capable: true, Tracking: true}, true, "writes only the pages written since"},
		{"asked for", enginePrecopyInput{Capable: true, Tracking: true, Want: precopyWantEngine}, true, "=criu"},
		{"content asked for", enginePrecopyInput{Capable: true, Tracking: true, Want: precopyWantContent}, false, "=content"},
		{"no tracking", enginePrecopyInput{Capable: true}, false, "tracks no dirty pages"},
		{"no tracking, asked for", enginePrecopyInput{Capable: true, Want: precopyWantEngine}, false, "=criu, but the kernel"},
		{"no pre-dump step", enginePrecopyInput{Tracking: true}, false, "no pre-dump step"},
		{"no pre-dump step, asked for", enginePrecopyInput{Tracking: true, Want: precopyWantEngine}, false, "=criu, but the engine"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			use, reason := chooseEnginePrecopy(tc.in)
			if use != tc.use || !strings.Contains(reason, tc.reason) {
				t.Fatalf("%v %q, want %v %q", use, reason, tc.use, tc.reason)
			}
		})
	}
}

// tracking makes the source's kernel track dirty pages.
func (p *pair) tracking() {
	p.src.SetFeatures(engine.Features{Engine: "fake", CRIUVersion: "3.17.1", PreCopy: true})
}

// A slow link and a kernel that tracks dirty pages: the source pre-dumps
// once, the final round carries only the pages written since, and the
// target restores the memory the container had at the freeze.
func TestEnginePrecopy(t *testing.T) {
	p := newPair(t, 1e6)
	p.tracking()
	c := p.src.Run("w", "img", 2<<20, nil)
	p.dst.AddImage("img")
	p.streams.after = func(h transfer.StreamHeader) {
		if h.Kind == KindPreDump {
			// The container writes while its pre-dump crosses.
			_ = p.src.Write(c.ID, 5*4096, []byte("after the pre-dump"))
		}
	}
	ps := p.migrate(t, "w")
	rep := last(t, ps).Precopy
	if rep.Method != MethodEngine || rep.PreDump == "" || rep.Fallback != "" || len(rep.Rounds) != 1 || !strings.Contains(rep.Reason, "tracks dirty pages") {
		t.Fatalf("report %+v", rep)
	}
	if got := strings.Join(p.streams.kinds, ","); got != "precopy-probe,predump,precopy-probe,restore-previous" {
		t.Fatalf("streams %s", got)
	}
	// One dirty page, not the 2 MiB again.
	if rep.Final == nil || rep.Final.ArchiveBytes > 64<<10 || rep.Rounds[0].ArchiveBytes < 2<<20 {
		t.Fatalf("pre-dump %+v, final %+v", rep.Rounds[0], rep.Final)
	}
	mem, _ := p.src.Memory(c.ID)
	sameMemory(t, p, c.ID, mem)
	if files := mustGlob(t, p.dir); len(files) != 0 {
		t.Fatalf("pre-dump left on the target: %v", files)
	}
	var rec cluster.MigrationRecord
	rep.record(&rec)
	if rec.Method != MethodDirect || rec.Precopy == nil || rec.Precopy.Method != MethodEngine || rec.Precopy.PreDump != rep.PreDump {
		t.Fatalf("record %+v", rec)
	}
}

func TestEnginePrecopyFallbacks(t *testing.T) {
	for _, tc := range []struct {
		name     string
		tracking bool
		labels   map[string]string
		setup    func(p *pair)
		method   string
		reason   string
		final    string
	}{
		{name: "no dirty tracking", method: MethodContent, reason: "tracks no dirty pages", final: KindDeltaRestore},
		{name: "content asked for", tracking: true, labels: map[string]string{LabelPrecopy: "content"}, method: MethodContent, reason: "=content", final: KindDeltaRestore},
		{name: "criu asked for without tracking", labels: map[string]string{LabelPrecopy: "criu"}, method: MethodContent, reason: "=criu, but the kernel", final: KindDeltaRestore},
		{name: "target cannot take a pre-dump", tracking: true, method: MethodContent, reason: "the pre-dump failed", final: KindDeltaRestore,
			setup: func(p *pair) { delete(p.streams.handlers, KindPreDump) }},
		{name: "pre-dump fails on the source", tracking: true, method: MethodContent, reason: "the pre-dump failed", final: KindDeltaRestore,
			setup: func(p *pair) {
				h := p.streams.handlers[KindPreDump]
				p.streams.handlers[KindPreDump] = func(ctx context.Context, sh transfer.StreamHeader, r io.Reader) ([]byte, error) {
					_, _ = io.Copy(io.Discard, r)
					return h(ctx, sh, strings.NewReader("not what was sent"))
				}
			}},
		{name: "target lost the pre-dump", tracking: true, method: MethodFallback, reason: "tracks dirty pages", final: KindRestore,
			setup: func(p *pair) {
				p.streams.after = func(h transfer.StreamHeader) {
					if h.Kind == KindPreDump {
						p.startTarget()
					}
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, 1e6)
			if tc.tracking {
				p.tracking()
			}
			c := p.src.Run("w", "img", 2<<20, tc.labels)
			p.dst.AddImage("img")
			mem, _ := p.src.Memory(c.ID)
			if tc.setup != nil {
				tc.setup(p)
			}
			rep := last(t, p.migrate(t, "w")).Precopy
			if rep.Method != tc.method || !strings.Contains(rep.Reason, tc.reason) {
				t.Fatalf("method %s, reason %q; want %s, %q (fallback %q)", rep.Method, rep.Reason, tc.method, tc.reason, rep.Fallback)
			}
			if got := p.streams.kinds[len(p.streams.kinds)-1]; got != tc.final {
				t.Fatalf("final stream %s, want %s", got, tc.final)
			}
			sameMemory(t, p, c.ID, mem)
		})
	}
}

// A final round that fails leaves the source's kept checkpoint, whose
// resume (the leader's rollback) brings the container back on the source.
func TestEnginePrecopyFinalFails(t *testing.T) {
	p := newPair(t, 1e6)
	p.tracking()
	c := p.src.Run("w", "img", 2<<20, nil)
	p.dst.AddImage("img")
	p.dst.FailRestore = func(engine.Container) error { return errors.New("injected restore failure") }
	ps := p.migrate(t, "w")
	if end := ps[len(ps)-1]; end.Kind != EvFailed || !strings.Contains(end.Err, "injected restore failure") {
		t.Fatalf("last progress %+v, want a failure", end)
	}
	if err := p.src.Resume(context.Background(), c.ID); err != nil {
		t.Fatal(err)
	}
	if got, _ := p.src.Inspect(context.Background(), c.ID); !got.Running {
		t.Fatalf("source after resume: %+v", got)
	}
	if files := mustGlob(t, p.dir); len(files) != 0 {
		t.Fatalf("pre-dump left on the target: %v", files)
	}
}

func TestAfterEnginePrecopy(t *testing.T) {
	for _, tc := range []struct {
		name string
		pre  PrecopyReport
		want bool // the page path is skipped
	}{
		{"CRIU pre-dump at the target", PrecopyReport{Method: MethodEngine, PreDump: "ab12"}, true},
		{"the target lost the pre-dump", PrecopyReport{Method: MethodFallback}, false},
		{"content pre-copy", PrecopyReport{Method: MethodContent}, false},
		{"no pre-copy", PrecopyReport{Method: MethodDirect}, false},
	} {
		if got := afterEnginePrecopy(&tc.pre) != ""; got != tc.want {
			t.Errorf("%s: skip page path %v, want %v", tc.name, got, tc.want)
		}
	}
}

// A pre-dump or a restore-previous stream that no record calls for (a
// member's forgery) is refused before anything is kept or restored.
func TestEnginePrecopyStreamsNeedARecord(t *testing.T) {
	p := newPair(t, 0)
	ctx := transfer.ContextWithSender(context.Background(), "src")
	for _, kind := range []string{KindPreDump, KindRestorePrevious} {
		h := transfer.StreamHeader{Kind: kind, ID: "m9", Meta: map[string]string{"container": "c1", "base": "x"}}
		if _, err := p.streams.handlers[kind](ctx, h, strings.NewReader("forged")); !errors.Is(err, cluster.ErrForbidden) {
			t.Fatalf("%s without a record: %v", kind, err)
		}
	}
	if left, _ := os.ReadDir(p.dir); len(left) != 0 {
		t.Fatalf("a refused pre-dump left %v", left)
	}
}
