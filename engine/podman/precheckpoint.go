//go:build remote

package podman

// CRIU's own pre-copy through Podman: `checkpoint --pre-checkpoint` and
// `--with-previous`, and a restore from the two archives.
//
// Podman keeps one pre-dump per container, in the bundle's pre-checkpoint/
// directory; a with-previous checkpoint writes checkpoint/ with a `parent`
// link to ../pre-checkpoint and only the pages written since the pre-dump
// (the kernel's soft-dirty bits say which). Exported, the pre-dump archive
// holds pre-checkpoint/ and the final one holds checkpoint/ with that link.
//
// The REST API has no counterpart of the CLI's `restore --import-previous`,
// which only unpacks the pre-dump archive into the new container's bundle
// before the final one. Restore does the same with the one import the API
// has: it streams the final archive with the pre-dump's pre-checkpoint/
// entries appended, and Podman unpacks both into the bundle, where CRIU
// follows the parent link. Nothing is staged by orchestrate itself.

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/edgemigrate/orchestrate/engine"
)

// preCheckpointDir is where Podman keeps a container's pre-dump, relative
// to its bundle and inside a pre-dump archive.
const preCheckpointDir = "pre-checkpoint"

var _ engine.PreCopier = (*Engine)(nil)

// PreCheckpoint implements engine.PreCopier: a CRIU pre-dump, exported.
// The container keeps running; a failed pre-dump leaves it running too.
func (e *Engine) PreCheckpoint(ctx context.Context, id string, w io.Writer) (engine.Stats, error) {
	q := url.Values{}
	q.Set("export", "true")
	q.Set("preCheckpoint", "true")
	st, err := e.checkpointQuery(ctx, id, w, q)
	if err != nil {
		return st, fmt.Errorf("pre-checkpoint: %w", err)
	}
	return st, nil
}

// CheckpointWithPrevious implements engine.PreCopier: Checkpoint with
// `--with-previous`. Podman refuses it when the container has no pre-dump.
func (e *Engine) CheckpointWithPrevious(ctx context.Context, id string, w io.Writer, opts engine.CheckpointOptions) (engine.Stats, error) {
	q := checkpointOptions(opts)
	q.Set("withPrevious", "true")
	return e.checkpointQuery(ctx, id, w, q)
}

// RestoreWithPrevious implements engine.PreCopier. prev is a PreCheckpoint
// archive; only its pre-checkpoint/ entries are used. A read error of prev
// fails the restore like one of r (nothing is left behind).
func (e *Engine) RestoreWithPrevious(ctx context.Context, prev io.ReaderAt, size int64, r io.Reader, opts engine.RestoreOptions) (engine.Container, engine.Stats, error) {
	start := time.Now()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(appendPreDump(pw, r, io.NewSectionReader(prev, 0, size))) }()
	c, st, err := e.Restore(ctx, pr, opts)
	pr.CloseWithError(errors.New("restore ended"))
	if err != nil {
		return c, st, fmt.Errorf("restore with previous: %w", err)
	}
	st.Duration = time.Since(start)
	return c, st, nil
}

// appendPreDump copies the archive final to w without its end marker, then
// the pre-checkpoint/ entries of the archive pre, then the end marker.
func appendPreDump(w io.Writer, final, pre io.Reader) error {
	tw := tar.NewWriter(w)
	copyEntries := func(r io.Reader, keep func(string) bool) (int, error) {
		tr := tar.NewReader(r)
		n := 0
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				return n, nil
			}
			if err != nil {
				return n, err
			}
			if !keep(h.Name) {
				continue
			}
			if err := tw.WriteHeader(h); err != nil {
				return n, err
			}
			if _, err := io.Copy(tw, tr); err != nil {
				return n, err
			}
			n++
		}
	}
	if _, err := copyEntries(final, func(string) bool { return true }); err != nil {
		return fmt.Errorf("%w: final archive: %v", engine.ErrBadArchive, err)
	}
	n, err := copyEntries(pre, func(name string) bool {
		name = path.Clean(strings.TrimPrefix(name, "./"))
		return name == preCheckpointDir || strings.HasPrefix(name, preCheckpointDir+"/")
	})
	if err != nil {
		return fmt.Errorf("%w: pre-dump archive: %v", engine.ErrBadArchive, err)
	}
	if n == 0 {
		return fmt.Errorf("%w: the pre-dump archive has no %s/", engine.ErrBadArchive, preCheckpointDir)
	}
	return tw.Close()
}

// checkpointQuery runs one export checkpoint request with the query q and
// streams the archive to w.
func (e *Engine) checkpointQuery(ctx context.Context, id string, w io.Writer, q url.Values) (engine.Stats, error) {
	start := time.Now()
	c, err := e.Inspect(ctx, id)
	if err != nil {
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w", id, err)
	}
	if !c.Running {
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w (state %s)", id, engine.ErrNotRunning, c.State)
	}
	// Never while runc.conf sends CRIU to another checkpoint's page server
	// (pre-dumps and with-previous dumps included).
	unlock, err := e.sharedCRIULock(ctx)
	if err != nil {
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w", id, err)
	}
	defer unlock()
	resp, err := e.do(ctx, http.MethodPost, "/containers/"+url.PathEscape(c.ID)+"/checkpoint", q, nil)
	if err != nil {
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w", id, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w", id, responseError(resp))
	}
	sc := newScanner()
	n, err := io.Copy(w, io.TeeReader(resp.Body, sc))
	sc.finish()
	st := engine.Stats{Duration: time.Since(start), Bytes: n}
	if dump := sc.dumpStats(); dump != nil {
		st.FrozenTime, st.MemdumpTime, st.MemwriteTime, st.PagesWritten = dump.Frozen, dump.Memdump, dump.Memwrite, dump.PagesWritten
	}
	if err != nil {
		return st, fmt.Errorf("checkpoint %s: stream archive after %d bytes: %w", id, n, err)
	}
	if sc.err() != nil {
		return st, fmt.Errorf("checkpoint %s: %w: %v", id, engine.ErrBadArchive, sc.err())
	}
	e.log.Debug("checkpointed", "container", c.Name, "bytes", n, "duration", st.Duration, "frozen", st.FrozenTime,
		"pre_checkpoint", q.Get("preCheckpoint") == "true", "with_previous", q.Get("withPrevious") == "true")
	return st, nil
}

// checkpointOptions is the query of an export checkpoint with opts.
func checkpointOptions(opts engine.CheckpointOptions) url.Values {
	q := url.Values{}
	q.Set("export", "true")
	q.Set("keep", fmt.Sprint(opts.Keep))
	q.Set("leaveRunning", fmt.Sprint(opts.LeaveRunning))
	q.Set("tcpEstablished", fmt.Sprint(opts.TCPEstablished))
	return q
}
