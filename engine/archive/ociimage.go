package archive

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Checkpoint images are what `podman container checkpoint --create-image`
// builds (Podman 4.3, libpod/container_internal_common.go,
// createCheckpointImage): an OCI image from scratch with a single layer
// whose content is the checkpoint archive's (what --export writes:
// config.dump, spec.dump, checkpoint/, rootfs-diff.tar, ...), and the
// annotations below on its manifest. `podman container restore IMAGE`
// restores from such an image, and only when the manifest names the
// runtime the restoring host uses (cmd/podman/utils.IsCheckpointImage).
// Docker-format manifests have no annotations: a checkpoint image saved with
// a plain `podman save` (docker-archive) loses them and Podman no longer
// restores it; `podman save --format oci-archive` and registries keep them.
//
// Podman's checkpoint image annotations (libpod/define/annotations.go).
const (
	AnnotationCheckpointName      = "io.podman.annotations.checkpoint.name"          // the container's name
	AnnotationRawImageName        = "io.podman.annotations.checkpoint.rawImageName"  // the image name it was created with
	AnnotationRootfsImageID       = "io.podman.annotations.checkpoint.rootfsImageID" // its image's ID: the restoring host needs it
	AnnotationRootfsImageName     = "io.podman.annotations.checkpoint.rootfsImageName"
	AnnotationPodmanVersion       = "io.podman.annotations.checkpoint.podman.version"
	AnnotationCRIUVersion         = "io.podman.annotations.checkpoint.criu.version" // CRIU's integer form: 40201 for 4.2.1
	AnnotationRuntimeName         = "io.podman.annotations.checkpoint.runtime.name" // e.g. runc; must match the restoring host's
	AnnotationRuntimeVersion      = "io.podman.annotations.checkpoint.runtime.version"
	AnnotationConmonVersion       = "io.podman.annotations.checkpoint.conmon.version"
	AnnotationHostArch            = "io.podman.annotations.checkpoint.host.arch"
	AnnotationHostKernel          = "io.podman.annotations.checkpoint.host.kernel"
	AnnotationCgroupVersion       = "io.podman.annotations.checkpoint.cgroups.version"
	AnnotationDistributionVersion = "io.podman.annotations.checkpoint.distribution.version"
	AnnotationDistributionName    = "io.podman.annotations.checkpoint.distribution.name"

	// The two buildah adds to an image built from scratch, left empty.
	annotationBaseDigest = "org.opencontainers.image.base.digest"
	annotationBaseName   = "org.opencontainers.image.base.name"
)

// ErrNotCheckpointImage: an image or image archive that is not a
// checkpoint image (no checkpoint annotations, or not a single layer).
var ErrNotCheckpointImage = errors.New("not a checkpoint image")

// ImageHost is what the host that builds a checkpoint image says about
// itself; Podman takes the same from its host info.
type ImageHost struct {
	PodmanVersion       string
	CRIUVersion         string // as CRIU prints it ("4.2.1")
	RuntimeName         string
	RuntimeVersion      string
	ConmonVersion       string
	Arch                string // GOARCH spelling ("amd64")
	Kernel              string
	CgroupVersion       string // "v1" or "v2"
	DistributionName    string
	DistributionVersion string
}

// Identity is what a checkpoint archive says about its container, read by
// ReadIdentity: enough to name a checkpoint image's annotations.
type Identity struct {
	ID              string
	Name            string
	RawImageName    string
	RootfsImageID   string
	RootfsImageName string
	Runtime         string     // the OCI runtime it ran under, when recorded
	Facts           *HostFacts // what orchestrate's agent recorded, when present
}

// maxIdentityFile bounds config.dump and the host facts when reading an
// identity: Podman's config.dump is tens of KiB.
const maxIdentityFile = 4 << 20

// ReadIdentity reads a checkpoint archive (an uncompressed tar, as the
// engines stream them) for its config.dump and host facts. Given a file, the
// tar reader seeks past the memory pages instead of reading them.
func ReadIdentity(r io.Reader) (Identity, error) {
	var id Identity
	var cfg *configDump
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return id, fileErr("", corruptf("tar: %v", err))
		}
		name := path.Clean(hdr.Name)
		if name != ConfigDumpFile && name != HostFactsFile {
			continue
		}
		if hdr.Size > maxIdentityFile {
			return id, fileErr(name, corruptf("%d bytes, more than %d", hdr.Size, maxIdentityFile))
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return id, fileErr(name, truncatedf("%v", err))
		}
		switch name {
		case ConfigDumpFile:
			cfg = new(configDump)
			if err := json.Unmarshal(b, cfg); err != nil {
				return id, fileErr(name, corruptf("%v", err))
			}
		case HostFactsFile:
			id.Facts = new(HostFacts)
			if err := json.Unmarshal(b, id.Facts); err != nil {
				return id, fileErr(name, corruptf("%v", err))
			}
		}
	}
	if cfg == nil {
		return id, fileErr(ConfigDumpFile, fmt.Errorf("%w: no %s", ErrNotCheckpoint, ConfigDumpFile))
	}
	id.ID, id.Name, id.RawImageName, id.Runtime = cfg.ID, cfg.Name, cfg.RawImageName, cfg.Runtime
	id.RootfsImageID = firstNonEmpty(cfg.RootfsImageID, cfg.RootfsImage)
	id.RootfsImageName = cfg.RootfsImageName
	return id, nil
}

// CheckpointImageAnnotations returns the annotations Podman puts on a
// checkpoint image of the container id describes, built on host. What the
// host does not report is taken from the archive (its runtime, the agent's
// host facts) where it records it.
func CheckpointImageAnnotations(id Identity, host ImageHost) map[string]string {
	var facts HostFacts
	if id.Facts != nil {
		facts = *id.Facts
	}
	return map[string]string{
		AnnotationCheckpointName:      id.Name,
		AnnotationRawImageName:        id.RawImageName,
		AnnotationRootfsImageID:       id.RootfsImageID,
		AnnotationRootfsImageName:     id.RootfsImageName,
		AnnotationPodmanVersion:       firstNonEmpty(host.PodmanVersion, facts.EngineVersion),
		AnnotationCRIUVersion:         criuVersionNumber(firstNonEmpty(host.CRIUVersion, facts.CRIUVersion)),
		AnnotationRuntimeName:         firstNonEmpty(host.RuntimeName, id.Runtime),
		AnnotationRuntimeVersion:      host.RuntimeVersion,
		AnnotationConmonVersion:       host.ConmonVersion,
		AnnotationHostArch:            firstNonEmpty(host.Arch, facts.Arch),
		AnnotationHostKernel:          firstNonEmpty(host.Kernel, facts.Kernel),
		AnnotationCgroupVersion:       host.CgroupVersion,
		AnnotationDistributionVersion: host.DistributionVersion,
		AnnotationDistributionName:    host.DistributionName,
		annotationBaseDigest:          "",
		annotationBaseName:            "",
	}
}

// criuVersionNumber turns "4.2.1" into Podman's "40201"
// (major*10000 + minor*100 + sublevel, as criu.GetCriuVersion returns it);
// a version it cannot read is kept as it is.
func criuVersionNumber(v string) string {
	if v == "" {
		return ""
	}
	parts := strings.Split(v, ".")
	if len(parts) > 3 {
		return v
	}
	n := 0
	for i, scale := range []int{10000, 100, 1} {
		if i >= len(parts) {
			break
		}
		x, err := strconv.Atoi(parts[i])
		if err != nil || x < 0 || x > 99 && i > 0 {
			return v
		}
		n += x * scale
	}
	return strconv.Itoa(n)
}

// NormalizeImageName spells an image name as Podman stores it: a name
// without a registry goes under localhost/, and one without a tag or
// digest gets :latest.
func NormalizeImageName(name string) (string, error) {
	if name == "" {
		return "", errors.New("empty image name")
	}
	first, _, hasSlash := strings.Cut(name, "/")
	if !hasSlash || !strings.ContainsAny(first, ".:") && first != "localhost" {
		name = "localhost/" + name
	}
	ref, err := reference.Parse(name)
	if err != nil {
		return "", fmt.Errorf("image name %q: %w", name, err)
	}
	named, ok := ref.(reference.Named)
	if !ok {
		return "", fmt.Errorf("image name %q: no repository", name)
	}
	_, tagged := named.(reference.Tagged)
	_, digested := named.(reference.Digested)
	if !tagged && !digested {
		name += ":latest"
	}
	return name, nil
}

// OCIImage describes the checkpoint image WriteOCIArchive writes.
type OCIImage struct {
	// Ref is the name recorded in index.json, under which `podman load`
	// stores the image (org.opencontainers.image.ref.name).
	Ref         string
	Annotations map[string]string // on the manifest
	Created     time.Time
	Arch        string // GOARCH spelling
	// LayerSize and LayerDigest ("sha256:...") describe the uncompressed
	// layer: the checkpoint archive itself.
	LayerSize   int64
	LayerDigest string
}

// ImageDigests are the digests of what WriteOCIArchive wrote. The config
// digest's hex is the image ID Podman gives the loaded image.
type ImageDigests struct {
	Manifest string `json:"manifest"`
	Config   string `json:"config"`
}

// WriteOCIArchive writes img as an OCI image layout in a tar (what
// `podman save --format oci-archive` writes and `podman load` reads), with
// the layer read from layer, which must deliver exactly img.LayerSize bytes
// (checked) whose sha256 is img.LayerDigest (the caller's to guarantee:
// Podman verifies it when it loads the archive). The layer is stored
// uncompressed, as Podman keeps a checkpoint image in its local storage.
func WriteOCIArchive(w io.Writer, img OCIImage, layer io.Reader) (ImageDigests, error) {
	var d ImageDigests
	layerDigest, err := digest.Parse(img.LayerDigest)
	if err != nil || layerDigest.Algorithm() != digest.SHA256 {
		return d, fmt.Errorf("layer digest %q: want sha256:<hex>", img.LayerDigest)
	}
	created := img.Created.UTC()
	config, err := json.Marshal(ocispec.Image{
		Created:  &created,
		Platform: ocispec.Platform{Architecture: img.Arch, OS: "linux"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{layerDigest}},
		History:  []ocispec.History{{Created: &created, CreatedBy: "orchestrate checkpoint --image"}},
	})
	if err != nil {
		return d, err
	}
	configDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))}
	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned:   specs.Versioned{SchemaVersion: 2},
		MediaType:   ocispec.MediaTypeImageManifest,
		Config:      configDesc,
		Layers:      []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: layerDigest, Size: img.LayerSize}},
		Annotations: img.Annotations,
	})
	if err != nil {
		return d, err
	}
	manifestDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(manifest), Size: int64(len(manifest))}
	if img.Ref != "" {
		manifestDesc.Annotations = map[string]string{ocispec.AnnotationRefName: img.Ref}
	}
	index, err := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{manifestDesc}})
	if err != nil {
		return d, err
	}
	layout, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})

	tw := tar.NewWriter(w)
	hdr := func(name string, size int64, dir bool) *tar.Header {
		h := &tar.Header{Name: name, Mode: 0o644, Size: size, ModTime: created, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if dir {
			h.Mode, h.Typeflag = 0o755, tar.TypeDir
		}
		return h
	}
	small := func(name string, b []byte) error {
		if err := tw.WriteHeader(hdr(name, int64(len(b)), false)); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	blob := func(dg digest.Digest) string { return "blobs/sha256/" + dg.Encoded() }
	// The same order as Podman's own oci-archive: blobs, index, layout.
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(hdr(dir, 0, true)); err != nil {
			return d, err
		}
	}
	if err := tw.WriteHeader(hdr(blob(layerDigest), img.LayerSize, false)); err != nil {
		return d, err
	}
	n, err := io.Copy(tw, io.LimitReader(layer, img.LayerSize))
	if err != nil {
		return d, fmt.Errorf("image layer: %w", err)
	}
	if n != img.LayerSize {
		return d, fmt.Errorf("image layer: %d bytes, want %d", n, img.LayerSize)
	}
	for _, f := range []struct {
		name string
		b    []byte
	}{{blob(configDesc.Digest), config}, {blob(manifestDesc.Digest), manifest}, {ocispec.ImageIndexFile, index}, {ocispec.ImageLayoutFile, layout}} {
		if err := small(f.name, f.b); err != nil {
			return d, err
		}
	}
	if err := tw.Close(); err != nil {
		return d, err
	}
	return ImageDigests{Manifest: manifestDesc.Digest.String(), Config: configDesc.Digest.String()}, nil
}

// dockerArchiveManifest is one entry of a docker-archive's manifest.json.
type dockerArchiveManifest struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}

// CheckpointLayer reads a docker-archive holding one checkpoint image (what
// `podman save` writes by default, and engine.Images.ExportImage) and
// returns its layer as a stream: the checkpoint archive, the stream an
// engine's Restore takes. The layer is passed on as it arrives (Podman
// writes it first, then the config and manifest.json), hashed on the way;
// at its end the reader reads the rest of the archive and returns io.EOF
// only when the layer matches its digest and manifest.json lists it as the
// image's only layer, and an error wrapping ErrNotCheckpointImage,
// ErrCorrupt or ErrTruncated otherwise, so that a restore reading it fails
// rather than starting from unverified data. A gzip or zstd layer is
// decompressed. Close stops reading r.
func CheckpointLayer(r io.Reader) (io.ReadCloser, error) {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: the image archive holds no layer", ErrNotCheckpointImage)
		}
		if err != nil {
			return nil, fileErr("", corruptf("image archive: %v", err))
		}
		if hdr.Typeflag != tar.TypeReg || !strings.HasSuffix(hdr.Name, ".tar") {
			continue
		}
		name := path.Clean(hdr.Name)
		lr := &layerReader{tr: tr, name: name, sum: sha256.New()}
		br := bufio.NewReaderSize(io.TeeReader(tr, lr.sum), 64<<10)
		head, _ := br.Peek(6)
		lr.body = br
		switch compressionOf(head) {
		case "gzip":
			g, err := gzip.NewReader(br)
			if err != nil {
				return nil, fileErr(name, corruptf("gzip: %v", err))
			}
			lr.body, lr.closeBody = g, func() { g.Close() }
		case "zstd":
			z, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
			if err != nil {
				return nil, fileErr(name, corruptf("zstd: %v", err))
			}
			lr.body, lr.closeBody = z, z.Close
		}
		return lr, nil
	}
}

// layerReader is CheckpointLayer's stream.
type layerReader struct {
	tr        *tar.Reader
	name      string // the layer's path in the archive
	sum       hash.Hash
	body      io.Reader
	closeBody func()
	err       error // sticky: io.EOF once verified
}

func (l *layerReader) Read(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	n, err := l.body.Read(p)
	if errors.Is(err, io.EOF) {
		err = l.verify()
		if err == nil {
			err = io.EOF
		}
	}
	if err != nil {
		l.err = err
	}
	return n, err
}

func (l *layerReader) Close() error {
	if l.closeBody != nil {
		l.closeBody()
		l.closeBody = nil
	}
	if l.err == nil {
		l.err = errors.New("checkpoint layer: closed")
	}
	return nil
}

// verify runs at the end of the layer: the raw bytes read must be the whole
// entry and match the digest its name or manifest.json gives, and the rest
// of the archive must describe a single-layer image.
func (l *layerReader) verify() error {
	// Whatever a decompressor left unread of the entry still counts.
	if _, err := io.Copy(l.sum, l.tr); err != nil {
		return fileErr(l.name, truncatedf("%v", err))
	}
	got := hex.EncodeToString(l.sum.Sum(nil))
	var manifests []dockerArchiveManifest
	for {
		hdr, err := l.tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fileErr("", truncatedf("image archive after the layer: %v", err))
		}
		name := path.Clean(hdr.Name)
		switch {
		case name == "manifest.json":
			b, err := io.ReadAll(io.LimitReader(l.tr, maxIdentityFile))
			if err != nil {
				return fileErr(name, truncatedf("%v", err))
			}
			if err := json.Unmarshal(b, &manifests); err != nil {
				return fileErr(name, corruptf("%v", err))
			}
		case hdr.Typeflag == tar.TypeReg && strings.HasSuffix(name, ".tar"):
			return fmt.Errorf("%w: a second layer %s", ErrNotCheckpointImage, name)
		}
	}
	if len(manifests) != 1 {
		return fileErr("manifest.json", fmt.Errorf("%w: %d images in the archive, want 1", ErrNotCheckpointImage, len(manifests)))
	}
	if m := manifests[0]; len(m.Layers) != 1 || path.Clean(m.Layers[0]) != l.name {
		return fileErr("manifest.json", fmt.Errorf("%w: layers %v, want only %s", ErrNotCheckpointImage, m.Layers, l.name))
	}
	// Podman names a layer after its digest (<hex>.tar); Docker's older
	// layout (<id>/layer.tar) carries no digest to check.
	if want, ok := strings.CutSuffix(path.Base(l.name), ".tar"); ok && len(want) == 64 && want != got {
		return fileErr(l.name, corruptf("sha256 %s, named %s", got, want))
	}
	return nil
}
