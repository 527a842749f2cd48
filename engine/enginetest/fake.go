// Package enginetest holds an in-memory engine.Engine for unit tests, and the
// behaviour suite (Suite) that every real engine must pass too, so that the
// fake cannot drift from what Podman and Docker do.
package enginetest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/edgemigrate/orchestrate/engine"
)

// fakeConfig is the fake archive's config.dump: what Restore needs to
// recreate the container. Podman's archives carry a config.dump too.
type fakeConfig struct {
	ID      string            `json:"id"`
	Name    string            `json:"name"`
	Image   string            `json:"image"`
	ImageID string            `json:"image_id"`
	Labels  map[string]string `json:"labels"`
	Created time.Time         `json:"created"`
	Memory  int64             `json:"memory"`
}

type fakeContainer struct {
	c          engine.Container
	memory     []byte // the "process memory" a checkpoint carries
	checkpoint []byte // kept checkpoint, for Resume
	predump    []byte // memory at the last PreCheckpoint (fake_precopy.go)
}

// Fake is an in-memory engine. It is safe for concurrent use. Hooks let tests
// inject failures at each step.
type Fake struct {
	mu         sync.Mutex
	containers map[string]*fakeContainer // by ID
	images     map[string]string         // image ID -> name
	features   engine.Features

	// FailCheckpoint, when set, is called before a checkpoint; a non-nil
	// error fails it (the container keeps running).
	FailCheckpoint func(id string) error
	// FailRestore, when set, is called after the archive was read; a
	// non-nil error fails the restore (nothing is created).
	FailRestore func(cfg engine.Container) error
}

var _ engine.Engine = (*Fake)(nil)

// NewFake returns an empty fake engine.
func NewFake() *Fake {
	return &Fake{
		containers: map[string]*fakeContainer{},
		images:     map[string]string{},
		features:   engine.Features{Engine: "fake", EngineVersion: "1", CRIUVersion: "4.2.1", Kernel: "6.18.0", Arch: "amd64"},
	}
}

// SetFeatures replaces what Features reports.
func (f *Fake) SetFeatures(ft engine.Features) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.features = ft
}

// AddImage makes an image present and returns its ID.
func (f *Fake) AddImage(name string) string {
	id := imageID(name)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.images[id] = name
	return id
}

func imageID(name string) string {
	sum := make([]byte, 32)
	copy(sum, name)
	return hex.EncodeToString(sum)
}

// Run starts a container with memBytes of random memory, adding its image
// if needed, and returns it.
func (f *Fake) Run(name, image string, memBytes int64, labels map[string]string) engine.Container {
	imgID := f.AddImage(image)
	mem := make([]byte, memBytes)
	_, _ = rand.Read(mem)
	id := newID()
	c := engine.Container{
		ID: id, Name: name, Image: image, ImageID: imgID, State: "running", Running: true,
		Labels: labels, Created: time.Now().UTC(), MemoryBytes: memBytes,
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.containers[id] = &fakeContainer{c: c, memory: mem}
	return c
}

// RunReported starts a container that reports memBytes of memory use but
// carries only payload bytes of "memory" in its checkpoints: scale tests
// place thousands of sizeable containers without allocating their memory.
func (f *Fake) RunReported(name, image string, memBytes int64, payload int, labels map[string]string) engine.Container {
	c := f.Run(name, image, int64(payload), labels)
	f.mu.Lock()
	defer f.mu.Unlock()
	fc := f.containers[c.ID]
	fc.c.MemoryBytes = memBytes
	return fc.c
}

// Memory returns a copy of a container's memory, so tests can compare it
// before and after a round trip.
func (f *Fake) Memory(id string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fc, err := f.lookup(id)
	if err != nil {
		return nil, err
	}
	return bytes.Clone(fc.memory), nil
}

func newID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// lookup finds a container by ID, ID prefix or name. Callers hold f.mu.
func (f *Fake) lookup(ref string) (*fakeContainer, error) {
	if fc, ok := f.containers[ref]; ok {
		return fc, nil
	}
	for id, fc := range f.containers {
		if fc.c.Name == ref || (len(ref) >= 12 && len(ref) < len(id) && id[:len(ref)] == ref) {
			return fc, nil
		}
	}
	return nil, fmt.Errorf("container %s: %w", ref, engine.ErrNotFound)
}

// Checkpoint implements engine.Checkpointer.
func (f *Fake) Checkpoint(ctx context.Context, id string, w io.Writer, opts engine.CheckpointOptions) (engine.Stats, error) {
	start := time.Now()
	f.mu.Lock()
	fc, err := f.lookup(id)
	if err != nil {
		f.mu.Unlock()
		return engine.Stats{}, err
	}
	if !fc.c.Running {
		f.mu.Unlock()
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w", id, engine.ErrNotRunning)
	}
	if f.FailCheckpoint != nil {
		if err := f.FailCheckpoint(fc.c.ID); err != nil {
			f.mu.Unlock()
			return engine.Stats{}, fmt.Errorf("checkpoint %s: %w", id, err)
		}
	}
	archive, err := fakeArchive(fc)
	if err != nil {
		f.mu.Unlock()
		return engine.Stats{}, err
	}
	if !opts.LeaveRunning {
		fc.c.Running, fc.c.State = false, "exited"
		if opts.Keep {
			fc.checkpoint = archive
			fc.c.Checkpointed = true
		}
	}
	f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return engine.Stats{}, err
	}
	n, err := w.Write(archive)
	st := engine.Stats{Duration: time.Since(start), Bytes: int64(n)}
	if err != nil {
		return st, fmt.Errorf("checkpoint %s: write archive: %w", id, err)
	}
	return st, nil
}

func fakeArchive(fc *fakeContainer) ([]byte, error) {
	cfg, err := json.Marshal(fakeConfig{
		ID: fc.c.ID, Name: fc.c.Name, Image: fc.c.Image, ImageID: fc.c.ImageID,
		Labels: fc.c.Labels, Created: fc.c.Created, Memory: fc.c.MemoryBytes,
	})
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range []struct {
		name string
		data []byte
	}{{"config.dump", cfg}, {"checkpoint/pages-1.img", fc.memory}} {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o600, Size: int64(len(e.data)), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Restore implements engine.Restorer. The whole stream is read (and any
// error from the reader, such as a failed verification, fails the restore)
// before anything is created.
func (f *Fake) Restore(ctx context.Context, r io.Reader, opts engine.RestoreOptions) (engine.Container, engine.Stats, error) {
	start := time.Now()
	data, err := io.ReadAll(r)
	if err != nil {
		return engine.Container{}, engine.Stats{}, fmt.Errorf("restore: read archive: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return engine.Container{}, engine.Stats{}, err
	}
	cfg, mem, err := parseFakeArchive(data)
	if err != nil {
		return engine.Container{}, engine.Stats{}, fmt.Errorf("restore: %w: %v", engine.ErrBadArchive, err)
	}
	c := engine.Container{
		ID: cfg.ID, Name: cfg.Name, Image: cfg.Image, ImageID: cfg.ImageID, State: "running", Running: true,
		Labels: cfg.Labels, Created: cfg.Created, MemoryBytes: cfg.Memory,
	}
	if opts.Name != "" {
		c.Name, c.ID = opts.Name, newID()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.images[c.ImageID]; !ok {
		return engine.Container{}, engine.Stats{}, fmt.Errorf("restore %s: image %s: %w", c.Name, c.ImageID, engine.ErrNotFound)
	}
	for _, other := range f.containers {
		if other.c.ID == c.ID || other.c.Name == c.Name {
			return engine.Container{}, engine.Stats{}, fmt.Errorf("restore %s: a container with that name or ID already exists", c.Name)
		}
	}
	if f.FailRestore != nil {
		if err := f.FailRestore(c); err != nil {
			return engine.Container{}, engine.Stats{}, fmt.Errorf("restore %s: %w", c.Name, err)
		}
	}
	f.containers[c.ID] = &fakeContainer{c: c, memory: mem}
	return c, engine.Stats{Duration: time.Since(start), Bytes: int64(len(data))}, nil
}

func parseFakeArchive(data []byte) (fakeConfig, []byte, error) {
	var cfg fakeConfig
	var mem []byte
	var haveCfg, haveMem bool
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return cfg, nil, err
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return cfg, nil, err
		}
		switch h.Name {
		case "config.dump":
			if err := json.Unmarshal(b, &cfg); err != nil {
				return cfg, nil, fmt.Errorf("config.dump: %v", err)
			}
			haveCfg = true
		case "checkpoint/pages-1.img":
			mem, haveMem = b, true
		}
	}
	if !haveCfg || !haveMem {
		return cfg, nil, errors.New("archive lacks config.dump or memory pages")
	}
	return cfg, mem, nil
}

// Resume implements engine.Resumer.
func (f *Fake) Resume(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fc, err := f.lookup(id)
	if err != nil {
		return err
	}
	if fc.c.Running {
		return nil
	}
	if fc.checkpoint == nil {
		return fmt.Errorf("resume %s: %w", id, engine.ErrNoCheckpoint)
	}
	fc.c.Running, fc.c.State, fc.c.Checkpointed, fc.checkpoint = true, "running", false, nil
	return nil
}

// List implements engine.Lister.
func (f *Fake) List(ctx context.Context) ([]engine.Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]engine.Container, 0, len(f.containers))
	for _, fc := range f.containers {
		out = append(out, fc.c)
	}
	return out, nil
}

// Inspect implements engine.Lister.
func (f *Fake) Inspect(ctx context.Context, id string) (engine.Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fc, err := f.lookup(id)
	if err != nil {
		return engine.Container{}, err
	}
	return fc.c, nil
}

// Remove implements engine.Remover.
func (f *Fake) Remove(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fc, err := f.lookup(id)
	if err != nil {
		return err
	}
	delete(f.containers, fc.c.ID)
	return nil
}

// HasImage implements engine.Images.
func (f *Fake) HasImage(ctx context.Context, ref string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.images[ref]; ok {
		return true, nil
	}
	for _, name := range f.images {
		if name == ref {
			return true, nil
		}
	}
	return false, nil
}

// ExportImage implements engine.Images: the archive is the image's name.
func (f *Fake) ExportImage(ctx context.Context, ref string, w io.Writer) error {
	f.mu.Lock()
	name, ok := f.images[ref]
	if !ok {
		for _, n := range f.images {
			if n == ref {
				name, ok = n, true
			}
		}
	}
	f.mu.Unlock()
	if !ok {
		return fmt.Errorf("export image %s: %w", ref, engine.ErrNotFound)
	}
	_, err := io.WriteString(w, "fake-image:"+name)
	return err
}

// LoadImage implements engine.Images.
func (f *Fake) LoadImage(ctx context.Context, r io.Reader) (string, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return "", fmt.Errorf("load image: %w", err)
	}
	name, ok := bytes.CutPrefix(b, []byte("fake-image:"))
	if !ok {
		return "", errors.New("load image: not an image archive")
	}
	return f.AddImage(string(name)), nil
}

// Features implements engine.FeatureReporter.
func (f *Fake) Features(ctx context.Context) (engine.Features, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.features, nil
}
