package docker

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/volume"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/internal/criuimg"
	"github.com/edgemigrate/orchestrate/internal/safefs"
)

// Archive layout (see the package comment).
const (
	entryManifest = "orchestrate-docker.json"
	entryTrailer  = "orchestrate-docker.end"
	dirCheckpoint = "checkpoint"
	dirRootfs     = "rootfs"
	dirVolumes    = "volumes"
	manifestV1    = 1
	// checkpointPrefix names the checkpoints this engine makes, so Resume
	// finds its own among any others.
	checkpointPrefix = "orc-"
)

// manifest is the archive's first entry.
type manifest struct {
	Format     int                    `json:"format"`
	ID         string                 `json:"id"`        // identity (LabelID or the Docker ID)
	DockerID   string                 `json:"docker_id"` // the source's Docker ID
	Name       string                 `json:"name"`
	Image      string                 `json:"image"`    // the name it was created from
	ImageID    string                 `json:"image_id"` // the target must hold exactly this
	Checkpoint string                 `json:"checkpoint"`
	Config     *container.Config      `json:"config"`
	HostConfig *container.HostConfig  `json:"host_config"`
	Mounts     []types.MountPoint     `json:"mounts"`
	Volumes    []manifestVolume       `json:"volumes,omitempty"`
	Memory     int64                  `json:"memory_bytes,omitempty"`
	Extra      map[string]interface{} `json:"extra,omitempty"`
}

type manifestVolume struct {
	Name        string            `json:"name"`
	Driver      string            `json:"driver"`
	Labels      map[string]string `json:"labels,omitempty"`
	Destination string            `json:"destination"`
}

type trailer struct {
	Entries int `json:"entries"`
}

// step logs how long one step of a checkpoint or restore took: the
// breakdown that shows where a Docker migration's time goes.
func (e *Engine) step(op, ctr, name string, start time.Time) time.Time {
	now := time.Now()
	e.log.Info("docker step", "op", op, "container", ctr, "step", name, "ms", now.Sub(start).Milliseconds())
	return now
}

// preflight refuses, before anything freezes, what Docker's checkpoint
// cannot carry.
func (e *Engine) preflight(ctx context.Context, cj types.ContainerJSON, opts engine.CheckpointOptions) ([]manifestVolume, int64, error) {
	if _, err := e.checkDaemon(ctx); err != nil {
		return nil, 0, err
	}
	if cj.GraphDriver.Name != "overlay2" || cj.GraphDriver.Data["UpperDir"] == "" {
		return nil, 0, fmt.Errorf("%w: storage driver %q: only overlay2's writable layer can be carried", ErrUnsupported, cj.GraphDriver.Name)
	}
	switch nm := cj.HostConfig.NetworkMode; {
	case nm.IsHost(), nm.IsNone():
	default:
		return nil, 0, fmt.Errorf("%w: network mode %q: only host or no networking can be restored elsewhere (a new network namespace would not have the container's addresses)", ErrUnsupported, nm)
	}
	if cj.HostConfig.PidMode.IsHost() {
		return nil, 0, fmt.Errorf("%w: it shares the host's PID namespace (--pid host), which CRIU cannot dump", ErrUnsupported)
	}
	n, rss, err := scanProcs(cj.State.Pid)
	if err != nil {
		return nil, 0, fmt.Errorf("look for TCP connections: %w", err)
	}
	if n > 0 {
		return nil, 0, fmt.Errorf("%w: it holds %d established TCP connection(s), and Docker has no tcp-established checkpoint", ErrUnsupported, n)
	}
	var vols []manifestVolume
	for _, m := range cj.Mounts {
		if m.Type != mount.TypeVolume {
			continue
		}
		if m.Driver != "local" {
			return nil, 0, fmt.Errorf("%w: volume %s uses driver %q; only local volumes' contents can be carried", ErrUnsupported, m.Name, m.Driver)
		}
		v, err := e.cli.VolumeInspect(ctx, m.Name)
		if err != nil {
			return nil, 0, fmt.Errorf("volume %s: %w", m.Name, err)
		}
		if len(v.Options) > 0 {
			return nil, 0, fmt.Errorf("%w: volume %s has driver options (%v); only plain local volumes can be carried", ErrUnsupported, m.Name, v.Options)
		}
		vols = append(vols, manifestVolume{Name: m.Name, Driver: m.Driver, Labels: v.Labels, Destination: m.Destination})
	}
	return vols, rss, nil
}

// Checkpoint implements engine.Checkpointer. It writes the manifest, then
// has dockerd checkpoint the container into a directory, then streams that
// directory, the writable layer's changes and the named volumes' contents.
// With opts.Keep the checkpoint stays where `docker start --checkpoint`
// finds it, for Resume. opts.TCPEstablished cannot be honoured: a container
// holding established TCP connections is refused before it freezes.
func (e *Engine) Checkpoint(ctx context.Context, id string, w io.Writer, opts engine.CheckpointOptions) (engine.Stats, error) {
	start := time.Now()
	cj, err := e.resolve(ctx, id)
	if err != nil {
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w", id, wrap(err))
	}
	if cj.State == nil || !cj.State.Running {
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w", id, engine.ErrNotRunning)
	}
	name := strings.TrimPrefix(cj.Name, "/")
	vols, mem, err := e.preflight(ctx, cj, opts)
	if err != nil {
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w", name, err)
	}
	info, _ := e.daemonInfo(ctx)
	root := e.daemonRoot()
	t := e.step("checkpoint", name, "inspect+preflight", start)

	cw := &countWriter{w: w}
	tw := tar.NewWriter(cw)
	ckpt := fmt.Sprintf("%s%d", checkpointPrefix, time.Now().UnixNano())
	m := manifest{
		Format: manifestV1, ID: identity(cj.ID, cj.Config.Labels), DockerID: cj.ID, Name: name,
		Image: cj.Config.Image, ImageID: cj.Image, Checkpoint: ckpt,
		Config: cj.Config, HostConfig: cj.HostConfig, Mounts: cj.Mounts, Volumes: vols, Memory: mem,
	}
	if err := writeJSON(tw, entryManifest, m); err != nil {
		return engine.Stats{}, fmt.Errorf("checkpoint %s: write manifest: %w", name, err)
	}

	// The freeze: dockerd has CRIU dump into containerd's temporary
	// directory, stores that in containerd's content store, and unpacks it
	// into the container's checkpoint directory, which is linked to the
	// staging directory when there is one.
	staged := false
	if stage := e.stagingDir(root, mem); stage != "" {
		if err := linkStage(root, info.DockerRootDir, cj.ID, filepath.Join(stage, cj.ID)); err != nil {
			e.log.Debug("not staging the checkpoint", "container", name, "err", err)
		} else {
			staged = true
		}
	}
	dir := filepath.Join(info.DockerRootDir, "containers", cj.ID, "checkpoints", ckpt)
	watch := e.watchCRIULogs(root, cj.ID, "dump.log")
	errc := make(chan error, 1)
	go func() {
		// Not cancelled with the caller: it may outlive this call, and an
		// interrupted checkpoint would leave nothing to resume from.
		errc <- e.cli.CheckpointCreate(context.WithoutCancel(ctx), cj.ID, types.CheckpointCreateOptions{CheckpointID: ckpt, Exit: !opts.LeaveRunning})
	}()
	// Stream the images as soon as CRIU is done, while dockerd packs and
	// unpacks them (early.go); else once dockerd returns.
	var early []earlyFile
	createDone := false
	if dp, ok := e.earlyPaths(root, cj.ID); ok && !opts.LeaveRunning && !e.cfg.NoEarlyStream {
		stop := make(chan struct{})
		got := make(chan []earlyFile, 1)
		go func() { got <- earlyImages(dp, stop) }()
		select {
		case early = <-got:
		case err = <-errc:
			createDone = true
			close(stop)
			for _, ef := range <-got {
				ef.f.Close()
			}
		}
	}
	if !createDone && early == nil {
		err, createDone = <-errc, true
	}
	criuLog := watch.stop()
	dropCheckpoint := func() {
		_ = os.RemoveAll(inRoot(root, dir))
		unlinkStage(root, info.DockerRootDir, cj.ID)
	}
	if err != nil {
		dropCheckpoint()
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w", name, criuError(err, criuLog))
	}
	st := engine.Stats{}
	var ds *criuimg.DumpStats
	n := 1
	var k int
	if early != nil {
		t = e.step("checkpoint", name, "CRIU dump (until the images are complete)", t)
		ds = statsFromEarly(early)
		k, err = addEarly(tw, early, dirCheckpoint)
		t = e.step("checkpoint", name, "stream checkpoint images (while dockerd packs and unpacks them)", t)
	} else {
		t = e.step("checkpoint", name, "docker checkpoint (CRIU dump, containerd content store, unpack)", t)
		if b, err := os.ReadFile(filepath.Join(inRoot(root, dir), "stats-dump")); err == nil {
			ds, _ = criuimg.ParseDumpStats(b)
		}
		k, err = addTree(tw, inRoot(root, dir), dirCheckpoint, false)
		t = e.step("checkpoint", name, "stream checkpoint images", t)
	}
	if ds != nil {
		st.FrozenTime, st.MemdumpTime, st.MemwriteTime, st.PagesWritten = ds.Frozen, ds.Memdump, ds.Memwrite, ds.PagesWritten
	}
	n += k
	if err == nil {
		k, err = addTree(tw, inRoot(root, cj.GraphDriver.Data["UpperDir"]), dirRootfs, true)
		n += k
	}
	if err == nil {
		k, err = injectEntries(tw) // attack tests only (inject_testhooks.go)
		n += k
	}
	for _, v := range vols {
		if err != nil {
			break
		}
		var src string
		for _, mp := range cj.Mounts {
			if mp.Type == mount.TypeVolume && mp.Name == v.Name {
				src = mp.Source
			}
		}
		k, err = addTree(tw, inRoot(root, src), dirVolumes+"/"+v.Name, true)
		n += k
	}
	if err == nil {
		err = writeJSON(tw, entryTrailer, trailer{Entries: n})
	}
	if err == nil {
		err = tw.Close()
	}
	st.Duration, st.Bytes = time.Since(start), cw.n
	if !createDone {
		// The images went out complete; the target need not wait for
		// dockerd to finish storing the checkpoint it keeps here. Calls on
		// this container wait for that (waitPending).
		e.step("checkpoint", name, "stream writable layer and volumes", t)
		done := make(chan struct{})
		e.pendMu.Lock()
		e.pending[cj.ID] = done
		e.pendMu.Unlock()
		keep := opts.Keep
		go func() {
			defer func() {
				e.pendMu.Lock()
				delete(e.pending, cj.ID)
				e.pendMu.Unlock()
				close(done)
			}()
			cerr := <-errc
			e.step("checkpoint", name, "dockerd finished the checkpoint (after the stream)", t)
			if cerr != nil {
				e.log.Error("dockerd failed to keep the checkpoint whose images were streamed; this host cannot resume the container", "container", name, "err", criuError(cerr, nil))
			}
			if cerr != nil || !keep {
				dropCheckpoint()
			}
		}()
		if err != nil {
			return st, fmt.Errorf("checkpoint %s: stream archive after %d bytes: %w", name, cw.n, err)
		}
		return st, nil
	}
	if !opts.Keep {
		dropCheckpoint()
	}
	if err != nil {
		return st, fmt.Errorf("checkpoint %s: stream archive after %d bytes: %w", name, cw.n, err)
	}
	e.step("checkpoint", name, "stream writable layer and volumes", t)
	e.log.Debug("checkpointed", "container", name, "bytes", st.Bytes, "duration", st.Duration, "staged", staged)
	return st, nil
}

// stamp writes a file of its own into a checkpoint directory before a
// start. dockerd uploads the directory into containerd's content store by
// digest; the same images it stored while checkpointing may still be there
// (containerd collects them lazily), and then the upload fails with
// "already exists". CRIU ignores the extra file.
func stamp(dir string) {
	_ = os.WriteFile(filepath.Join(dir, "orchestrate.stamp"), []byte(time.Now().UTC().Format(time.RFC3339Nano)), 0o600)
}

// linkStage makes the container's checkpoint directory a symbolic link to
// stage (a dockerd path), so that dockerd writes and reads checkpoints
// there. dockerd resolves the link as a parent directory; a link per
// checkpoint would not do, because it packs a checkpoint by walking its
// directory without following a link at the top. It refuses when the
// directory holds checkpoints already.
func linkStage(root, dataRoot, dockerID, stage string) error {
	cdir := root + filepath.Join(dataRoot, "containers", dockerID, "checkpoints")
	if target, err := os.Readlink(cdir); err == nil {
		if target == stage {
			return safefs.PrivateDir(inRoot(root, stage))
		}
		return fmt.Errorf("%s links to %s", cdir, target)
	}
	if err := os.Remove(cdir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err // a directory with checkpoints in it
	}
	if err := safefs.PrivateDir(inRoot(root, stage)); err != nil {
		return err
	}
	return os.Symlink(stage, cdir)
}

// unlinkStage undoes linkStage once the staging directory is empty.
func unlinkStage(root, dataRoot, dockerID string) {
	cdir := root + filepath.Join(dataRoot, "containers", dockerID, "checkpoints")
	target, err := os.Readlink(cdir)
	if err != nil {
		return
	}
	if rerr := os.Remove(inRoot(root, target)); rerr == nil || errors.Is(rerr, os.ErrNotExist) {
		_ = os.Remove(cdir)
	}
}

// keptCheckpoint returns the newest checkpoint this engine kept for the
// container, or "".
func (e *Engine) keptCheckpoint(ctx context.Context, dockerID string) string {
	// Read the directory: dockerd's own listing skips the symbolic links
	// that point at staged checkpoints.
	info, err := e.daemonInfo(ctx)
	if err != nil {
		return ""
	}
	ents, _ := os.ReadDir(inRoot(e.daemonRoot(), filepath.Join(info.DockerRootDir, "containers", dockerID, "checkpoints")))
	var names []string
	for _, en := range ents {
		if strings.HasPrefix(en.Name(), checkpointPrefix) {
			names = append(names, en.Name())
		}
	}
	if len(names) == 0 {
		return ""
	}
	sort.Slice(names, func(i, j int) bool {
		if len(names[i]) != len(names[j]) {
			return len(names[i]) < len(names[j])
		}
		return names[i] < names[j]
	})
	return names[len(names)-1]
}

// stagedDir returns the staging directory (with the daemonRoot prefix)
// the container's checkpoint directory links to, or "".
func (e *Engine) stagedDir(ctx context.Context, dockerID string) string {
	info, err := e.daemonInfo(ctx)
	if err != nil {
		return ""
	}
	root := e.daemonRoot()
	target, err := os.Readlink(root + filepath.Join(info.DockerRootDir, "containers", dockerID, "checkpoints"))
	if err != nil {
		return ""
	}
	return inRoot(root, target)
}

// dropKept removes a kept checkpoint, and the staging link once empty.
func (e *Engine) dropKept(ctx context.Context, dockerID, ckpt string) {
	info, err := e.daemonInfo(ctx)
	if err != nil {
		return
	}
	root := e.daemonRoot()
	_ = os.RemoveAll(inRoot(root, filepath.Join(info.DockerRootDir, "containers", dockerID, "checkpoints", ckpt)))
	unlinkStage(root, info.DockerRootDir, dockerID)
}

// Resume implements engine.Resumer: it starts the stopped container from
// the checkpoint Checkpoint kept, then drops that checkpoint. A running
// container is left as it is.
func (e *Engine) Resume(ctx context.Context, id string) error {
	cj, err := e.resolve(ctx, id)
	if err != nil {
		return fmt.Errorf("resume %s: %w", id, wrap(err))
	}
	if cj.State != nil && cj.State.Running {
		return nil
	}
	info, err := e.checkDaemon(ctx)
	if err != nil {
		return fmt.Errorf("resume %s: %w", id, err)
	}
	ckpt := e.keptCheckpoint(ctx, cj.ID)
	if ckpt == "" {
		return fmt.Errorf("resume %s: %w", id, engine.ErrNoCheckpoint)
	}
	stamp(inRoot(e.daemonRoot(), filepath.Join(info.DockerRootDir, "containers", cj.ID, "checkpoints", ckpt)))
	watch := e.watchCRIULogs(e.daemonRoot(), cj.ID, "restore.log")
	err = e.cli.ContainerStart(ctx, cj.ID, types.ContainerStartOptions{CheckpointID: ckpt})
	criuLog := watch.stop()
	if err != nil {
		return fmt.Errorf("resume %s: %w", id, criuError(err, criuLog))
	}
	e.dropKept(context.WithoutCancel(ctx), cj.ID, ckpt)
	return nil
}

// stickyReader remembers the first error its source returned, so that the
// cause of an aborted stream (for example a failed sha256 check in the
// transfer layer) is reported rather than the tar reader's view of it.
type stickyReader struct {
	r   io.Reader
	n   int64
	err error
}

func (s *stickyReader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.r.Read(p)
	s.n += int64(n)
	if err != nil {
		s.err = err
	}
	return n, err
}

// Restore implements engine.Restorer. It reads the manifest first and
// refuses, before creating anything, an archive whose image this host
// lacks or whose bind-mount sources are missing here. On any failure it
// removes the container and the volumes it created.
func (e *Engine) Restore(ctx context.Context, r io.Reader, opts engine.RestoreOptions) (engine.Container, engine.Stats, error) {
	start := time.Now()
	src := &stickyReader{r: r}
	st := engine.Stats{}
	tr := tar.NewReader(src)
	// bad classifies a failure to read the archive: the reader's own error
	// wins; anything else is a bad archive.
	bad := func(what string, err error) error {
		if src.err != nil && !errors.Is(src.err, io.EOF) {
			return fmt.Errorf("read archive after %d bytes: %w", src.n, src.err)
		}
		return fmt.Errorf("%w: %s: %v", engine.ErrBadArchive, what, err)
	}
	hdr, err := tr.Next()
	if err != nil {
		return engine.Container{}, st, fmt.Errorf("restore: %w", bad("no manifest", err))
	}
	if hdr.Name != entryManifest || hdr.Size > 16<<20 {
		return engine.Container{}, st, fmt.Errorf("restore: %w", bad("first entry", fmt.Errorf("%q is not %s", hdr.Name, entryManifest)))
	}
	var m manifest
	if err := json.NewDecoder(tr).Decode(&m); err != nil {
		return engine.Container{}, st, fmt.Errorf("restore: %w", bad("manifest", err))
	}
	if m.Format != manifestV1 || m.Config == nil || m.HostConfig == nil || m.Checkpoint == "" || !strings.HasPrefix(m.Checkpoint, checkpointPrefix) || strings.ContainsAny(m.Checkpoint, "/\\") {
		return engine.Container{}, st, fmt.Errorf("restore: %w", bad("manifest", fmt.Errorf("format %d, checkpoint %q", m.Format, m.Checkpoint)))
	}
	name := m.Name
	if opts.Name != "" {
		name = opts.Name
	}
	fail := func(err error) (engine.Container, engine.Stats, error) {
		return engine.Container{}, st, fmt.Errorf("restore %s: %w", name, err)
	}
	t := e.step("restore", name, "wait for the manifest (the source checks, then checkpoints)", start)

	// Refusals before anything is created here.
	info, err := e.checkDaemon(ctx)
	if err != nil {
		return fail(err)
	}
	root := e.daemonRoot()
	img, _, err := e.cli.ImageInspectWithRaw(ctx, m.ImageID)
	if err != nil {
		return fail(fmt.Errorf("image %s: %w", m.ImageID, wrap(err)))
	}
	if img.ID != m.ImageID {
		return fail(fmt.Errorf("%w: image %s here is %s, the checkpoint needs %s", ErrUnsupported, m.ImageID, img.ID, m.ImageID))
	}
	// What the archive's host config would grant, judged by this host's
	// policy; bind sources must exist here.
	if err := e.checkSpec(root, manifestSpec(m), opts.Local); err != nil {
		return fail(err)
	}

	// Create what the container needs, remembering it for cleanup.
	var created []string // volumes
	var swaps []*volumeSwap
	var newID string
	cleanup := func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, sw := range swaps {
			sw.undo(e.log)
		}
		if newID != "" {
			staged := e.stagedDir(cctx, newID)
			if err := e.cli.ContainerRemove(cctx, newID, types.ContainerRemoveOptions{Force: true}); err != nil {
				e.log.Warn("could not remove container left by a failed restore", "container", newID, "err", err)
			}
			if staged != "" {
				_ = os.RemoveAll(staged)
			}
		}
		for _, v := range created {
			_ = e.cli.VolumeRemove(cctx, v, true)
		}
	}
	failClean := func(err error) (engine.Container, engine.Stats, error) {
		cleanup()
		return fail(err)
	}
	volDirs := map[string]string{}
	for _, v := range m.Volumes {
		if strings.ContainsAny(v.Name, "/\\") || v.Name == "" || v.Name == "." || v.Name == ".." {
			return failClean(bad("manifest", fmt.Errorf("volume name %q", v.Name)))
		}
		if v.Driver != "local" && v.Driver != "" {
			return failClean(fmt.Errorf("%w: volume %s uses driver %q; only local volumes' contents can be carried", ErrUnsupported, v.Name, v.Driver))
		}
		if existing, err := e.cli.VolumeInspect(ctx, v.Name); err == nil {
			users, _ := e.cli.ContainerList(ctx, types.ContainerListOptions{All: true, Filters: volumeFilter(v.Name)})
			if len(users) > 0 {
				return failClean(fmt.Errorf("%w: volume %s exists here and is used by %d container(s)", ErrUnsupported, v.Name, len(users)))
			}
			// Its contents are replaced only once the archive verified:
			// until then they go into a directory beside it.
			sw, err := newVolumeSwap(inRoot(root, existing.Mountpoint))
			if err != nil {
				return failClean(fmt.Errorf("volume %s: %w", v.Name, err))
			}
			swaps = append(swaps, sw)
			volDirs[v.Name] = sw.incoming
			continue
		}
		vol, err := e.cli.VolumeCreate(ctx, volume.CreateOptions{Name: v.Name, Driver: v.Driver, Labels: v.Labels})
		if err != nil {
			return failClean(fmt.Errorf("create volume %s: %w", v.Name, err))
		}
		created = append(created, v.Name)
		volDirs[v.Name] = inRoot(root, vol.Mountpoint)
	}
	cfg := *m.Config
	cfg.Labels = map[string]string{}
	for k, v := range m.Config.Labels {
		cfg.Labels[k] = v
	}
	if opts.Name == "" {
		cfg.Labels[LabelID] = m.ID
	} else {
		delete(cfg.Labels, LabelID) // a new name is a new container
	}
	// Create from the image's name when it means the same image here, so
	// that the container shows its name; else from the ID.
	cfg.Image = m.ImageID
	if m.Image != "" {
		if named, _, err := e.cli.ImageInspectWithRaw(ctx, m.Image); err == nil && named.ID == m.ImageID {
			cfg.Image = m.Image
		}
	}
	hc := *m.HostConfig
	resp, err := e.cli.ContainerCreate(ctx, &cfg, &hc, nil, nil, name)
	if err != nil {
		return failClean(fmt.Errorf("create container: %w", err))
	}
	newID = resp.ID
	cj, err := e.cli.ContainerInspect(ctx, newID)
	if err != nil {
		return failClean(fmt.Errorf("inspect created container: %w", err))
	}
	upper := cj.GraphDriver.Data["UpperDir"]
	if cj.GraphDriver.Name != "overlay2" || upper == "" {
		return failClean(fmt.Errorf("%w: storage driver %q here: only overlay2 is supported", ErrUnsupported, cj.GraphDriver.Name))
	}
	dest := filepath.Join(info.DockerRootDir, "containers", newID, "checkpoints", m.Checkpoint)
	if stage := e.stagingDir(root, m.Memory); stage != "" {
		if err := linkStage(root, info.DockerRootDir, newID, filepath.Join(stage, newID)); err != nil {
			return failClean(fmt.Errorf("stage checkpoint: %w", err))
		}
	}
	destIn := inRoot(root, dest)
	if err := os.MkdirAll(destIn, 0o700); err != nil {
		return failClean(fmt.Errorf("checkpoint directory: %w", err))
	}
	devices, err := givenDevices(root, m.HostConfig)
	if err != nil {
		return failClean(err)
	}
	trees := map[string]*tree{}
	defer func() {
		for _, tr := range trees {
			tr.close()
		}
	}()
	// treeFor opens each tree on its first entry.
	treeFor := func(key, dir string, whiteouts bool) (*tree, error) {
		if tr := trees[key]; tr != nil {
			return tr, nil
		}
		tr, err := openTree(key, dir)
		if err != nil {
			return nil, err
		}
		if key != dirCheckpoint {
			tr.fifos, tr.whiteouts, tr.devices = true, whiteouts, devices
		}
		trees[key] = tr
		return tr, nil
	}
	t = e.step("restore", name, "create container and volumes", t)

	// The rest of the stream.
	entries, done := 1, false
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return failClean(bad("read entry", err))
		}
		entries++
		if hdr.Name == entryTrailer {
			var tl trailer
			if err := json.NewDecoder(tr).Decode(&tl); err != nil || tl.Entries != entries-1 {
				return failClean(bad("trailer", fmt.Errorf("%d entries announced, %d read (%v)", tl.Entries, entries-1, err)))
			}
			done = true
			continue
		}
		if done {
			return failClean(bad("entry after the trailer", errors.New(hdr.Name)))
		}
		var into *tree
		var rel string
		switch top, rest, _ := strings.Cut(hdr.Name, "/"); top {
		case dirCheckpoint:
			into, err = treeFor(dirCheckpoint, destIn, false)
			rel = rest
		case dirRootfs:
			into, err = treeFor(dirRootfs, inRoot(root, upper), true)
			rel = rest
		case dirVolumes:
			vname, vrest, _ := strings.Cut(rest, "/")
			if volDirs[vname] == "" {
				return failClean(bad("entry", fmt.Errorf("%s: volume not in the manifest", hdr.Name)))
			}
			into, err = treeFor(dirVolumes+"/"+vname, volDirs[vname], false)
			rel = vrest
		default:
			return failClean(bad("entry", fmt.Errorf("unexpected %q", hdr.Name)))
		}
		if err == nil {
			err = into.extract(rel, hdr, tr)
		}
		if err != nil {
			if src.err != nil && !errors.Is(src.err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return failClean(bad("read "+hdr.Name, err))
			}
			if errors.Is(err, ErrUnsafeEntry) {
				return failClean(fmt.Errorf("%w: %w", engine.ErrBadArchive, err))
			}
			return failClean(fmt.Errorf("extract %s: %w", hdr.Name, err))
		}
	}
	// The tar ends before the stream does: read to the stream's own end,
	// where the transfer layer checks size and sha256. Only a verified
	// archive touches existing volumes or starts.
	if src.err == nil {
		if _, err := io.Copy(io.Discard, src); err != nil {
			return failClean(bad("read", err))
		}
	}
	if src.err != nil && !errors.Is(src.err, io.EOF) {
		return failClean(bad("read", src.err))
	}
	if !done {
		return failClean(bad("archive", errors.New("ended before its trailer")))
	}
	for _, sw := range swaps {
		if err := sw.apply(); err != nil {
			return failClean(fmt.Errorf("replace the contents of volume %s: %w", filepath.Base(filepath.Dir(sw.dir)), err))
		}
	}
	st.Bytes = src.n
	t = e.step("restore", name, "receive and unpack archive", t)
	// Start from the checkpoint. dockerd packs the directory into
	// containerd's content store, containerd unpacks it into a temporary
	// directory, and runc has CRIU restore from there; the shim deletes that
	// directory and CRIU's log with it, so the log is held open meanwhile.
	rstart := time.Now()
	stamp(destIn)
	watch := e.watchCRIULogs(root, newID, "restore.log")
	err = e.cli.ContainerStart(context.WithoutCancel(ctx), newID, types.ContainerStartOptions{CheckpointID: m.Checkpoint})
	criuLog := watch.stop()
	st.RestoreTime = time.Since(rstart)
	if err != nil {
		return failClean(criuError(err, criuLog))
	}
	e.step("restore", name, "docker start from checkpoint (content store, unpack, CRIU restore)", rstart)
	for _, sw := range swaps {
		sw.commit()
	}
	// The checkpoint served its purpose: a restarted container starts fresh.
	_ = os.RemoveAll(destIn)
	unlinkStage(root, info.DockerRootDir, newID)
	st.Duration = time.Since(start)
	c, err := e.Inspect(context.WithoutCancel(ctx), newID)
	if err != nil {
		return engine.Container{}, st, fmt.Errorf("restore %s: inspect restored %s: %w", name, newID, err)
	}
	e.log.Debug("restored", "container", name, "bytes", st.Bytes, "duration", st.Duration)
	return c, st, nil
}
