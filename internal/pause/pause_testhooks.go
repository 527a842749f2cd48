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
	return &writer{ctx: ctx, point: point, w: w}
}

func wrapReader(ctx context.Context, point string, r io.Reader) io.Reader {
	return &reader{ctx: ctx, point: point, r: r}
}

type writer struct {
	ctx   context.Context
	point string
	w     io.Writer
	n     int64
}

func (w *writer) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	if w.n < afterBytes && w.n+int64(n) >= afterBytes {
		at(w.ctx, w.point)
	}
	w.n += int64(n)
	return n, err
}

type reader struct {
	ctx   context.Context
	point string
	r     io.Reader
	n     int64
}

func (r *reader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if r.n < afterBytes && r.n+int64(n) >= afterBytes {
		at(r.ctx, r.point)
	}
	r.n += int64(n)
	return n, err
}
