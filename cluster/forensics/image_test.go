package forensics

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/archive"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
)

// fakeImages is the fake engine with checkpoint images: it loads OCI
// archives as Podman does (the index names the image, the manifest's
// annotations are kept, the layer is checked against its digest), exports
// docker-archives as `podman save` does, and pushes to and pulls from a
// registry shared by the world's hosts.
type fakeImages struct {
	*enginetest.Fake
	mu    sync.Mutex
	local map[string]*fakeImage // by name and by ID
	reg   *fakeRegistry
	// corruptExport flips a byte in the layer of every export.
	corruptExport bool
}

type fakeImage struct {
	id          string
	names       []string
	annotations map[string]string
	layer       []byte
}

// fakeRegistry speaks plain HTTP only, as a local test registry does: a
// client that verifies TLS fails as Podman does against it.
type fakeRegistry struct {
	mu     sync.Mutex
	images map[string]*fakeImage
}

var _ engine.CheckpointImages = (*fakeImages)(nil)

func newFakeImages(reg *fakeRegistry) *fakeImages {
	f := &fakeImages{Fake: enginetest.NewFake(), local: map[string]*fakeImage{}, reg: reg}
	f.AddImage("img")
	return f
}

func (f *fakeImages) HostInfo(ctx context.Context) (engine.HostInfo, error) {
	return engine.HostInfo{EngineVersion: "4.3.1", RuntimeName: "runc", RuntimeVersion: "runc version 1.1.5", CgroupVersion: "v1", Arch: "amd64", Kernel: "6.18.0"}, nil
}

func (f *fakeImages) LoadImage(ctx context.Context, r io.Reader) (string, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return "", fmt.Errorf("load image: %w", err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("load image: %w", err)
		}
		files[hdr.Name], _ = io.ReadAll(tr)
	}
	blob := func(d fmt.Stringer) ([]byte, error) {
		b, ok := files["blobs/sha256/"+strings.TrimPrefix(d.String(), "sha256:")]
		if !ok || "sha256:"+shaHex(b) != d.String() {
			return nil, fmt.Errorf("load image: blob %s missing or corrupt", d)
		}
		return b, nil
	}
	var index ocispec.Index
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		return "", fmt.Errorf("load image: index.json: %v", err)
	}
	mb, err := blob(index.Manifests[0].Digest)
	if err != nil {
		return "", err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(mb, &m); err != nil || len(m.Layers) != 1 {
		return "", fmt.Errorf("load image: manifest: %v", err)
	}
	if _, err := blob(m.Config.Digest); err != nil {
		return "", err
	}
	layer, err := blob(m.Layers[0].Digest)
	if err != nil {
		return "", err
	}
	name := index.Manifests[0].Annotations[ocispec.AnnotationRefName]
	img := &fakeImage{id: m.Config.Digest.Encoded(), names: []string{name}, annotations: m.Annotations, layer: layer}
	f.mu.Lock()
	f.local[name], f.local[img.id] = img, img
	f.mu.Unlock()
	return name, nil
}

func (f *fakeImages) lookup(ref string) (*fakeImage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if img, ok := f.local[ref]; ok {
		return img, nil
	}
	if ok, _ := f.Fake.HasImage(context.Background(), ref); ok {
		return &fakeImage{id: ref, names: []string{ref}}, nil // a plain image: no annotations
	}
	return nil, fmt.Errorf("image %s: %w", ref, engine.ErrNotFound)
}

func (f *fakeImages) ImageInfo(ctx context.Context, ref string) (engine.ImageInfo, error) {
	img, err := f.lookup(ref)
	if err != nil {
		return engine.ImageInfo{}, err
	}
	return engine.ImageInfo{ID: img.id, Names: img.names, Annotations: img.annotations}, nil
}

// ExportImage writes a docker-archive as Podman does: the layer first.
func (f *fakeImages) ExportImage(ctx context.Context, ref string, w io.Writer) error {
	img, err := f.lookup(ref)
	if err != nil {
		return err
	}
	layer := img.layer
	if f.corruptExport {
		layer = bytes.Clone(layer)
		layer[len(layer)/2] ^= 0xff
	}
	name := shaHex(img.layer) + ".tar"
	manifest, _ := json.Marshal([]map[string]any{{"Config": img.id + ".json", "RepoTags": img.names, "Layers": []string{name}}})
	tw := tar.NewWriter(w)
	for _, e := range []struct {
		name string
		data []byte
	}{{name, layer}, {img.id + ".json", []byte(`{}`)}, {"manifest.json", manifest}} {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o444, Size: int64(len(e.data)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		if _, err := tw.Write(e.data); err != nil {
			return err
		}
	}
	return tw.Close()
}

func (f *fakeImages) PushImage(ctx context.Context, ref string, o engine.RegistryOptions) error {
	if o.TLSVerify {
		return fmt.Errorf("push image %s: http: server gave HTTP response to HTTPS client", ref)
	}
	img, err := f.lookup(ref)
	if err != nil {
		return err
	}
	f.reg.mu.Lock()
	defer f.reg.mu.Unlock()
	f.reg.images[ref] = img
	return nil
}

func (f *fakeImages) PullImage(ctx context.Context, ref string, o engine.RegistryOptions) (string, error) {
	if o.TLSVerify {
		return "", fmt.Errorf("pull image %s: http: server gave HTTP response to HTTPS client", ref)
	}
	f.reg.mu.Lock()
	img, ok := f.reg.images[ref]
	f.reg.mu.Unlock()
	if !ok {
		return "", fmt.Errorf("pull image %s: manifest unknown", ref)
	}
	f.mu.Lock()
	f.local[ref], f.local[img.id] = img, img
	f.mu.Unlock()
	return img.id, nil
}

func shaHex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestImageRef(t *testing.T) {
	for _, tc := range []struct{ registry, name, want string }{
		{"", "ckpt", "localhost/ckpt:latest"},
		{"", "quay.io/org/ckpt:1", "quay.io/org/ckpt:1"},
		{"10.99.0.1:5000", "ckpt", "10.99.0.1:5000/ckpt:latest"},
		{"10.99.0.1:5000/", "team/ckpt:v2", "10.99.0.1:5000/team/ckpt:v2"},
		{"10.99.0.1:5000", "10.99.0.1:5000/ckpt", "10.99.0.1:5000/ckpt:latest"},
		{"registry.local/checkpoints", "web", "registry.local/checkpoints/web:latest"},
		{"10.99.0.1:5000", "quay.io/org/ckpt", ""}, // another registry
		{"10.99.0.1:5000", "localhost/ckpt", ""},
		{"", "Bad Name", ""},
	} {
		got, err := ImageRef(tc.registry, tc.name)
		if tc.want == "" {
			if err == nil {
				t.Errorf("ImageRef(%q, %q) = %q, want an error", tc.registry, tc.name, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ImageRef(%q, %q) = %q, %v; want %q", tc.registry, tc.name, got, err, tc.want)
		}
	}
}

// TestCheckpointImage builds checkpoint images through another host's
// agent (loaded, pushed, streamed), restores one on another host from the
// registry through CheckpointImageArchive with the memory it had, and makes
// each failure happen: a push that TLS refuses, an engine without images,
// an image that is not a checkpoint, a corrupt export.
func TestCheckpointImage(t *testing.T) {
	reg := &fakeRegistry{images: map[string]*fakeImage{}}
	w := newWorldWith(t, func(string) Engine { return newFakeImages(reg) }, "h1", "h2")
	ctx := context.Background()
	e1, e2 := w.hosts["h1"].eng.(*fakeImages), w.hosts["h2"].eng.(*fakeImages)
	web := e1.Run("web", "img", 1<<20, nil)
	mem, _ := e1.Memory(web.ID)
	spoolDir := filepath.Join(w.hosts["h1"].agent.cfg.DataDir, ImageDir)

	// Loaded on h1, asked through h2; the container stops (no --leave-running).
	res, err := BuildImage(ctx, w.client("h2"), CheckpointRequest{Container: "web", Image: "ckpt"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Image != "localhost/ckpt:latest" || !res.Loaded || res.Pushed || res.Host != "h1" || res.Name != "web" || res.LayerSize == 0 || len(res.ImageID) != 64 {
		t.Fatalf("result %+v", res)
	}
	info, err := e1.ImageInfo(ctx, "localhost/ckpt:latest")
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != res.ImageID || info.Annotations[archive.AnnotationCheckpointName] != "web" || info.Annotations[archive.AnnotationRuntimeName] != "runc" ||
		info.Annotations[archive.AnnotationPodmanVersion] != "4.3.1" {
		t.Fatalf("loaded image %+v", info)
	}
	if c, _ := e1.Inspect(ctx, web.ID); c.Running {
		t.Fatal("web runs after a checkpoint image without leave-running")
	}
	if names := ls(t, spoolDir); len(names) != 0 {
		t.Fatalf("spool left behind: %v", names)
	}
	if err := e1.Resume(ctx, web.ID); err != nil {
		t.Fatal(err)
	}

	// A push TLS refuses (the registry speaks plain HTTP and the host
	// verifies by default): an error, and web keeps running.
	_, err = BuildImage(ctx, w.client("h2"), CheckpointRequest{Container: "web", Image: "ckpt", Registry: "reg.test:5000"})
	if err == nil || !strings.Contains(err.Error(), "push") || !strings.Contains(err.Error(), "HTTPS") {
		t.Fatalf("push to a plain-HTTP registry with TLS verification: %v", err)
	}
	if c, _ := e1.Inspect(ctx, web.ID); !c.Running {
		t.Fatal("web left stopped after a failed push")
	}

	// With verification off: pushed as REGISTRY/NAME.
	off := false
	res, err = BuildImage(ctx, w.client("h1"), CheckpointRequest{Container: "web", Image: "ckpt:v1", Registry: "reg.test:5000", TLSVerify: &off, LeaveRunning: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Image != "reg.test:5000/ckpt:v1" || !res.Pushed || !res.LeaveRunning {
		t.Fatalf("pushed result %+v", res)
	}

	// h2 pulls it and restores web with the memory it had.
	if _, _, err := CheckpointImageArchive(ctx, e2, res.Image, engine.RegistryOptions{TLSVerify: true}); err == nil {
		t.Fatal("pulled from a plain-HTTP registry with TLS verification")
	}
	rc, got, err := CheckpointImageArchive(ctx, e2, res.Image, engine.RegistryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != res.ImageID || got.Annotations[archive.AnnotationCheckpointName] != "web" {
		t.Fatalf("image info %+v", got)
	}
	restored, _, err := e2.Restore(ctx, rc, engine.RestoreOptions{})
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := e2.Memory(restored.ID); restored.Name != "web" || restored.ID != web.ID || !bytes.Equal(m, mem) {
		t.Fatalf("restored %+v with %d bytes of memory (want the %d it had)", restored, len(m), len(mem))
	}
	// A second copy under another name, from a second stream.
	rc, _, err = CheckpointImageArchive(ctx, e2, res.Image, engine.RegistryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c, _, err := e2.Restore(ctx, rc, engine.RestoreOptions{Name: "web-2"}); err != nil || c.Name != "web-2" {
		t.Fatalf("second copy: %+v, %v", c, err)
	}
	rc.Close()

	// Refusals on the restoring side.
	if _, _, err := CheckpointImageArchive(ctx, e2, "img", engine.RegistryOptions{}); !errors.Is(err, archive.ErrNotCheckpointImage) {
		t.Errorf("a plain image: %v", err)
	}
	if _, _, err := CheckpointImageArchive(ctx, e2, "reg.test:5000/missing:1", engine.RegistryOptions{}); err == nil || !strings.Contains(err.Error(), "manifest unknown") {
		t.Errorf("a missing image: %v", err)
	}
	e2.corruptExport = true
	rc, _, err = CheckpointImageArchive(ctx, e2, res.Image, engine.RegistryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c, _, err := e2.Restore(ctx, rc, engine.RestoreOptions{Name: "web-3"}); !errors.Is(err, archive.ErrCorrupt) {
		t.Errorf("restore from a corrupt export: %+v, %v", c, err)
	}
	rc.Close()
	if _, err := e2.Inspect(ctx, "web-3"); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("a corrupt export left a container: %v", err)
	}

	// Streamed as an OCI archive: the layer is the checkpoint archive.
	var buf bytes.Buffer
	sres, err := StreamImage(ctx, w.client("h2"), CheckpointRequest{Container: "web", Host: "h1", Image: "ckpt", LeaveRunning: true}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if sres.Size != int64(buf.Len()) || sres.SHA256 != shaHex(buf.Bytes()) || sres.Loaded || sres.Image != "localhost/ckpt:latest" {
		t.Fatalf("streamed result %+v for %d bytes", sres, buf.Len())
	}
	e3 := newFakeImages(reg)
	if name, err := e3.LoadImage(ctx, bytes.NewReader(buf.Bytes())); err != nil || name != "localhost/ckpt:latest" {
		t.Fatalf("load the streamed archive: %q, %v", name, err)
	}
	id, err := archive.ReadIdentity(bytes.NewReader(e3.local["localhost/ckpt:latest"].layer))
	if err != nil || id.Name != "web" || id.ID != web.ID {
		t.Fatalf("the streamed image's layer: %+v, %v", id, err)
	}
	if c, _ := e1.Inspect(ctx, web.ID); !c.Running {
		t.Fatal("web stopped after leave-running images")
	}

	// Refusals on the building side, before anything is checkpointed.
	if _, err := BuildImage(ctx, w.client("h1"), CheckpointRequest{Container: "web", Host: "h1", Image: "Bad Name"}); !errors.Is(err, cluster.ErrInvalid) {
		t.Errorf("a bad image name: %v", err)
	}
	var rec cluster.SnapshotRecord
	if err := w.client("h1").Do(ctx, http.MethodPost, "/v1/checkpoint", CheckpointRequest{Container: "web", Host: "h1", Image: "ckpt", Store: true}, &rec); !errors.Is(err, cluster.ErrInvalid) {
		t.Errorf("an image into the snapshot store: %v", err)
	}
	if _, err := StreamImage(ctx, w.client("h1"), CheckpointRequest{Container: "nope", Image: "ckpt"}, io.Discard); !errors.Is(err, cluster.ErrNotFound) {
		t.Errorf("an image of a missing container: %v", err)
	}
	plain := newWorld(t, "p1")
	pw := plain.hosts["p1"].eng.(*enginetest.Fake).Run("web", "img", 1<<20, nil)
	if _, err := BuildImage(ctx, plain.client("p1"), CheckpointRequest{Container: "web", Image: "ckpt"}); !errors.Is(err, cluster.ErrInvalid) || !strings.Contains(err.Error(), "cannot build checkpoint images") {
		t.Errorf("an engine without images: %v", err)
	}
	if c, _ := plain.hosts["p1"].eng.Inspect(ctx, pw.ID); !c.Running || c.Checkpointed {
		t.Errorf("an engine without images checkpointed anyway: %+v", c)
	}
	if names := ls(t, spoolDir); len(names) != 0 {
		t.Fatalf("spool left behind: %v", names)
	}
}

// TestStaleSpools: the prune removes image spools a crash left, and only
// those older than the grace.
func TestStaleSpools(t *testing.T) {
	reg := &fakeRegistry{images: map[string]*fakeImage{}}
	w := newWorldWith(t, func(string) Engine { return newFakeImages(reg) }, "h1")
	a := w.hosts["h1"].agent
	dir := filepath.Join(a.cfg.DataDir, ImageDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	old, fresh := filepath.Join(dir, "layer-1.tar"), filepath.Join(dir, "layer-2.tar")
	for _, p := range []string{old, fresh} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.Chtimes(old, time.Now().Add(-time.Hour), time.Now().Add(-time.Hour))
	if _, err := a.prune(context.Background(), a.cfg.Retention); err != nil {
		t.Fatal(err)
	}
	if names := ls(t, dir); len(names) != 1 || names[0] != "layer-2.tar" {
		t.Fatalf("spools after prune: %v", names)
	}
}
