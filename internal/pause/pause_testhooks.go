//go:build testhooks

package pause

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// DirEnv names the directory of armed points.
const DirEnv = "ORCHESTRATE_TEST_PAUSE_DIR"

func at(ctx context.Context, point string) {
	dir := os.Getenv(DirEnv)
	if dir == "" {
		return
	}
	armed := filepath.Join(dir, point)
	if _, err := os.Stat(armed); err != nil {
		return
	}
	_ = os.WriteFile(armed+".reached", fmt.Appendf(nil, "%d\n", os.Getpid()), 0o600)
	for {
		if _, err := os.Stat(armed); err != nil {
			return
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// afterBytes is how much of a stream passes before a Writer's or Reader's
// point.
const afterBytes = 1 << 20

func wrapWriter(ctx context.Context, point string, w io.Writer) io.Writer {
	return &writer{w, &passed{ctx: ctx, point: point}}
}

func wrapReader(ctx context.Context, point string, r io.Reader) io.Reader {
	return &reader{r, &passed{ctx: ctx, point: point}}
}

// passed counts a stream's bytes and waits at point when they first reach
// afterBytes.
type passed struct {
	ctx   context.Context
	point string
	n     int64
}

func (p *passed) add(n int) {
	if p.n < afterBytes && p.n+int64(n) >= afterBytes {
		at(p.ctx, p.point)
	}
	p.n += int64(n)
}

type writer struct {
	w io.Writer
	*passed
}

func (w *writer) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	w.add(n)
	return n, err
}

type reader struct {
	r io.Reader
	*passed
}

func (r *reader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.add(n)
	return n, err
}
