package migrate

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
	"github.com/edgemigrate/orchestrate/transfer"
)

// pageEngine is the fake engine with the page path's engine side: it says
// it can send pages, and counts the page checkpoints it is asked for
// (which fail: a test that reaches one has frozen through the page path).
type pageEngine struct {
	*enginetest.Fake
	pageCheckpoints atomic.Int32
}

var _ engine.PageMover = (*pageEngine)(nil)

func (e *pageEngine) CheckPages(context.Context, string) error { return nil }
func (e *pageEngine) CheckpointPages(context.Context, string, io.Writer, engine.PageSink, engine.CheckpointOptions) (engine.Stats, error) {
	e.pageCheckpoints.Add(1)
	return engine.Stats{}, errors.New("page checkpoint: not in this test")
}
func (e *pageEngine) PreparePages(context.Context, string) error { return nil }
func (e *pageEngine) ReceivePages(context.Context, string, io.ReadWriteCloser) (engine.PageStats, error) {
	return engine.PageStats{}, errors.New("receive pages: not in this test")
}
func (e *pageEngine) DiscardPages(context.Context, string) error { return nil }
func (e *pageEngine) ReplayPages(context.Context, string, io.ReadSeeker) error {
	return errors.New("replay pages: not in this test")
}

// refusingPages is the world's streamer with page channels that the
// target refuses to open (an older agent, a full disk, no record yet).
type refusingPages struct{ streamer }

func (refusingPages) OpenPages(_ context.Context, peer string, h transfer.StreamHeader) (*transfer.PageConn, error) {
	return nil, errors.New("page channel refused by " + peer)
}

// When the target refuses the page channel, nothing has frozen yet: the
// migration falls back to export/import, completes, and its record says
// which method ran and why the page path did not.
func TestPagePathRefusedBeforeTheFreezeFallsBack(t *testing.T) {
	w := newWorld(t, "h1", "h2")
	h1 := w.hosts["h1"]
	pe := &pageEngine{Fake: h1.eng}
	a := NewAgent("h1", pe, refusingPages{streamer{w, "h1"}}, nil)
	a.SetAuthority(hostAuth{w.store, "h1"})
	a.recordWait = 100 * time.Millisecond
	dir := t.TempDir()
	a.SetPages(PagesConfig{Dir: dir})
	h1.agent, h1.mux, h1.streams = a, http.NewServeMux(), map[string]transfer.Handler{}
	a.Register(h1.mux, h1)

	c := h1.eng.Run("web", "img:1", 1<<20, nil)
	mem, _ := h1.eng.Memory(c.ID)
	co, _ := w.leader(t)
	rec, err := co.Migrate(context.Background(), MigrateRequest{Container: "web"})
	if err != nil {
		t.Fatal(err)
	}
	end := w.waitEnd(t, rec.ID)
	if end.Phase != Done {
		t.Fatalf("migration ended %s: %s", end.Phase, end.Error)
	}
	w.runningOn(t, "web", "h2")
	if got, _ := w.hosts["h2"].eng.Memory(c.ID); !bytes.Equal(got, mem) {
		t.Fatal("memory changed on the way")
	}
	if n := pe.pageCheckpoints.Load(); n != 0 {
		t.Errorf("the engine was asked for %d page checkpoints after the target refused the channel", n)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("the recording directory keeps %d files after a fallback before any freeze", len(left))
	}
	if end.Method != MethodDirect {
		t.Errorf("record method %q, want %q (the fallback that ran)", end.Method, MethodDirect)
	}
	if end.Precopy == nil || end.Precopy.Pages == nil || !strings.Contains(end.Precopy.Pages.Fallback, "page channel refused by h2") {
		t.Errorf("the record does not say why the page path did not run: %+v", end.Precopy)
	}
}
