package copies

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/forensics"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/archive"
	"github.com/edgemigrate/orchestrate/transfer"
)

// Engine is what a target needs to start copies.
type Engine interface {
	engine.Restorer
	engine.Lister
	engine.Remover
}

// Spool is the receiving side of resumable transfers (transfer.Server).
type Spool interface {
	OpenSpooled(name string, size int64, sum string) (io.ReadCloser, error)
	RemoveSpooled(name string) error
}

// Uploader sends a file into a peer's spool, resumably (transfer.Client).
type Uploader interface {
	Upload(ctx context.Context, peer, path, remote string) (transfer.FileStats, error)
}

// Cluster is what copies need from the cluster (cluster.Cluster).
type Cluster interface {
	Name() string
	Members() []cluster.Member
	PeerClient(name string) (*cluster.Client, error)
	Snapshot(id string) (cluster.SnapshotRecord, error)
	AppendEvent(ctx context.Context, ev cluster.Event) error
	cluster.Leadership
	// StepClient is PeerClient whose requests carry this leader's step
	// signature (the Service, on the leader, orders every host step).
	StepClient(name string) (*cluster.Client, error)
	// LeaderStep wraps a host step: only the current leader's signature
	// lets a request through.
	LeaderStep(h http.HandlerFunc) http.HandlerFunc
}

var _ Cluster = (*cluster.Cluster)(nil)

// Mux is where routes are registered (the cluster's authenticated API).
type Mux interface {
	HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request))
}

// Config configures a host's copies part.
type Config struct {
	Host    string
	DataDir string // node.data_dir: snapshots/ and copies/ live under it
	// StepTimeout bounds calls to other agents other than transfers and
	// restores.
	StepTimeout time.Duration
	Logger      *slog.Logger
}

// ImageSource is what turning a checkpoint image into an archive needs
// from the engine (forensics.ImageSource; engine/podman has it).
type ImageSource = forensics.ImageSource

// Agent is one host's steps: inspecting and pushing the archives it holds,
// and starting copies from archives pushed into its spool. eng, spool and
// up may be nil on a host without an engine (it can still hold uploads).
type Agent struct {
	cfg   Config
	eng   Engine
	spool Spool
	up    Uploader
	c     Cluster
	log   *slog.Logger
}

// NewAgent returns this host's copies steps.
func NewAgent(cfg Config, c Cluster, eng Engine, spool Spool, up Uploader) *Agent {
	if cfg.StepTimeout <= 0 {
		cfg.StepTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Agent{cfg: cfg, eng: eng, spool: spool, up: up, c: c, log: cfg.Logger.With("host", cfg.Host)}
}

// Register adds the host's steps. Each is one the leader orders: a request
// without the current leader's signature for this host is refused
// (cluster.ErrForbidden) before anything is read, staged or started.
//
//	POST /v1/agent/copies/inspect      HolderRequest -> Facts
//	POST /v1/agent/copies/push         HolderRequest -> PushResult (into the target's spool)
//	POST /v1/agent/copies/drop         HolderRequest (an uploaded or staged archive)
//	POST /v1/agent/copies/stage-image  StageImageRequest -> Ref
//	POST /v1/agent/copies/restore      StartRequest -> []Copy (from a spooled file the request names by size and sha256)
//	POST /v1/agent/copies/push-image   ImagePushRequest -> SpooledFile (into the target's spool)
//	POST /v1/agent/copies/load-image   ImageLoadRequest (from a spooled file the request names by size and sha256)
func (a *Agent) Register(mux Mux) {
	step := func(pattern string, h http.HandlerFunc) { mux.HandleFunc(pattern, a.c.LeaderStep(h)) }
	step("POST /v1/agent/copies/inspect", a.route(func(ctx context.Context, req HolderRequest) (any, error) { return a.inspect(ctx, req.Ref) }))
	step("POST /v1/agent/copies/push", a.route(func(ctx context.Context, req HolderRequest) (any, error) { return a.push(ctx, req) }))
	step("POST /v1/agent/copies/drop", a.route(func(ctx context.Context, req HolderRequest) (any, error) {
		return nil, a.drop(req.Ref)
	}))
	step("POST /v1/agent/copies/stage-image", func(w http.ResponseWriter, r *http.Request) {
		var req StageImageRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil || req.Image == "" {
			cluster.WriteError(w, fmt.Errorf("%w: want {\"image\": REF}", cluster.ErrInvalid))
			return
		}
		ref, err := a.stageImage(r.Context(), req)
		if err != nil {
			cluster.WriteError(w, err)
			return
		}
		cluster.WriteJSON(w, http.StatusOK, ref)
	})
	step("POST /v1/agent/copies/restore", func(w http.ResponseWriter, r *http.Request) {
		var req StartRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Spool == "" || len(req.Names) == 0 {
			cluster.WriteError(w, fmt.Errorf("%w: want a spooled archive and names", cluster.ErrInvalid))
			return
		}
		cs, err := a.start(r.Context(), req)
		if err != nil {
			cluster.WriteError(w, err)
			return
		}
		cluster.WriteJSON(w, http.StatusOK, cs)
	})
	step("POST /v1/agent/copies/push-image", func(w http.ResponseWriter, r *http.Request) {
		var req ImagePushRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Image == "" || req.TargetHost == "" {
			cluster.WriteError(w, fmt.Errorf("%w: want {\"image\", \"target_host\", \"spool\"}", cluster.ErrInvalid))
			return
		}
		f, err := a.pushImage(r.Context(), req)
		if err != nil {
			cluster.WriteError(w, err)
			return
		}
		cluster.WriteJSON(w, http.StatusOK, f)
	})
	step("POST /v1/agent/copies/load-image", func(w http.ResponseWriter, r *http.Request) {
		var req ImageLoadRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Image == "" || req.Spool == "" {
			cluster.WriteError(w, fmt.Errorf("%w: want {\"image\", \"spool\", \"size\", \"sha256\"}", cluster.ErrInvalid))
			return
		}
		if err := a.loadImage(r.Context(), req); err != nil {
			cluster.WriteError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

func (a *Agent) route(h func(context.Context, HolderRequest) (any, error)) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		var req HolderRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || !validID(req.Ref.ID) {
			cluster.WriteError(w, fmt.Errorf("%w: want {\"ref\": {\"kind\", \"id\"}}", cluster.ErrInvalid))
			return
		}
		out, err := h(r.Context(), req)
		if err != nil {
			cluster.WriteError(w, err)
			return
		}
		if out == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		cluster.WriteJSON(w, http.StatusOK, out)
	}
}

// Ref names an archive a holder keeps.
type Ref struct {
	Kind string `json:"kind"` // KindSnapshot or KindUpload
	ID   string `json:"id"`
}

// Ref kinds.
const (
	KindSnapshot = "snapshot"
	KindUpload   = "upload"
)

// HolderRequest asks the holder of an archive to inspect, push or drop it.
type HolderRequest struct {
	Ref        Ref    `json:"ref"`
	TargetHost string `json:"target_host,omitempty"`
	// Spool is the name the archive takes in the target's spool.
	Spool string `json:"spool,omitempty"`
}

// held is an archive on this host's disk.
type held struct {
	path   string
	size   int64
	sha256 string
}

// UploadsDir holds archives uploaded for copies, under node.data_dir.
const UploadsDir = "copies"

var idRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$`)

func validID(id string) bool { return idRe.MatchString(id) }

func (a *Agent) uploadPath(id string) string {
	return filepath.Join(a.cfg.DataDir, UploadsDir, id+".tar")
}

// resolve finds the file behind ref on this host.
func (a *Agent) resolve(ref Ref) (held, error) {
	switch ref.Kind {
	case KindSnapshot:
		rec, err := a.c.Snapshot(ref.ID)
		if err != nil {
			return held{}, err
		}
		if rec.StoreHost != a.cfg.Host {
			return held{}, fmt.Errorf("%w: snapshot %s is stored on %s, not %s", cluster.ErrInvalid, rec.ID, rec.StoreHost, a.cfg.Host)
		}
		return held{path: filepath.Join(a.cfg.DataDir, forensics.StoreDir, filepath.Base(rec.File)), size: rec.Size, sha256: rec.SHA256}, nil
	case KindUpload:
		var st transfer.Staged
		b, err := os.ReadFile(strings.TrimSuffix(a.uploadPath(ref.ID), ".tar") + ".json")
		if errors.Is(err, os.ErrNotExist) {
			return held{}, fmt.Errorf("%w: no uploaded archive %s on %s", cluster.ErrNotFound, ref.ID, a.cfg.Host)
		}
		if err == nil {
			err = json.Unmarshal(b, &st)
		}
		if err != nil {
			return held{}, err
		}
		return held{path: a.uploadPath(ref.ID), size: st.Size, sha256: st.SHA256}, nil
	}
	return held{}, fmt.Errorf("%w: source kind %q", cluster.ErrInvalid, ref.Kind)
}

// Stage keeps an archive uploaded by the CLI on this host, hashed, until
// the copies started (Drop).
func (a *Agent) Stage(id string, r io.Reader) (transfer.Staged, error) {
	st, err := transfer.StageFile(a.uploadPath(id), func(w io.Writer) error {
		_, err := io.Copy(w, r)
		return err
	})
	if err != nil {
		return st, fmt.Errorf("stage archive %s: %w", id, err)
	}
	b, _ := json.Marshal(st)
	if err := os.WriteFile(strings.TrimSuffix(a.uploadPath(id), ".tar")+".json", b, 0o600); err != nil {
		_ = os.Remove(st.Path)
		return st, err
	}
	return st, nil
}

// StageImageRequest asks a host to turn a checkpoint image into an archive
// it holds for copies.
type StageImageRequest struct {
	Image     string `json:"image"`
	TLSVerify *bool  `json:"tls_verify,omitempty"`
}

// stageImage pulls the checkpoint image when the engine lacks it, and keeps
// the checkpoint archive it holds as an upload (verified: a wrong layer
// digest fails the stream, and nothing is kept). The caller drops it once
// the copies started.
func (a *Agent) stageImage(ctx context.Context, req StageImageRequest) (Ref, error) {
	src, ok := a.eng.(ImageSource)
	if a.eng == nil || !ok {
		return Ref{}, fmt.Errorf("%w: %s's engine has no checkpoint images", cluster.ErrInvalid, a.cfg.Host)
	}
	reg := engine.RegistryOptions{TLSVerify: req.TLSVerify == nil || *req.TLSVerify}
	rc, info, err := forensics.CheckpointImageArchive(ctx, src, req.Image, reg)
	if err != nil {
		return Ref{}, err
	}
	defer rc.Close()
	ref := Ref{Kind: KindUpload, ID: "image-" + newID()}
	st, err := a.Stage(ref.ID, rc)
	if err != nil {
		return Ref{}, fmt.Errorf("checkpoint image %s: %w", req.Image, err)
	}
	a.log.Info("checkpoint image staged for copies", "image", req.Image, "id", info.ID, "bytes", st.Size)
	return ref, nil
}

func (a *Agent) drop(ref Ref) error {
	if ref.Kind != KindUpload {
		return nil // snapshots belong to the store
	}
	p := a.uploadPath(ref.ID)
	_ = os.Remove(strings.TrimSuffix(p, ".tar") + ".json")
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Facts are what the copies' checks need from an archive.
type Facts struct {
	Engine      string            `json:"engine"` // "podman"; "" when the archive is not Podman's
	Name        string            `json:"name"`
	Container   string            `json:"container"`
	Image       string            `json:"image,omitempty"`
	ImageID     string            `json:"image_id,omitempty"`
	CRIUVersion string            `json:"criu_version,omitempty"`
	MemoryBytes int64             `json:"memory_bytes"`
	HostNetwork bool              `json:"host_network"`
	Listening   []string          `json:"listening,omitempty"`   // TCP addr:port
	Established []string          `json:"established,omitempty"` // TCP local -> remote
	Labels      map[string]string `json:"labels,omitempty"`
	Size        int64             `json:"size"`
	SHA256      string            `json:"sha256"`
}

// inspect reads the archive's facts.
func (a *Agent) inspect(ctx context.Context, ref Ref) (Facts, error) {
	h, err := a.resolve(ref)
	if err != nil {
		return Facts{}, err
	}
	return InspectArchive(h.path, h.size, h.sha256)
}

// InspectArchive reads what the checks need from a checkpoint archive on
// disk: Podman's (engine/archive reads its sockets) or orchestrate's Docker
// archive (its manifest; its sockets are not read, so a container on the
// host's network counts as listening). Another archive yields facts
// without an engine.
func InspectArchive(path string, size int64, sum string) (Facts, error) {
	f := Facts{Size: size, SHA256: sum}
	if ok, err := dockerFacts(path, &f); ok || err != nil {
		return f, err
	}
	arc, err := archive.Open(path, archive.DefaultConfig())
	if errors.Is(err, archive.ErrNotCheckpoint) {
		return f, nil
	}
	if err != nil {
		return f, fmt.Errorf("inspect archive: %w", err)
	}
	defer arc.Close()
	rep := arc.Report()
	f.Engine, f.Name, f.Container, f.Image, f.ImageID = "podman", rep.Container.Name, rep.Container.ID, rep.Container.Image, rep.Container.ImageID
	f.CRIUVersion, f.MemoryBytes = rep.Checkpoint.CRIUVersion, rep.Checkpoint.MemorySize
	for _, p := range rep.Processes {
		for _, s := range p.Sockets {
			if s.Protocol != "TCP" {
				continue
			}
			switch s.State {
			case "LISTEN":
				f.Listening = append(f.Listening, s.Local)
			case "ESTABLISHED":
				f.Established = append(f.Established, s.Local+" -> "+s.Remote)
			}
		}
	}
	cfg, err := configDump(path)
	if err != nil {
		return f, fmt.Errorf("inspect archive: %w", err)
	}
	f.HostNetwork = !cfg.CreateNetNS
	f.Labels = cfg.Labels
	return f, nil
}

// dockerManifestEntry is the first entry of engine/docker's archive.
const dockerManifestEntry = "orchestrate-docker.json"

// dockerFacts reads engine/docker's manifest when the archive is one.
func dockerFacts(path string, f *Facts) (bool, error) {
	file, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer file.Close()
	tr := tar.NewReader(file)
	h, err := tr.Next()
	if err != nil || h.Name != dockerManifestEntry {
		return false, nil
	}
	var m struct {
		ID      string `json:"id"`
		Name    string `json:"name"`
		Image   string `json:"image"`
		ImageID string `json:"image_id"`
		Memory  int64  `json:"memory_bytes"`
		Config  struct {
			Labels map[string]string `json:"Labels"`
		} `json:"config"`
		HostConfig struct {
			NetworkMode string `json:"NetworkMode"`
		} `json:"host_config"`
	}
	if err := json.NewDecoder(io.LimitReader(tr, 16<<20)).Decode(&m); err != nil {
		return true, fmt.Errorf("inspect archive: %s: %w", dockerManifestEntry, err)
	}
	f.Engine, f.Name, f.Container, f.Image, f.ImageID, f.MemoryBytes = "docker", m.Name, m.ID, m.Image, m.ImageID, m.Memory
	f.Labels, f.HostNetwork = m.Config.Labels, m.HostConfig.NetworkMode == "host"
	if f.HostNetwork {
		f.Listening = []string{"(ports unknown in a Docker archive)"}
	}
	return true, nil
}

// podmanConfig is the part of config.dump the checks read.
type podmanConfig struct {
	CreateNetNS bool              `json:"createNetNS"`
	Labels      map[string]string `json:"labels"`
}

// configDump reads config.dump from the archive (an early entry).
func configDump(path string) (podmanConfig, error) {
	var c podmanConfig
	f, err := os.Open(path)
	if err != nil {
		return c, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			return c, fmt.Errorf("%s: %w", archive.ConfigDumpFile, err)
		}
		if strings.TrimPrefix(h.Name, "./") == archive.ConfigDumpFile {
			return c, json.NewDecoder(io.LimitReader(tr, 64<<20)).Decode(&c)
		}
	}
}

// PushResult describes one push of an archive into a target's spool.
type PushResult struct {
	Host        string `json:"host"`
	Bytes       int64  `json:"bytes"`
	ResumedFrom int64  `json:"resumed_from,omitempty"`
	Attempts    int    `json:"attempts"`
	Verified    string `json:"verified"`
	DurationMS  int64  `json:"duration_ms"`
}

// push sends the archive into the target's spool (SFTP, resumable,
// verified), or links it into this host's own spool when the target is
// this host.
func (a *Agent) push(ctx context.Context, req HolderRequest) (PushResult, error) {
	if err := transfer.CheckName(req.Spool); err != nil {
		return PushResult{}, fmt.Errorf("%w: %v", cluster.ErrInvalid, err)
	}
	h, err := a.resolve(req.Ref)
	if err != nil {
		return PushResult{}, err
	}
	res := PushResult{Host: req.TargetHost, Bytes: h.size}
	if req.TargetHost == a.cfg.Host {
		dst := filepath.Join(a.cfg.DataDir, "spool", req.Spool)
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return res, err
		}
		if err := os.Link(h.path, dst); err != nil && !errors.Is(err, os.ErrExist) {
			return res, fmt.Errorf("spool %s here: %w", req.Ref.ID, err)
		}
		res.Verified = "local"
		return res, nil
	}
	if a.up == nil {
		return res, fmt.Errorf("%w: host %s has no transfer client", cluster.ErrInvalid, a.cfg.Host)
	}
	addr := a.transferAddr(req.TargetHost)
	if addr == "" {
		return res, fmt.Errorf("%w: no host %s with a transfer address", cluster.ErrNotFound, req.TargetHost)
	}
	st, err := a.up.Upload(ctx, addr, h.path, req.Spool)
	res.Attempts, res.ResumedFrom, res.Verified, res.DurationMS = st.Attempts, st.ResumedFrom, st.Verified, st.Duration.Milliseconds()
	if err != nil {
		return res, fmt.Errorf("push %s %s to %s: %w", req.Ref.Kind, req.Ref.ID, req.TargetHost, err)
	}
	if st.SHA256 != h.sha256 {
		return res, fmt.Errorf("push %s %s to %s: %w: sent sha256 %s, the record says %s", req.Ref.Kind, req.Ref.ID, req.TargetHost, transfer.ErrVerify, st.SHA256, h.sha256)
	}
	a.log.Info("archive pushed for copies", "source", req.Ref.ID, "to", req.TargetHost, "bytes", h.size,
		"attempts", st.Attempts, "resumed_from", st.ResumedFrom, "duration", st.Duration)
	return res, nil
}

// StartRequest asks a target to start copies from a spooled archive.
type StartRequest struct {
	Spool   string   `json:"spool"`
	Size    int64    `json:"size"`
	SHA256  string   `json:"sha256"`
	Names   []string `json:"names"`
	ImageID string   `json:"image_id,omitempty"`
}

// Copy is one started copy.
type Copy struct {
	Host       string        `json:"host"`
	Name       string        `json:"name"`
	ID         string        `json:"id"`
	Duration   time.Duration `json:"duration"`
	Error      string        `json:"error,omitempty"`
	StartedAt  time.Time     `json:"started_at"`
	RestoreCPU time.Duration `json:"restore_time,omitempty"` // the engine's restore time
}

// start restores one copy per name from the spooled archive, each read
// through a verifying reader, and removes the spooled file. It stops at
// the first failure and returns the copies that run with the error.
//
// Any member can put files into this host's spool (SFTP), so the spooled
// file is only ever read as the one the leader's signed step names: its
// size and sha256 come from the holder's inspection of its own archive,
// and a file that differs fails the restore, which then creates nothing.
// What the archive may create is still this host's decision: the engine
// judges it against the restore policy (restore.*) before creating
// anything.
func (a *Agent) start(ctx context.Context, req StartRequest) ([]Copy, error) {
	if a.eng == nil || a.spool == nil {
		return nil, fmt.Errorf("%w: host %s runs no engine", cluster.ErrInvalid, a.cfg.Host)
	}
	if err := checkSpooled(SpooledFile{Spool: req.Spool, Size: req.Size, SHA256: req.SHA256}); err != nil {
		return nil, err
	}
	defer func() { _ = a.spool.RemoveSpooled(req.Spool) }()
	var out []Copy
	for _, name := range req.Names {
		start := time.Now()
		r, err := a.spool.OpenSpooled(req.Spool, req.Size, req.SHA256)
		if err != nil {
			return out, fmt.Errorf("copy %s on %s: %w", name, a.cfg.Host, err)
		}
		c, st, err := a.eng.Restore(ctx, r, engine.RestoreOptions{Name: name, IgnoreStaticIP: true, IgnoreStaticMAC: true})
		r.Close()
		if err == nil && !c.Running {
			err = fmt.Errorf("it is %s after the restore", c.State)
			_ = a.eng.Remove(context.WithoutCancel(ctx), c.ID)
		}
		if err == nil && req.ImageID != "" && c.ImageID != "" && strings.TrimPrefix(c.ImageID, "sha256:") != strings.TrimPrefix(req.ImageID, "sha256:") {
			err = fmt.Errorf("it runs image %s, the archive needs %s", c.ImageID, req.ImageID)
			_ = a.eng.Remove(context.WithoutCancel(ctx), c.ID)
		}
		if err != nil {
			return out, fmt.Errorf("copy %s on %s: %w", name, a.cfg.Host, err)
		}
		out = append(out, Copy{Host: a.cfg.Host, Name: c.Name, ID: c.ID, Duration: time.Since(start), StartedAt: start.UTC(), RestoreCPU: st.RestoreTime})
		a.log.Info("copy started", "name", c.Name, "id", c.ID, "duration", time.Since(start))
	}
	return out, nil
}

// ImagePushRequest asks a host that has an image to put it into a
// target's spool (the leader then has the target load it: ImageLoadRequest).
type ImagePushRequest struct {
	Image      string `json:"image"`
	TargetHost string `json:"target_host"`
	// Spool is the name the image archive takes in the target's spool.
	Spool string `json:"spool"`
}

// SpooledFile is a file uploaded into a host's spool, as verified by the
// upload.
type SpooledFile struct {
	Spool  string `json:"spool"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// ImageLoadRequest asks a target to load an image from a file in its spool.
// Only the file with this size and sha256 is loaded.
type ImageLoadRequest struct {
	Image string `json:"image"`
	SpooledFile
}

// images is the engine's image part, when it has one.
func (a *Agent) images() (engine.Images, error) {
	im, ok := a.eng.(engine.Images)
	if a.eng == nil || !ok {
		return nil, fmt.Errorf("%w: host %s's engine cannot move images", cluster.ErrInvalid, a.cfg.Host)
	}
	return im, nil
}

// pushImage exports the image into a staged file under node.data_dir
// (hashed as it is written) and uploads it into the target's spool
// (resumable, verified). The staged file goes either way.
func (a *Agent) pushImage(ctx context.Context, req ImagePushRequest) (SpooledFile, error) {
	im, err := a.images()
	if err != nil {
		return SpooledFile{}, err
	}
	if err := transfer.CheckName(req.Spool); err != nil {
		return SpooledFile{}, fmt.Errorf("%w: %v", cluster.ErrInvalid, err)
	}
	if a.up == nil {
		return SpooledFile{}, fmt.Errorf("%w: host %s has no transfer client", cluster.ErrInvalid, a.cfg.Host)
	}
	addr := a.transferAddr(req.TargetHost)
	if addr == "" {
		return SpooledFile{}, fmt.Errorf("%w: no host %s with a transfer address", cluster.ErrNotFound, req.TargetHost)
	}
	staged, err := transfer.StageFile(filepath.Join(a.cfg.DataDir, StageDir, req.Spool), func(w io.Writer) error {
		return im.ExportImage(ctx, req.Image, w)
	})
	if err != nil {
		return SpooledFile{}, fmt.Errorf("export image %s: %w", short(req.Image), err)
	}
	defer os.Remove(staged.Path)
	st, err := a.up.Upload(ctx, addr, staged.Path, req.Spool)
	if err != nil {
		return SpooledFile{}, fmt.Errorf("push image %s to %s: %w", short(req.Image), req.TargetHost, err)
	}
	if st.SHA256 != staged.SHA256 {
		return SpooledFile{}, fmt.Errorf("push image %s to %s: %w: sent sha256 %s, staged %s", short(req.Image), req.TargetHost, transfer.ErrVerify, st.SHA256, staged.SHA256)
	}
	a.log.Info("image pushed for copies", "image", short(req.Image), "to", req.TargetHost, "bytes", staged.Size, "attempts", st.Attempts)
	return SpooledFile{Spool: req.Spool, Size: staged.Size, SHA256: staged.SHA256}, nil
}

// loadImage loads the spooled image archive the request names, through a
// reader that fails unless its size and sha256 match, and removes it. The
// image must then be present under the name or ID asked for.
func (a *Agent) loadImage(ctx context.Context, req ImageLoadRequest) error {
	im, err := a.images()
	if err != nil {
		return err
	}
	if a.spool == nil {
		return fmt.Errorf("%w: host %s has no spool", cluster.ErrInvalid, a.cfg.Host)
	}
	if err := checkSpooled(req.SpooledFile); err != nil {
		return err
	}
	defer func() { _ = a.spool.RemoveSpooled(req.Spool) }()
	r, err := a.spool.OpenSpooled(req.Spool, req.Size, req.SHA256)
	if err != nil {
		return fmt.Errorf("image %s on %s: %w", short(req.Image), a.cfg.Host, err)
	}
	defer r.Close()
	if _, err := im.LoadImage(ctx, r); err != nil {
		return fmt.Errorf("load image %s on %s: %w", short(req.Image), a.cfg.Host, err)
	}
	if ok, err := im.HasImage(ctx, req.Image); err != nil || !ok {
		return fmt.Errorf("load image %s on %s: the archive did not hold it (%v)", short(req.Image), a.cfg.Host, err)
	}
	a.log.Info("image loaded for copies", "image", short(req.Image), "bytes", req.Size)
	return nil
}

// checkSpooled refuses a request that does not pin the spooled file down:
// without a size and a sha256 any file a member put into the spool would
// do.
func checkSpooled(f SpooledFile) error {
	if err := transfer.CheckName(f.Spool); err != nil {
		return fmt.Errorf("%w: %v", cluster.ErrInvalid, err)
	}
	if f.Size <= 0 || !sha256Re.MatchString(f.SHA256) {
		return fmt.Errorf("%w: spooled file %s needs its size and sha256", cluster.ErrInvalid, f.Spool)
	}
	return nil
}

var sha256Re = regexp.MustCompile(`^[0-9a-f]{64}$`)

// StageDir is where a host stages files it uploads (under node.data_dir).
const StageDir = "stage"

// transferAddr is host's transfer address as gossip has it ("" if none).
func (a *Agent) transferAddr(host string) string {
	for _, m := range a.c.Members() {
		if m.Name == host {
			return m.TransferAddr
		}
	}
	return ""
}
