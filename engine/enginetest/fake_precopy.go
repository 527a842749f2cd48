package enginetest

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/edgemigrate/orchestrate/engine"
)

// The fake's engine pre-copy models CRIU's: PreCheckpoint copies the whole
// memory into a pre-dump archive (pre-checkpoint/pages-1.img) and remembers
// it as the container's dirty-tracking base; CheckpointWithPrevious writes
// only the pages that differ from that base (checkpoint/pages-dirty.img:
// page index, then page) next to a checkpoint/parent link. It works only
// when Features.PreCopy is true, like CRIU without soft-dirty tracking.

var _ engine.PreCopier = (*Fake)(nil)

const (
	fakePage      = 4096
	fakePreDump   = "pre-checkpoint/pages-1.img"
	fakeDirtyFile = "checkpoint/pages-dirty.img"
)

// errNoTracking is the fake's CRIU error where the kernel tracks no dirty pages.
var errNoTracking = fmt.Errorf("%w: tracking memory is not available", engine.ErrCRIU)

// Write changes a running container's memory at off, as its process would.
func (f *Fake) Write(id string, off int64, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fc, err := f.lookup(id)
	if err != nil {
		return err
	}
	if off < 0 || off+int64(len(p)) > int64(len(fc.memory)) {
		return fmt.Errorf("write %s: %d bytes at %d outside its %d", id, len(p), off, len(fc.memory))
	}
	copy(fc.memory[off:], p)
	return nil
}

// PreCheckpoint implements engine.PreCopier.
func (f *Fake) PreCheckpoint(ctx context.Context, id string, w io.Writer) (engine.Stats, error) {
	start := time.Now()
	f.mu.Lock()
	fc, err := f.lookup(id)
	switch {
	case err != nil:
	case !fc.c.Running:
		err = fmt.Errorf("pre-checkpoint %s: %w", id, engine.ErrNotRunning)
	case !f.features.PreCopy:
		err = fmt.Errorf("pre-checkpoint %s: %w", id, errNoTracking)
	}
	if err != nil {
		f.mu.Unlock()
		return engine.Stats{}, err
	}
	fc.predump = bytes.Clone(fc.memory)
	archive, err := fakeTar(map[string][]byte{"config.dump": fakeConfigOf(fc), fakePreDump: fc.predump})
	f.mu.Unlock()
	if err != nil {
		return engine.Stats{}, err
	}
	n, err := w.Write(archive)
	st := engine.Stats{Duration: time.Since(start), Bytes: int64(n), PagesWritten: uint64(len(fc.predump) / fakePage)}
	if err != nil {
		return st, fmt.Errorf("pre-checkpoint %s: write archive: %w", id, err)
	}
	return st, nil
}

// CheckpointWithPrevious implements engine.PreCopier.
func (f *Fake) CheckpointWithPrevious(ctx context.Context, id string, w io.Writer, opts engine.CheckpointOptions) (engine.Stats, error) {
	start := time.Now()
	f.mu.Lock()
	fc, err := f.lookup(id)
	switch {
	case err != nil:
	case !fc.c.Running:
		err = fmt.Errorf("checkpoint %s: %w", id, engine.ErrNotRunning)
	case fc.predump == nil:
		err = fmt.Errorf("checkpoint %s with previous: no pre-checkpoint", id)
	case f.FailCheckpoint != nil:
		if ferr := f.FailCheckpoint(fc.c.ID); ferr != nil {
			err = fmt.Errorf("checkpoint %s: %w", id, ferr)
		}
	}
	if err != nil {
		f.mu.Unlock()
		return engine.Stats{}, err
	}
	var dirty bytes.Buffer
	pages := 0
	for off := 0; off < len(fc.memory); off += fakePage {
		end := min(off+fakePage, len(fc.memory))
		if off < len(fc.predump) && end <= len(fc.predump) && bytes.Equal(fc.memory[off:end], fc.predump[off:end]) {
			continue
		}
		_ = binary.Write(&dirty, binary.BigEndian, uint64(off))
		dirty.Write(fc.memory[off:end])
		pages++
	}
	archive, err := fakeTar(map[string][]byte{"config.dump": fakeConfigOf(fc), fakeDirtyFile: dirty.Bytes()})
	if err != nil {
		f.mu.Unlock()
		return engine.Stats{}, err
	}
	if !opts.LeaveRunning {
		fc.c.Running, fc.c.State = false, "exited"
		if opts.Keep {
			// Resume restores in place from memory the fake still has.
			full, ferr := fakeArchive(fc)
			if ferr != nil {
				f.mu.Unlock()
				return engine.Stats{}, ferr
			}
			fc.checkpoint, fc.c.Checkpointed = full, true
		}
	}
	f.mu.Unlock()
	n, err := w.Write(archive)
	st := engine.Stats{Duration: time.Since(start), Bytes: int64(n), PagesWritten: uint64(pages)}
	if err != nil {
		return st, fmt.Errorf("checkpoint %s: write archive: %w", id, err)
	}
	return st, nil
}

// RestoreWithPrevious implements engine.PreCopier: the pre-dump's memory
// with the final archive's dirty pages laid over it.
func (f *Fake) RestoreWithPrevious(ctx context.Context, prev io.ReaderAt, size int64, r io.Reader, opts engine.RestoreOptions) (engine.Container, engine.Stats, error) {
	final, err := io.ReadAll(r)
	if err != nil {
		return engine.Container{}, engine.Stats{}, fmt.Errorf("restore: read archive: %w", err)
	}
	pre, err := io.ReadAll(io.NewSectionReader(prev, 0, size))
	if err != nil {
		return engine.Container{}, engine.Stats{}, fmt.Errorf("restore: read pre-dump: %w", err)
	}
	preFiles, err := readFakeTar(pre)
	if err != nil || preFiles[fakePreDump] == nil {
		return engine.Container{}, engine.Stats{}, fmt.Errorf("restore: %w: pre-dump archive (%v)", engine.ErrBadArchive, err)
	}
	files, err := readFakeTar(final)
	if err != nil || files["config.dump"] == nil || files[fakeDirtyFile] == nil {
		return engine.Container{}, engine.Stats{}, fmt.Errorf("restore: %w: final archive (%v)", engine.ErrBadArchive, err)
	}
	mem := bytes.Clone(preFiles[fakePreDump])
	for d := files[fakeDirtyFile]; len(d) > 0; {
		if len(d) < 8 {
			return engine.Container{}, engine.Stats{}, fmt.Errorf("restore: %w: truncated dirty page", engine.ErrBadArchive)
		}
		off := binary.BigEndian.Uint64(d)
		n := min(fakePage, len(d)-8)
		if off+uint64(n) > uint64(len(mem)) {
			return engine.Container{}, engine.Stats{}, fmt.Errorf("restore: %w: dirty page at %d outside memory", engine.ErrBadArchive, off)
		}
		copy(mem[off:], d[8:8+n])
		d = d[8+n:]
	}
	whole, err := fakeTar(map[string][]byte{"config.dump": files["config.dump"], "checkpoint/pages-1.img": mem})
	if err != nil {
		return engine.Container{}, engine.Stats{}, err
	}
	c, st, err := f.Restore(ctx, bytes.NewReader(whole), opts)
	st.Bytes = int64(len(final))
	return c, st, err
}

func fakeConfigOf(fc *fakeContainer) []byte {
	b, _ := json.Marshal(fakeConfig{
		ID: fc.c.ID, Name: fc.c.Name, Image: fc.c.Image, ImageID: fc.c.ImageID,
		Labels: fc.c.Labels, Created: fc.c.Created, Memory: fc.c.MemoryBytes,
	})
	return b
}

// fakeTar writes files (config.dump first) into a tar archive.
func fakeTar(files map[string][]byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := []string{"config.dump"}
	for name := range files {
		if name != "config.dump" {
			names = append(names, name)
		}
	}
	for _, name := range names {
		data := files[name]
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func readFakeTar(data []byte) (map[string][]byte, error) {
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, nil
		}
		if err != nil {
			return files, err
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return files, err
		}
		files[h.Name] = b
	}
}
