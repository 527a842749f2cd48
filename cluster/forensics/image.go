package forensics

import (
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
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/archive"
)

// Checkpoint images (`orchestrate checkpoint CTR --image NAME`): the
// container's host checkpoints it through its engine as for any snapshot,
// spools the archive (with its host facts) under DataDir/images, and wraps
// it as Podman's own `checkpoint --create-image` would (engine/archive:
// one layer holding the archive, Podman's annotations), so that plain
// Podman elsewhere restores it with `podman container restore NAME`. The
// host then either loads the image into its engine (and pushes it when a
// registry is configured) or streams it back as an OCI archive. The spool
// is needed because an OCI archive names the layer's size and digest
// before its bytes; it is removed when the request ends, and a crash's
// leftovers by the next prune.
//
// Failure behaviour: as for any snapshot, a failure anywhere (checkpoint,
// load, push, stream) leaves the container running: a container the
// checkpoint stopped is resumed. An image that was loaded before its push
// failed stays on the host, and the error says so.

// ImageDir is where checkpoint images are spooled, under Config.DataDir.
const ImageDir = "images"

// ImageBuilder is what building checkpoint images needs from a host's
// engine, beyond Engine (engine.CheckpointImages).
type ImageBuilder interface {
	HostInfo(ctx context.Context) (engine.HostInfo, error)
	LoadImage(ctx context.Context, r io.Reader) (string, error)
	PushImage(ctx context.Context, ref string, opts engine.RegistryOptions) error
}

// ImageRequest asks the container's host for a checkpoint image
// (POST /v1/agent/forensics/image).
type ImageRequest struct {
	Container    string `json:"container"`
	LeaveRunning bool   `json:"leave_running"`
	// Image is the image's name; with a registry it is named, and pushed,
	// under the registry (REGISTRY/NAME).
	Image string `json:"image"`
	// Registry overrides the host's forensics.image_registry.
	Registry string `json:"registry,omitempty"`
	// TLSVerify overrides the host's forensics.image_registry_tls_verify.
	TLSVerify *bool `json:"tls_verify,omitempty"`
	// Archive answers the image as an OCI archive (podman load reads it)
	// instead of loading it into the host's engine; nothing is pushed.
	Archive bool `json:"archive,omitempty"`
}

// ImageResult describes a checkpoint image that was built.
type ImageResult struct {
	Container    string `json:"container"`
	Name         string `json:"name"`
	Host         string `json:"host"`
	LeaveRunning bool   `json:"leave_running"`
	// Image is the full reference: what it was loaded as (and pushed to).
	Image string `json:"image"`
	// ImageID is the ID Podman gives it (its config's digest).
	ImageID string `json:"image_id"`
	// Digest is the manifest's digest.
	Digest string `json:"digest"`
	// Loaded: the image is in the host's engine; Pushed: and in the registry.
	Loaded bool `json:"loaded,omitempty"`
	Pushed bool `json:"pushed,omitempty"`
	// LayerSize is the checkpoint archive's size (the layer).
	LayerSize int64 `json:"layer_size"`
	// Size and SHA256 are the OCI archive's, when it was streamed.
	Size        int64             `json:"size,omitempty"`
	SHA256      string            `json:"sha256,omitempty"`
	Stats       engine.Stats      `json:"stats"`
	Annotations map[string]string `json:"annotations"`
}

// ImageRef is the reference a checkpoint image named name gets, pushed to
// registry (empty: none): REGISTRY/NAME, normalized as Podman does
// (localhost/ for a name without a registry, :latest without a tag). A name
// that names another registry than the configured one is refused.
func ImageRef(registry, name string) (string, error) {
	registry = strings.TrimSuffix(registry, "/")
	if registry != "" && !strings.HasPrefix(name, registry+"/") {
		if first, _, ok := strings.Cut(name, "/"); ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
			return "", fmt.Errorf("image %s names the registry %s, but images are pushed to %s", name, first, registry)
		}
		name = registry + "/" + name
	}
	return archive.NormalizeImageName(name)
}

// image builds a checkpoint image of a container here (Archive false:
// answers an ImageResult) or streams it (Archive true: the OCI archive, its
// ImageResult in TrailerResult after it).
func (a *Agent) image(w http.ResponseWriter, r *http.Request) {
	var req ImageRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Container == "" || req.Image == "" {
		cluster.WriteError(w, fmt.Errorf("%w: want {\"container\": ..., \"image\": NAME}", cluster.ErrInvalid))
		return
	}
	var out io.Writer
	if req.Archive {
		out = w
	}
	started := false
	res, err := a.CheckpointImage(r.Context(), req, out, func() {
		w.Header().Set("Content-Type", "application/x-tar")
		w.Header().Set("Trailer", TrailerResult+", "+TrailerError)
		w.WriteHeader(http.StatusOK)
		started = true
	})
	switch {
	case err != nil && started:
		w.Header().Set(TrailerError, err.Error())
	case err != nil:
		cluster.WriteError(w, err)
	case started:
		b, _ := json.Marshal(res)
		w.Header().Set(TrailerResult, string(b))
	default:
		cluster.WriteJSON(w, http.StatusOK, res)
	}
}

// CheckpointImage checkpoints a container on this host and builds its
// checkpoint image. With out nil the image is loaded into this host's
// engine and pushed when a registry is configured or requested; otherwise
// the OCI archive is written to out, after begin (if not nil) is called
// once the checkpoint is done: an error before it means nothing was
// written. On error the container is running as before.
func (a *Agent) CheckpointImage(ctx context.Context, req ImageRequest, out io.Writer, begin func()) (res ImageResult, err error) {
	ib, ok := a.eng.(ImageBuilder)
	if !ok {
		return res, fmt.Errorf("%w: the engine on %s cannot build checkpoint images (Podman can)", cluster.ErrInvalid, a.cfg.Host)
	}
	registry := firstNonEmpty(req.Registry, a.cfg.ImageRegistry)
	if req.Archive {
		registry = ""
	}
	ref, err := ImageRef(registry, req.Image)
	if err != nil {
		return res, fmt.Errorf("%w: %w", cluster.ErrInvalid, err)
	}
	reg := engine.RegistryOptions{TLSVerify: !a.cfg.InsecureRegistry}
	if req.TLSVerify != nil {
		reg.TLSVerify = *req.TLSVerify
	}
	c, err := a.running(ctx, req.Container)
	if err != nil {
		return res, err
	}
	defer func() {
		if err != nil {
			a.undo(c, req.LeaveRunning)
		}
	}()
	spool, err := a.spoolFile()
	if err != nil {
		return res, fmt.Errorf("checkpoint image of %s: %w", c.Name, err)
	}
	defer func() {
		spool.Close()
		os.Remove(spool.Name())
	}()

	at := a.cfg.Now().UTC()
	sum := sha256.New()
	cw := &countWriter{w: io.MultiWriter(spool, sum)}
	st, err := a.checkpointWithFacts(ctx, c.ID, cw, req.LeaveRunning)
	if err != nil {
		return res, fmt.Errorf("checkpoint %s on %s: %w", c.Name, a.cfg.Host, err)
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return res, err
	}
	id, err := archive.ReadIdentity(spool)
	if err != nil {
		return res, fmt.Errorf("checkpoint image of %s: read its archive: %w", c.Name, err)
	}
	host, err := ib.HostInfo(ctx)
	if err != nil {
		// The runtime's name, which a restore checks, is in config.dump too.
		a.log.Warn("engine host info for a checkpoint image", "container", c.Name, "err", err)
	}
	ann := archive.CheckpointImageAnnotations(id, archive.ImageHost{PodmanVersion: host.EngineVersion, RuntimeName: host.RuntimeName,
		RuntimeVersion: host.RuntimeVersion, ConmonVersion: host.ConmonVersion, Arch: host.Arch, Kernel: host.Kernel,
		CgroupVersion: host.CgroupVersion, DistributionName: host.DistributionName, DistributionVersion: host.DistributionVersion})
	img := archive.OCIImage{Ref: ref, Annotations: ann, Created: at, Arch: firstNonEmpty(host.Arch, archFacts(id)),
		LayerSize: cw.n, LayerDigest: "sha256:" + hex.EncodeToString(sum.Sum(nil))}
	res = ImageResult{Container: c.ID, Name: c.Name, Host: a.cfg.Host, LeaveRunning: req.LeaveRunning, Image: ref,
		LayerSize: cw.n, Stats: st, Annotations: ann}
	layer := io.NewSectionReader(spool, 0, cw.n)

	if out != nil {
		if begin != nil {
			begin()
		}
		asum := sha256.New()
		aw := &countWriter{w: io.MultiWriter(out, asum)}
		dg, err := archive.WriteOCIArchive(aw, img, layer)
		if err != nil {
			return res, fmt.Errorf("checkpoint image of %s: stream: %w", c.Name, err)
		}
		res.ImageID, res.Digest = strings.TrimPrefix(dg.Config, "sha256:"), dg.Manifest
		res.Size, res.SHA256 = aw.n, hex.EncodeToString(asum.Sum(nil))
		a.log.Info("checkpoint image streamed", "container", c.Name, "image", ref, "bytes", aw.n, "frozen", st.FrozenTime)
		return res, nil
	}

	pr, pw := io.Pipe()
	written := make(chan archive.ImageDigests, 1)
	go func() {
		dg, err := archive.WriteOCIArchive(pw, img, layer)
		pw.CloseWithError(err)
		written <- dg
	}()
	loaded, err := ib.LoadImage(ctx, pr)
	pr.CloseWithError(errors.New("load ended"))
	dg := <-written
	if err != nil {
		return res, fmt.Errorf("checkpoint image %s of %s: load into the engine on %s: %w", ref, c.Name, a.cfg.Host, err)
	}
	res.Loaded, res.ImageID, res.Digest = true, strings.TrimPrefix(dg.Config, "sha256:"), dg.Manifest
	a.log.Info("checkpoint image loaded", "container", c.Name, "image", loaded, "layer_bytes", cw.n, "frozen", st.FrozenTime)
	if registry != "" {
		pushStart := time.Now()
		if err := ib.PushImage(ctx, ref, reg); err != nil {
			return res, fmt.Errorf("checkpoint image %s of %s: push (the image stays on %s): %w", ref, c.Name, a.cfg.Host, err)
		}
		res.Pushed = true
		a.log.Info("checkpoint image pushed", "image", ref, "tls_verify", reg.TLSVerify, "took", time.Since(pushStart))
	}
	return res, nil
}

func archFacts(id archive.Identity) string {
	if id.Facts != nil {
		return id.Facts.Arch
	}
	return ""
}

// spoolFile creates a file for one image's layer in DataDir/images, a
// directory only this agent writes (0700).
func (a *Agent) spoolFile() (*os.File, error) {
	dir := filepath.Join(a.cfg.DataDir, ImageDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return os.CreateTemp(dir, "layer-*.tar")
}

// staleSpools removes spool files a crash left: files in DataDir/images
// untouched for grace. A spool being read by a slow load or push is open,
// so removing its name does not disturb it.
func (a *Agent) staleSpools(now time.Time, grace time.Duration) {
	dir := filepath.Join(a.cfg.DataDir, ImageDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err == nil && fi.Mode().IsRegular() && now.Sub(fi.ModTime()) > grace {
			a.log.Info("removing a stale checkpoint image spool", "file", e.Name())
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// BuildImage asks the agent at cl for a checkpoint image loaded on the
// container's host (and pushed, with a registry).
func BuildImage(ctx context.Context, cl *cluster.Client, req CheckpointRequest) (ImageResult, error) {
	var res ImageResult
	req.Store, req.ImageArchive = false, false
	if req.Image == "" {
		return res, fmt.Errorf("%w: no image name", cluster.ErrInvalid)
	}
	return res, cl.Do(ctx, http.MethodPost, "/v1/checkpoint", req, &res)
}

// StreamImage asks the agent at cl for a checkpoint image as an OCI
// archive and writes it to w. It returns nil error only when the whole
// archive arrived, the host reported success, and size and sha256 match
// what the host sent.
func StreamImage(ctx context.Context, cl *cluster.Client, req CheckpointRequest, w io.Writer) (ImageResult, error) {
	var res ImageResult
	req.Store, req.ImageArchive = false, true
	if req.Image == "" {
		return res, fmt.Errorf("%w: no image name", cluster.ErrInvalid)
	}
	err := receiveStreamed(ctx, cl, req, w, "image of "+req.Container, &res, func() (int64, string) { return res.Size, res.SHA256 })
	return res, err
}

// copyHashed copies r to w and returns the bytes copied and their sha256.
func copyHashed(w io.Writer, r io.Reader) (int64, string, error) {
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, sum), r)
	return n, hex.EncodeToString(sum.Sum(nil)), err
}

// trailerResult decodes a streamed answer's outcome from its trailers.
func trailerResult(resp *http.Response, v any, what string, n int64) error {
	if msg := resp.Trailer.Get(TrailerError); msg != "" {
		return fmt.Errorf("%w: %s", ErrIncomplete, msg)
	}
	raw := resp.Trailer.Get(TrailerResult)
	if raw == "" {
		return fmt.Errorf("%w: %s: the stream ended without a result after %d bytes", ErrIncomplete, what, n)
	}
	if err := json.Unmarshal([]byte(raw), v); err != nil {
		return fmt.Errorf("%w: result %q: %v", ErrIncomplete, raw, err)
	}
	return nil
}

// ImageSource is what reading a checkpoint image on a host needs from its
// engine (engine.CheckpointImages).
type ImageSource interface {
	ImageInfo(ctx context.Context, ref string) (engine.ImageInfo, error)
	PullImage(ctx context.Context, ref string, opts engine.RegistryOptions) (string, error)
	ExportImage(ctx context.Context, ref string, w io.Writer) error
}

// CheckpointImageArchive turns the checkpoint image ref on this host's
// engine into the checkpoint archive it holds: the stream engine.Restorer's
// Restore takes. An image the engine lacks is pulled from its registry
// first (reg: TLS verification). It refuses an image without Podman's
// checkpoint annotations (archive.ErrNotCheckpointImage).
//
// Nothing is staged: the engine exports the image (docker-archive, the
// layer first) and the layer streams through as it arrives. Its digest and
// the image's single-layer shape are checked at its end, where the reader
// returns an error instead of io.EOF if they are wrong, so that a restore
// reading it fails rather than starting. Each call exports anew: for K
// copies, call it K times. Close stops the export.
func CheckpointImageArchive(ctx context.Context, src ImageSource, ref string, reg engine.RegistryOptions) (io.ReadCloser, engine.ImageInfo, error) {
	info, err := src.ImageInfo(ctx, ref)
	if errors.Is(err, engine.ErrNotFound) {
		if _, perr := src.PullImage(ctx, ref, reg); perr != nil {
			return nil, info, fmt.Errorf("checkpoint image %s: not on this host, and %w", ref, perr)
		}
		info, err = src.ImageInfo(ctx, ref)
	}
	if err != nil {
		return nil, info, fmt.Errorf("checkpoint image %s: %w", ref, err)
	}
	if info.Annotations[archive.AnnotationCheckpointName] == "" {
		return nil, info, fmt.Errorf("image %s (%.12s): %w: it has no %s annotation", ref, info.ID, archive.ErrNotCheckpointImage, archive.AnnotationCheckpointName)
	}
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := src.ExportImage(ctx, ref, pw)
		if err != nil {
			err = fmt.Errorf("export checkpoint image %s: %w", ref, err)
		}
		pw.CloseWithError(err)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			pr.CloseWithError(errors.New("checkpoint image reader closed"))
			<-done
		})
	}
	lr, err := archive.CheckpointLayer(pr)
	if err != nil {
		stop()
		return nil, info, fmt.Errorf("checkpoint image %s: %w", ref, err)
	}
	return &imageArchive{ReadCloser: lr, stop: stop}, info, nil
}

type imageArchive struct {
	io.ReadCloser
	stop func()
}

func (r *imageArchive) Close() error {
	err := r.ReadCloser.Close()
	r.stop()
	return err
}
