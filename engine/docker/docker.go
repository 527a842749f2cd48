// Package docker implements engine.Engine against a Docker Engine daemon
// (dockerd started with --experimental), using the Docker API client.
//
// Docker's checkpoint is a directory of CRIU images and nothing else: it does
// not carry the container's configuration, its writable layer or its
// volumes, and Docker restores only into a container that already exists on
// the same daemon. So the engine builds its own archive, one tar stream:
//
//	orchestrate-docker.json   the manifest: identity, image ID, config, host config, mounts
//	checkpoint/...            CRIU's images, as dockerd wrote them
//	rootfs/...                the container's overlay upper directory (writable-layer changes)
//	volumes/NAME/...          the contents of each named (local) volume
//	orchestrate-docker.end    the trailer: without it the archive is truncated
//
// The manifest goes first and is written before the container freezes; the
// target reads it first and refuses (missing bind-mount sources, another
// image, no --experimental) before it creates anything. The target creates a
// container from the same image ID with an equivalent config, extracts the
// checkpoint where the daemon looks for it, restores the writable layer and
// the volumes, and starts it from the checkpoint.
//
// Docker assigns container IDs itself; a restored container cannot have its
// old one. The engine therefore reports a stable identity as
// engine.Container.ID: the Docker ID the container was first created with,
// carried through restores in the label orchestrate.id. Every method accepts
// that identity, a Docker ID or a name.
//
// The engine reads the daemon's files (checkpoint directories, overlay
// layers, volume directories, CRIU's logs) through /proc/PID/root of the
// dockerd serving its socket, so it must run on the same host as dockerd
// (any mount namespace).
//
// Where the time goes, and what the engine does about it: dockerd's
// checkpoint has CRIU dump into containerd's temporary directory, packs that
// into containerd's content store and unpacks it into the checkpoint
// directory; its start from a checkpoint packs and unpacks it again. The
// packing (tar, sha256, gRPC between dockerd and containerd) costs seconds
// at 256 MiB, CPU-bound. The engine streams CRIU's images as soon as the
// dump is complete (early.go) instead of after dockerd's packing, does not
// make the target wait for dockerd to finish keeping the source's copy, and
// stages checkpoints on a tmpfs the operator mounts under the agent's
// data_dir, when there is one with room (a symbolic link from the
// container's checkpoint directory), instead of writing them to disk.
//
// Archives from other hosts are untrusted until verified (extract.go):
// every entry is created by file descriptor under its tree without
// following a link, devices only as the container was given them,
// extended attributes only from an allowlist, and an existing volume's
// contents are replaced only after the stream's sha256 checked.
//
// What Docker migrations cannot do, each refused with ErrUnsupported or
// ErrNotExperimental, before the container freezes unless noted:
//   - a daemon without --experimental, or rootless Docker;
//   - established TCP connections (Docker has no tcp-established);
//   - network modes other than host or none, --pid host, storage drivers
//     other than overlay2, volumes of drivers other than plain local;
//   - bind mounts whose source is missing on the target, and whatever the
//     target's restore policy refuses (privileged, host binds, devices,
//     added capabilities; policy.go): the target says so at the preflight,
//     before the source freezes, and again at the archive's first entry,
//     before it creates anything;
//   - keeping the Docker container ID: the target's container has a new
//     one (the identity label carries the old);
//   - the image itself: the target must hold the same image ID (sent
//     beforehand by the migration, never rebuilt).
package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"

	"github.com/edgemigrate/orchestrate/engine"
)

// LabelID carries a restored container's identity (the Docker ID it was
// first created with).
const LabelID = "orchestrate.id"

// Errors of Docker's limits. They are returned before anything is frozen.
var (
	// ErrNotExperimental: dockerd runs without --experimental, which the
	// checkpoint endpoints need.
	ErrNotExperimental = errors.New("dockerd runs without --experimental: checkpoint and restore need it (start dockerd with --experimental, or set \"experimental\": true in daemon.json)")
	// ErrUnsupported: Docker's checkpoint cannot carry this container.
	ErrUnsupported = errors.New("docker cannot migrate this container")
)

// Config configures the Docker engine.
type Config struct {
	// Socket is the daemon's URI, e.g. unix:///var/run/docker.sock.
	Socket string
	// CRIU is the criu binary used for feature detection (default "criu").
	CRIU   string
	Logger *slog.Logger
	// ConnectTimeout bounds the first ping of the daemon.
	ConnectTimeout time.Duration
	// StagingDir is where checkpoints are written and received, outside
	// Docker's data root, as dockerd sees it: a directory under the agent's
	// data_dir (cmd uses DATA_DIR/stage/docker), used only when it is a
	// tmpfs with room for the container's memory (mount one there to save
	// writing the images to disk twice) and passes safefs.PrivateDir. Never
	// a world-writable place such as /dev/shm: another user could swap the
	// images. Empty or "-": Docker's own directory.
	StagingDir string
	// NoEarlyStream waits for dockerd to finish a checkpoint before
	// streaming it (see early.go), for comparison.
	NoEarlyStream bool
	// Policy is this host's restore policy (policy.go); the zero value
	// refuses privileged containers, host binds, devices and added
	// capabilities.
	Policy engine.RestorePolicy
}

// DefaultConfig returns the defaults for a rootful dockerd.
func DefaultConfig() Config {
	return Config{
		Socket:         "unix:///var/run/docker.sock",
		CRIU:           "criu",
		Logger:         slog.Default(),
		ConnectTimeout: 10 * time.Second,
	}
}

// Engine is the Docker implementation of engine.Engine. It is safe for
// concurrent use. Its only goroutine beyond a call waits for dockerd to
// finish a checkpoint whose images were already streamed; every call on that
// container waits for it first.
type Engine struct {
	cfg Config
	cli *client.Client
	log *slog.Logger

	infoMu sync.Mutex
	info   *types.Info

	// pending holds the checkpoints dockerd is still finishing after
	// Checkpoint returned (early.go), by Docker ID; closed when done.
	pendMu  sync.Mutex
	pending map[string]chan struct{}

	featOnce sync.Once
	feat     engine.Features
	featErr  error
}

var _ engine.Engine = (*Engine)(nil)

// New connects to dockerd, negotiates the API version and checks that the
// daemon answers. A daemon without --experimental is accepted (it can run
// containers), with a warning: every checkpoint and restore then fails with
// ErrNotExperimental.
func New(ctx context.Context, cfg Config) (*Engine, error) {
	def := DefaultConfig()
	if cfg.Socket == "" {
		cfg.Socket = def.Socket
	}
	if cfg.CRIU == "" {
		cfg.CRIU = def.CRIU
	}
	if cfg.Logger == nil {
		cfg.Logger = def.Logger
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = def.ConnectTimeout
	}
	cli, err := client.NewClientWithOpts(client.WithHost(cfg.Socket), client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("connect to docker at %s: %w", cfg.Socket, err)
	}
	e := &Engine{cfg: cfg, cli: cli, log: cfg.Logger.With("engine", "docker"), pending: map[string]chan struct{}{}}
	pctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	info, err := e.daemonInfo(pctx)
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("connect to docker at %s: %w", cfg.Socket, err)
	}
	if !info.ExperimentalBuild {
		e.log.Warn("dockerd runs without --experimental: containers on this host cannot be checkpointed or restored", "socket", cfg.Socket)
	}
	return e, nil
}

// Close releases the client's connections.
func (e *Engine) Close() error { return e.cli.Close() }

// daemonInfo is the daemon's /info, cached after the first success (the
// daemon's mode, data root and rootlessness do not change while it runs).
func (e *Engine) daemonInfo(ctx context.Context) (types.Info, error) {
	e.infoMu.Lock()
	defer e.infoMu.Unlock()
	if e.info != nil {
		return *e.info, nil
	}
	info, err := e.cli.Info(ctx)
	if err != nil {
		return info, err
	}
	e.info = &info
	return info, nil
}

// checkDaemon refuses daemons that cannot migrate anything.
func (e *Engine) checkDaemon(ctx context.Context) (types.Info, error) {
	info, err := e.daemonInfo(ctx)
	if err != nil {
		return info, err
	}
	if !info.ExperimentalBuild {
		return info, ErrNotExperimental
	}
	for _, o := range info.SecurityOptions {
		if o == "name=rootless" {
			return info, fmt.Errorf("%w: rootless Docker: CRIU needs root (CAP_SYS_ADMIN) to checkpoint and restore", ErrUnsupported)
		}
	}
	return info, nil
}

// wrap maps the client's not-found errors to engine.ErrNotFound.
func wrap(err error) error {
	if err != nil && client.IsErrNotFound(err) {
		return fmt.Errorf("%w: %w", engine.ErrNotFound, err)
	}
	return err
}

// resolve finds a container by Docker ID, name, or identity label.
func (e *Engine) resolve(ctx context.Context, ref string) (types.ContainerJSON, error) {
	cj, err := e.cli.ContainerInspect(ctx, ref)
	if err == nil {
		if e.waitPending(ctx, cj.ID) {
			return e.cli.ContainerInspect(ctx, cj.ID)
		}
		return cj, nil
	}
	if !client.IsErrNotFound(err) {
		return cj, err
	}
	list, lerr := e.cli.ContainerList(ctx, types.ContainerListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", LabelID+"="+ref))})
	if lerr != nil || len(list) == 0 {
		return cj, fmt.Errorf("%w: no container %s", engine.ErrNotFound, ref)
	}
	if len(list) > 1 {
		return cj, fmt.Errorf("%d containers carry %s=%s", len(list), LabelID, ref)
	}
	e.waitPending(ctx, list[0].ID)
	return e.cli.ContainerInspect(ctx, list[0].ID)
}

// waitPending waits until dockerd has finished a checkpoint of the
// container that Checkpoint already returned; it reports whether it waited.
func (e *Engine) waitPending(ctx context.Context, dockerID string) bool {
	e.pendMu.Lock()
	ch := e.pending[dockerID]
	e.pendMu.Unlock()
	if ch == nil {
		return false
	}
	select {
	case <-ch:
	case <-ctx.Done():
	}
	return true
}

func (e *Engine) isPending(dockerID string) bool {
	e.pendMu.Lock()
	defer e.pendMu.Unlock()
	return e.pending[dockerID] != nil
}

func identity(dockerID string, labels map[string]string) string {
	if id := labels[LabelID]; id != "" {
		return id
	}
	return dockerID
}

// container converts an inspect result.
func (e *Engine) container(ctx context.Context, cj types.ContainerJSON) engine.Container {
	c := engine.Container{ID: cj.ID, Name: strings.TrimPrefix(cj.Name, "/"), ImageID: cj.Image}
	if cj.Config != nil {
		c.Image, c.Labels = cj.Config.Image, cj.Config.Labels
		c.ID = identity(cj.ID, cj.Config.Labels)
	}
	if cj.State != nil {
		c.State, c.Running = cj.State.Status, cj.State.Running
	}
	c.Created, _ = time.Parse(time.RFC3339Nano, cj.Created)
	if !c.Running {
		c.Checkpointed = e.keptCheckpoint(ctx, cj.ID) != ""
	}
	return c
}

// Inspect implements engine.Lister.
func (e *Engine) Inspect(ctx context.Context, id string) (engine.Container, error) {
	cj, err := e.resolve(ctx, id)
	if err != nil {
		return engine.Container{}, fmt.Errorf("container %s: %w", id, wrap(err))
	}
	return e.container(ctx, cj), nil
}

// List implements engine.Lister: every container, with memory use for the
// running ones (best effort).
func (e *Engine) List(ctx context.Context) ([]engine.Container, error) {
	list, err := e.cli.ContainerList(ctx, types.ContainerListOptions{All: true})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]engine.Container, 0, len(list))
	for _, l := range list {
		c := engine.Container{
			ID: identity(l.ID, l.Labels), Image: l.Image, ImageID: l.ImageID, State: l.State,
			Running: l.State == "running", Labels: l.Labels, Created: time.Unix(l.Created, 0).UTC(),
		}
		if len(l.Names) > 0 {
			c.Name = strings.TrimPrefix(l.Names[0], "/")
		}
		if e.isPending(l.ID) {
			// Frozen and dumped; dockerd is still packing the checkpoint.
			c.State, c.Running = "checkpointing", false
		}
		if c.Running {
			c.MemoryBytes = e.memory(ctx, l.ID)
		}
		out = append(out, c)
	}
	return out, nil
}

// memory is the resident memory of a running container's processes (best
// effort; dockerd's own stats take a second per container).
func (e *Engine) memory(ctx context.Context, id string) int64 {
	cj, err := e.cli.ContainerInspect(ctx, id)
	if err != nil || cj.State == nil {
		return 0
	}
	_, rss, _ := scanProcs(cj.State.Pid)
	return rss
}

// Remove implements engine.Remover: it stops (without grace) and removes
// the container, its kept checkpoints and their staged copies. Named
// volumes stay, as with `docker rm -f`.
func (e *Engine) Remove(ctx context.Context, id string) error {
	cj, err := e.resolve(ctx, id)
	if err != nil {
		return fmt.Errorf("remove %s: %w", id, wrap(err))
	}
	staged := e.stagedDir(ctx, cj.ID)
	if err := e.cli.ContainerRemove(ctx, cj.ID, types.ContainerRemoveOptions{Force: true}); err != nil {
		return fmt.Errorf("remove %s: %w", id, wrap(err))
	}
	if staged != "" {
		_ = os.RemoveAll(staged)
	}
	return nil
}

// HasImage implements engine.Images.
func (e *Engine) HasImage(ctx context.Context, ref string) (bool, error) {
	_, _, err := e.cli.ImageInspectWithRaw(ctx, ref)
	if client.IsErrNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("image %s: %w", ref, err)
	}
	return true, nil
}

// ExportImage implements engine.Images: `docker save` of the image under
// its first tag (an image saved by ID loads without a name), which keeps
// the image ID when loaded elsewhere.
func (e *Engine) ExportImage(ctx context.Context, ref string, w io.Writer) error {
	img, _, err := e.cli.ImageInspectWithRaw(ctx, ref)
	if err != nil {
		return fmt.Errorf("export image %s: %w", ref, wrap(err))
	}
	if len(img.RepoTags) > 0 {
		ref = img.RepoTags[0]
	}
	rc, err := e.cli.ImageSave(ctx, []string{ref})
	if err != nil {
		return fmt.Errorf("export image %s: %w", ref, wrap(err))
	}
	defer rc.Close()
	if _, err := io.Copy(w, rc); err != nil {
		return fmt.Errorf("export image %s: %w", ref, err)
	}
	return nil
}

// LoadImage implements engine.Images. It returns the loaded image's name,
// or its ID when the archive names none.
func (e *Engine) LoadImage(ctx context.Context, r io.Reader) (string, error) {
	resp, err := e.cli.ImageLoad(ctx, r, true)
	if err != nil {
		return "", fmt.Errorf("load image: %w", err)
	}
	defer resp.Body.Close()
	name, err := loadedImage(resp.Body)
	if err != nil {
		return "", fmt.Errorf("load image: %w", err)
	}
	return name, nil
}

// Features implements engine.FeatureReporter. A daemon without
// --experimental reports no CRIU version, so that placement never sends it
// a checkpoint it could not restore.
func (e *Engine) Features(ctx context.Context) (engine.Features, error) {
	e.featOnce.Do(func() { e.feat, e.featErr = e.probe(ctx) })
	if e.featErr != nil {
		e.featOnce = sync.Once{}
	}
	return e.feat, e.featErr
}

func (e *Engine) probe(ctx context.Context) (engine.Features, error) {
	f := engine.Features{Engine: "docker", Arch: runtime.GOARCH, Kernel: kernelRelease()}
	v, err := e.cli.ServerVersion(ctx)
	if err != nil {
		return f, fmt.Errorf("docker version: %w", err)
	}
	f.EngineVersion = v.Version
	if _, err := e.checkDaemon(ctx); err != nil {
		e.log.Warn("this daemon cannot migrate containers", "err", err)
		return f, nil
	}
	out, err := exec.CommandContext(ctx, e.cfg.CRIU, "--version").Output()
	if err != nil {
		e.log.Warn("criu not usable; checkpoints will fail", "criu", e.cfg.CRIU, "err", err)
		return f, nil
	}
	f.CRIUVersion = parseCRIUVersion(string(out))
	// Docker's API has no pre-dump (parent checkpoint) and no lazy-pages
	// restore, whatever the kernel and CRIU could do: PreCopy and LazyPages
	// stay false.
	return f, nil
}

func parseCRIUVersion(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Version:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func kernelRelease() string {
	var u syscall.Utsname
	if syscall.Uname(&u) != nil {
		return ""
	}
	b := make([]byte, 0, len(u.Release))
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return strings.TrimSpace(string(b))
}
