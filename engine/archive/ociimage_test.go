package archive

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestNormalizeImageName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"ckpt", "localhost/ckpt:latest"},
		{"ckpt:v1", "localhost/ckpt:v1"},
		{"team/ckpt", "localhost/team/ckpt:latest"},
		{"localhost/ckpt", "localhost/ckpt:latest"},
		{"10.99.0.1:5000/ckpt", "10.99.0.1:5000/ckpt:latest"},
		{"quay.io/org/ckpt:2026-01-02", "quay.io/org/ckpt:2026-01-02"},
		{"registry.local/ckpt@sha256:" + strings.Repeat("ab", 32), "registry.local/ckpt@sha256:" + strings.Repeat("ab", 32)},
		{"", ""},
		{"Upper", ""},
		{"bad name", ""},
		{"a:b:c", ""},
	} {
		got, err := NormalizeImageName(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("NormalizeImageName(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("NormalizeImageName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestCRIUVersionNumber(t *testing.T) {
	for in, want := range map[string]string{"4.2.1": "40201", "3.17": "31700", "4": "40000", "": "", "4.2.1-rc1": "4.2.1-rc1", "1.2.3.4": "1.2.3.4", "4.200.1": "4.200.1"} {
		if got := criuVersionNumber(in); got != want {
			t.Errorf("criuVersionNumber(%q) = %q, want %q", in, got, want)
		}
	}
}

// checkpointWithFacts is the synthetic Podman archive as the agent streams
// it: with its host facts added.
func checkpointWithFacts(t *testing.T) []byte {
	t.Helper()
	var out bytes.Buffer
	fw := HostFactsWriter(&out, HostFacts{Host: "edge-1", At: time.Unix(1, 0), EngineVersion: "4.3.1", CRIUVersion: "4.2.1", Kernel: "6.18.0", Arch: "amd64"})
	if _, err := fw.Write(synthTar(t)); err != nil {
		t.Fatal(err)
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// untar reads a tar into a map of regular files.
func untar(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			out[hdr.Name], _ = io.ReadAll(tr)
		}
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestOCIArchive builds a checkpoint image from the synthetic archive as
// the agent does (identity, annotations, OCI layout) and reads it back as
// Podman would: the index names it, the manifest carries Podman's
// annotations, and the single layer is the archive, byte for byte.
func TestOCIArchive(t *testing.T) {
	ckpt := checkpointWithFacts(t)
	id, err := ReadIdentity(bytes.NewReader(ckpt))
	if err != nil {
		t.Fatal(err)
	}
	if id.Name != "synth" || id.RootfsImageID != "feedfacecafe0000" || id.Runtime != "runc" || id.Facts == nil || id.Facts.CRIUVersion != "4.2.1" {
		t.Fatalf("identity = %+v", id)
	}
	// The host reports the runtime's version but not CRIU's: the facts fill it.
	ann := CheckpointImageAnnotations(id, ImageHost{PodmanVersion: "4.3.1", RuntimeName: "runc", RuntimeVersion: "runc version 1.1.5", CgroupVersion: "v1", Arch: "amd64"})
	for k, want := range map[string]string{AnnotationCheckpointName: "synth", AnnotationRootfsImageID: "feedfacecafe0000",
		AnnotationRootfsImageName: "localhost/synth:latest", AnnotationCRIUVersion: "40201", AnnotationRuntimeName: "runc",
		AnnotationRuntimeVersion: "runc version 1.1.5", AnnotationHostKernel: "6.18.0", AnnotationPodmanVersion: "4.3.1", AnnotationCgroupVersion: "v1"} {
		if ann[k] != want {
			t.Errorf("annotation %s = %q, want %q", k, ann[k], want)
		}
	}

	created := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	img := OCIImage{Ref: "localhost/ckpt:latest", Annotations: ann, Created: created, Arch: "amd64", LayerSize: int64(len(ckpt)), LayerDigest: "sha256:" + sha(ckpt)}
	var buf bytes.Buffer
	dg, err := WriteOCIArchive(&buf, img, bytes.NewReader(ckpt))
	if err != nil {
		t.Fatal(err)
	}
	files := untar(t, buf.Bytes())
	blob := func(d string) []byte {
		t.Helper()
		b, ok := files["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")]
		if !ok {
			t.Fatalf("no blob %s in %v", d, keys(files))
		}
		if "sha256:"+sha(b) != d {
			t.Fatalf("blob %s holds sha256 %s", d, sha(b))
		}
		return b
	}
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %s", files["oci-layout"])
	}
	var index ocispec.Index
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json %s: %v", files["index.json"], err)
	}
	md := index.Manifests[0]
	if md.Digest.String() != dg.Manifest || md.Annotations[ocispec.AnnotationRefName] != "localhost/ckpt:latest" || md.MediaType != ocispec.MediaTypeImageManifest {
		t.Errorf("index entry %+v, manifest %s", md, dg.Manifest)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(blob(dg.Manifest), &m); err != nil {
		t.Fatal(err)
	}
	if m.SchemaVersion != 2 || m.Config.Digest.String() != dg.Config || len(m.Layers) != 1 || m.Layers[0].MediaType != ocispec.MediaTypeImageLayer {
		t.Fatalf("manifest %+v", m)
	}
	if m.Annotations[AnnotationCheckpointName] != "synth" || m.Annotations[AnnotationRuntimeName] != "runc" {
		t.Errorf("manifest annotations %v", m.Annotations)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(blob(dg.Config), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Architecture != "amd64" || cfg.OS != "linux" || cfg.RootFS.Type != "layers" || len(cfg.RootFS.DiffIDs) != 1 ||
		cfg.RootFS.DiffIDs[0] != m.Layers[0].Digest || cfg.Created == nil || !cfg.Created.Equal(created) {
		t.Errorf("config %+v", cfg)
	}
	if layer := blob(m.Layers[0].Digest.String()); !bytes.Equal(layer, ckpt) {
		t.Errorf("the layer is not the checkpoint archive (%d bytes, want %d)", len(layer), len(ckpt))
	}

	// The layer must be as long as announced; the digest must be sha256.
	short := img
	short.LayerSize++
	if _, err := WriteOCIArchive(io.Discard, short, bytes.NewReader(ckpt)); err == nil {
		t.Error("a short layer was written")
	}
	bad := img
	bad.LayerDigest = "md5:abc"
	if _, err := WriteOCIArchive(io.Discard, bad, bytes.NewReader(ckpt)); err == nil {
		t.Error("a layer digest that is not sha256 was accepted")
	}
	// An archive without config.dump has no identity.
	if _, err := ReadIdentity(bytes.NewReader(tarOf(t, withMember(t, "config.dump", nil)))); !errors.Is(err, ErrNotCheckpoint) {
		t.Errorf("identity of an archive without config.dump: %v", err)
	}
	if _, err := ReadIdentity(bytes.NewReader(tarOf(t, withMember(t, "config.dump", []byte("{"))))); !errors.Is(err, ErrCorrupt) {
		t.Errorf("identity of a corrupt config.dump: %v", err)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// dockerArchive builds a docker-archive as Podman's `podman save` writes
// it: the layer first (<diff id>.tar), the config, the legacy directory,
// manifest.json and repositories.
func dockerArchive(t testing.TB, layers ...[]byte) []byte {
	t.Helper()
	var names []string
	for _, l := range layers {
		names = append(names, sha(l)+".tar")
	}
	return dockerArchiveNamed(t, names, layers)
}

func dockerArchiveNamed(t testing.TB, names []string, layers [][]byte) []byte {
	t.Helper()
	var ms []member2
	for i, l := range layers {
		ms = append(ms, member2{name: names[i], data: l})
	}
	cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
	manifest, err := json.Marshal([]dockerArchiveManifest{{Config: sha(cfg) + ".json", RepoTags: []string{"localhost/ckpt:latest"}, Layers: names}})
	if err != nil {
		t.Fatal(err)
	}
	ms = append(ms, member2{name: sha(cfg) + ".json", data: cfg},
		member2{name: "43f0b73d/VERSION", data: []byte("1.0")},
		member2{name: "manifest.json", data: manifest},
		member2{name: "repositories", data: []byte(`{}`)})
	return tarOf(t, ms)
}

// TestCheckpointLayer reads the checkpoint archive out of a docker-archive
// of a checkpoint image, and refuses every way such an archive can be
// wrong, at the end of the layer, so that a restore fails.
func TestCheckpointLayer(t *testing.T) {
	ckpt := checkpointWithFacts(t)
	read := func(b []byte) ([]byte, error) {
		r, err := CheckpointLayer(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		defer r.Close()
		return io.ReadAll(r)
	}
	got, err := read(dockerArchive(t, ckpt))
	if err != nil || !bytes.Equal(got, ckpt) {
		t.Fatalf("layer: %d bytes (want %d), %v", len(got), len(ckpt), err)
	}

	// A gzip layer (named after its compressed digest) comes out decompressed.
	if got, err := read(dockerArchive(t, gzipOf(t, ckpt))); err != nil || !bytes.Equal(got, ckpt) {
		t.Errorf("gzip layer: %d bytes, %v", len(got), err)
	}

	// A layer whose bytes do not match its name.
	renamed := dockerArchiveNamed(t, []string{strings.Repeat("0", 64) + ".tar"}, [][]byte{ckpt})
	if got, err := read(renamed); !errors.Is(err, ErrCorrupt) || len(got) != len(ckpt) {
		t.Errorf("layer with a wrong digest: %d bytes, %v; want all of it, then an error", len(got), err)
	}
	// Two layers: not a checkpoint image.
	if _, err := read(dockerArchive(t, ckpt, []byte("second"))); !errors.Is(err, ErrNotCheckpointImage) {
		t.Errorf("two layers: %v", err)
	}
	// No layer at all.
	if _, err := read(tarOf(t, []member2{{name: "manifest.json", data: []byte("[]")}})); !errors.Is(err, ErrNotCheckpointImage) {
		t.Errorf("no layer: %v", err)
	}
	// No manifest.json after the layer.
	if _, err := read(tarOf(t, []member2{{name: sha(ckpt) + ".tar", data: ckpt}})); !errors.Is(err, ErrNotCheckpointImage) {
		t.Errorf("no manifest.json: %v", err)
	}
	// Cut in the layer, or after it: never a clean EOF.
	full := dockerArchive(t, ckpt)
	for _, n := range []int{len(ckpt) / 2, len(ckpt) + 1024 + 512} {
		got, err := read(full[:n])
		if err == nil {
			t.Errorf("archive cut at %d of %d: read %d bytes without an error", n, len(full), len(got))
		}
	}
	// Not a tar.
	if _, err := read([]byte(strings.Repeat("not a tar archive ", 100))); err == nil {
		t.Error("garbage accepted")
	}
}

// FuzzCheckpointLayer: whatever the image archive, reading its layer ends
// in data and an error or a verified EOF, never a panic.
func FuzzCheckpointLayer(f *testing.F) {
	f.Add(dockerArchive(f, []byte("a small layer")))
	f.Add(dockerArchive(f, []byte("one"), []byte("two")))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := CheckpointLayer(bytes.NewReader(b))
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, r)
		r.Close()
	})
}
