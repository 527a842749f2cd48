package forensics

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mathrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/migrate"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/archive"
	"github.com/edgemigrate/orchestrate/transfer"
)

// Engine is what a host's forensic steps need from its engine. Resume
// undoes a snapshot that stopped its container and then failed.
type Engine interface {
	engine.Checkpointer
	engine.Lister
	engine.Resumer
}

// Streamer sends a stream to a peer's transfer endpoint (transfer.Client).
type Streamer interface {
	Stream(ctx context.Context, peer string, h transfer.StreamHeader, produce func(w io.Writer) error) ([]byte, transfer.StreamStats, error)
}

// StreamHandlers is where the agent registers its transfer handler
// (transfer.Server).
type StreamHandlers interface {
	Handle(kind string, h transfer.Handler)
}

// Mux is where routes are registered (the cluster's authenticated API).
type Mux interface {
	HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request))
}

// Cluster is what forensics needs from the cluster (cluster.Cluster).
type Cluster interface {
	Name() string
	Members() []cluster.Member
	PeerClient(name string) (*cluster.Client, error)
	PS(ctx context.Context) cluster.PSResult
	// RefreshReports has hosts (nil: all) report afresh, waiting at most
	// wait (leader only).
	RefreshReports(ctx context.Context, hosts []string, wait time.Duration) error
	Snapshots() []cluster.SnapshotRecord
	Snapshot(id string) (cluster.SnapshotRecord, error)
	PutSnapshot(ctx context.Context, rec cluster.SnapshotRecord) error
	DeleteSnapshots(ctx context.Context, ids []string) error
	Migrations() []cluster.MigrationRecord
	AcquireLock(ctx context.Context, req cluster.AcquireLockRequest) error
	ReleaseLock(ctx context.Context, name, holder string) error
	Locks() []cluster.Lock
	cluster.Leadership
	// StepClient is PeerClient whose requests carry this leader's step
	// signature (the Service, on the leader, orders the hosts' steps).
	StepClient(name string) (*cluster.Client, error)
	// LeaderStep wraps a host step: only the current leader's signature
	// lets a request through.
	LeaderStep(h http.HandlerFunc) http.HandlerFunc
}

var _ Cluster = (*cluster.Cluster)(nil)

// Config configures a host's forensic part.
type Config struct {
	// Host is this agent's node name.
	Host string
	// DataDir is node.data_dir; the store is DataDir/snapshots.
	DataDir string
	// Retention applies when a request names none.
	Retention Retention
	// OrphanGrace is how old a file without a record must be before the
	// store removes it.
	OrphanGrace time.Duration
	// StepTimeout bounds calls to other agents other than archive streams.
	StepTimeout time.Duration
	// PruneInterval is how often Run applies retention (age retention must
	// not wait for the next snapshot to arrive).
	PruneInterval time.Duration
	// ReplicaWait is how long the store host waits for its replica to show
	// the pending upload that authorises an arriving stream.
	ReplicaWait time.Duration
	// Grep bounds a fleet-wide search on this store host.
	Grep GrepLimits
	// ImageRegistry is where checkpoint images built on this host are
	// pushed (forensics.image_registry, "host[:port][/path]"); empty: they
	// are only loaded into the host's engine.
	ImageRegistry string
	// InsecureRegistry turns off TLS verification (and allows plain HTTP)
	// for pushes (forensics.image_registry_tls_verify: false). Only for a
	// local test registry.
	InsecureRegistry bool

	Logger *slog.Logger
	// Now is the clock (tests may replace it).
	Now func() time.Time
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Retention: DefaultRetention(), OrphanGrace: 10 * time.Minute, StepTimeout: 30 * time.Second,
		PruneInterval: 10 * time.Minute, ReplicaWait: 5 * time.Second, Grep: DefaultGrepLimits(),
		Logger: slog.Default(), Now: time.Now}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	c.Retention = c.Retention.or(d.Retention)
	if c.OrphanGrace <= 0 {
		c.OrphanGrace = d.OrphanGrace
	}
	if c.StepTimeout <= 0 {
		c.StepTimeout = d.StepTimeout
	}
	if c.PruneInterval <= 0 {
		c.PruneInterval = d.PruneInterval
	}
	if c.ReplicaWait <= 0 {
		c.ReplicaWait = d.ReplicaWait
	}
	c.Grep = c.Grep.or(d.Grep)
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	if c.Now == nil {
		c.Now = d.Now
	}
	return c
}

// Agent runs one host's forensic steps: checkpointing its containers, and
// keeping the snapshot store in its data directory. Without an engine
// (a control-plane-only agent) it still keeps a store.
type Agent struct {
	cfg    Config
	eng    Engine
	sender Streamer
	c      Cluster
	st     *store
	log    *slog.Logger
	files  snapshotFiles // resumable snapshot transfers (resumable.go)

	pruneMu sync.Mutex
}

// NewAgent returns the forensic steps of this host.
func NewAgent(cfg Config, eng Engine, sender Streamer, c Cluster) *Agent {
	cfg = cfg.withDefaults()
	return &Agent{cfg: cfg, eng: eng, sender: sender, c: c, st: &store{dir: filepath.Join(cfg.DataDir, StoreDir)},
		log: cfg.Logger.With("host", cfg.Host)}
}

// Register adds the host's routes and the snapshot stream handler.
//
// Who may call them. Checkpoint, snapshot and image freeze (or stop) a
// container here and hand its memory out, and remove deletes a stored
// snapshot: the leader orders them (the Service runs there), and a
// request without the current leader's signature for this host is
// refused before anything happens. Commit is called by the container's
// host, not the leader: it is bound to the replicated state instead (a
// pending upload that names that host, this store host and the
// container, upload.go), as the snapshot stream is. File and grep read
// what this host stores and change nothing.
func (a *Agent) Register(mux Mux, streams StreamHandlers) {
	streams.Handle(KindSnapshot, a.handleSnapshot)
	a.registerSnapshotFiles(streams)
	mux.HandleFunc("POST /v1/agent/forensics/checkpoint", a.c.LeaderStep(a.checkpointStream))
	mux.HandleFunc("POST /v1/agent/forensics/snapshot", a.c.LeaderStep(a.snapshot))
	mux.HandleFunc("POST /v1/agent/forensics/commit", a.commit)
	mux.HandleFunc("GET /v1/agent/forensics/file/{id}", a.file)
	mux.HandleFunc("POST /v1/agent/forensics/remove", a.c.LeaderStep(a.remove))
	mux.HandleFunc("POST /v1/agent/forensics/grep", a.grep)
	mux.HandleFunc("POST /v1/agent/forensics/image", a.c.LeaderStep(a.image))
}

// RemoveRequest names a snapshot to remove.
type RemoveRequest struct {
	ID string `json:"id"`
}

// remove drops one snapshot stored here: the record, then the file.
func (a *Agent) remove(w http.ResponseWriter, r *http.Request) {
	var req RemoveRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || !validID(req.ID) {
		cluster.WriteError(w, fmt.Errorf("%w: want {\"id\": SNAPSHOT}", cluster.ErrInvalid))
		return
	}
	a.pruneMu.Lock()
	defer a.pruneMu.Unlock()
	if rec, err := a.c.Snapshot(req.ID); err == nil && rec.StoreHost != a.cfg.Host {
		cluster.WriteError(w, fmt.Errorf("%w: snapshot %s is stored on %s, not %s", cluster.ErrInvalid, req.ID, rec.StoreHost, a.cfg.Host))
		return
	}
	if err := a.c.DeleteSnapshots(r.Context(), []string{req.ID}); err != nil {
		cluster.WriteError(w, err)
		return
	}
	if err := a.st.remove(req.ID); err != nil {
		cluster.WriteError(w, err)
		return
	}
	a.log.Info("snapshot removed", "snapshot", req.ID)
	w.WriteHeader(http.StatusNoContent)
}

// HostCheckpointRequest asks the container's host for a checkpoint.
type HostCheckpointRequest struct {
	Container    string `json:"container"`
	LeaveRunning bool   `json:"leave_running"`
	// For the store only:
	StoreHost string     `json:"store_host,omitempty"`
	Reason    string     `json:"reason,omitempty"`
	Retention *Retention `json:"retention,omitempty"`
}

// CheckpointResult is what a streamed checkpoint reports after its data.
type CheckpointResult struct {
	Container    string       `json:"container"`
	Name         string       `json:"name"`
	Host         string       `json:"host"`
	LeaveRunning bool         `json:"leave_running"`
	Size         int64        `json:"size"`
	SHA256       string       `json:"sha256"`
	Stats        engine.Stats `json:"stats"`
}

// Trailers of a streamed archive.
const (
	TrailerResult = "Orchestrate-Checkpoint"
	TrailerError  = "Orchestrate-Error"
)

// running resolves ref to a running container here.
func (a *Agent) running(ctx context.Context, ref string) (engine.Container, error) {
	if a.eng == nil {
		return engine.Container{}, fmt.Errorf("%w: host %s runs no engine", cluster.ErrInvalid, a.cfg.Host)
	}
	c, err := a.eng.Inspect(ctx, ref)
	if errors.Is(err, engine.ErrNotFound) {
		return c, fmt.Errorf("%w: container %s on %s: %w", cluster.ErrNotFound, ref, a.cfg.Host, err)
	}
	if err == nil && !c.Running {
		err = fmt.Errorf("%w: container %s on %s is %s", cluster.ErrInvalid, ref, a.cfg.Host, c.State)
	}
	if err != nil {
		return c, err
	}
	// A migration freezes and removes this copy: a snapshot now would race
	// it (Podman would serialise the two, and one would then fail).
	for _, m := range a.c.Migrations() {
		if m.Container == c.ID && !migrate.Terminal(m.Phase) {
			return c, fmt.Errorf("%w: container %s is migrating (%s, %s): snapshot it after the migration", cluster.ErrConflict, c.Name, m.ID, m.Phase)
		}
	}
	return c, nil
}

// options: a snapshot that stops the container keeps the checkpoint on
// its host too, so that `podman container restore NAME` there resumes it.
func options(leaveRunning bool) engine.CheckpointOptions {
	return engine.CheckpointOptions{LeaveRunning: leaveRunning, TCPEstablished: true, Keep: !leaveRunning}
}

// checkpointStream writes the archive as the engine produces it and its
// outcome as a trailer. Once the first byte is sent the status is 200
// whatever happens, so the trailer is what says whether the data is whole.
func (a *Agent) checkpointStream(w http.ResponseWriter, r *http.Request) {
	var req HostCheckpointRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Container == "" {
		cluster.WriteError(w, fmt.Errorf("%w: want {\"container\": ...}", cluster.ErrInvalid))
		return
	}
	ctx := r.Context()
	c, err := a.running(ctx, req.Container)
	if err != nil {
		cluster.WriteError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-tar")
	w.Header().Set("Trailer", TrailerResult+", "+TrailerError)
	w.WriteHeader(http.StatusOK)
	sum := sha256.New()
	cw := &countWriter{w: io.MultiWriter(w, sum)}
	st, err := a.checkpointWithFacts(ctx, c.ID, cw, req.LeaveRunning)
	if err != nil {
		a.log.Warn("checkpoint failed", "container", c.Name, "err", err)
		a.undo(c, req.LeaveRunning)
		w.Header().Set(TrailerError, fmt.Sprintf("checkpoint %s on %s: %v", c.Name, a.cfg.Host, err))
		return
	}
	res := CheckpointResult{Container: c.ID, Name: c.Name, Host: a.cfg.Host, LeaveRunning: req.LeaveRunning,
		Size: cw.n, SHA256: hex.EncodeToString(sum.Sum(nil)), Stats: st}
	b, _ := json.Marshal(res)
	w.Header().Set(TrailerResult, string(b))
	a.log.Info("checkpoint streamed", "container", c.Name, "bytes", cw.n, "frozen", st.FrozenTime, "wall", st.Duration, "leave_running", req.LeaveRunning)
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// undo resumes a container that a failed snapshot stopped: a snapshot
// either completes or leaves the container as it was. It runs after the
// request's context may have ended, so it has its own.
func (a *Agent) undo(c engine.Container, leaveRunning bool) {
	if leaveRunning {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.StepTimeout)
	defer cancel()
	if now, err := a.eng.Inspect(ctx, c.ID); err != nil || now.Running {
		return
	}
	if err := a.eng.Resume(ctx, c.ID); err != nil {
		a.log.Error("resume after a failed snapshot", "container", c.Name, "err", err)
		return
	}
	a.log.Info("resumed after a failed snapshot", "container", c.Name)
}

// snapshot checkpoints a container here into the store host's snapshot
// store and returns the record. On error nothing is recorded, the store
// host keeps no file, and a stopped container is resumed.
func (a *Agent) snapshot(w http.ResponseWriter, r *http.Request) {
	var req HostCheckpointRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Container == "" {
		cluster.WriteError(w, fmt.Errorf("%w: want {\"container\": ...}", cluster.ErrInvalid))
		return
	}
	rec, err := a.Snapshot(r.Context(), req)
	if err != nil {
		cluster.WriteError(w, err)
		return
	}
	cluster.WriteJSON(w, http.StatusOK, rec)
}

// Snapshot checkpoints a container on this host into the snapshot store.
func (a *Agent) Snapshot(ctx context.Context, req HostCheckpointRequest) (rec cluster.SnapshotRecord, err error) {
	c, err := a.running(ctx, req.Container)
	if err != nil {
		return cluster.SnapshotRecord{}, err
	}
	defer func() {
		if err != nil {
			a.undo(c, req.LeaveRunning)
		}
	}()
	storeHost := firstNonEmpty(req.StoreHost, a.cfg.Host)
	var addr string
	for _, m := range a.c.Members() {
		if m.Name == storeHost {
			if m.Status != cluster.StatusAlive {
				return cluster.SnapshotRecord{}, fmt.Errorf("%w: store host %s is %s", cluster.ErrInvalid, storeHost, m.Status)
			}
			addr = m.TransferAddr
		}
	}
	if addr == "" {
		return cluster.SnapshotRecord{}, fmt.Errorf("%w: no store host %s with a transfer address", cluster.ErrNotFound, storeHost)
	}
	at := a.cfg.Now().UTC()
	rec = cluster.SnapshotRecord{ID: NewID(at), Container: c.ID, Name: c.Name, Host: a.cfg.Host, StoreHost: storeHost,
		At: at, Reason: req.Reason, LeaveRunning: req.LeaveRunning}
	done, err := a.beginUpload(ctx, rec.ID, storeHost, c.ID)
	if err != nil {
		return rec, err
	}
	defer done()
	hdr := transfer.StreamHeader{Kind: KindSnapshot, ID: rec.ID, Meta: map[string]string{"container": c.ID, "name": c.Name}}
	var st engine.Stats
	out, err := a.sendSnapshot(ctx, addr, storeHost, hdr, func(w io.Writer) error {
		var err error
		st, err = a.checkpointWithFacts(ctx, c.ID, w, req.LeaveRunning)
		return err
	})
	if err != nil {
		return rec, fmt.Errorf("snapshot %s on %s into %s: %w", c.Name, a.cfg.Host, storeHost, err)
	}
	var got received
	if err := json.Unmarshal(out, &got); err != nil {
		return rec, fmt.Errorf("snapshot %s: store host %s answered %q: %w", c.Name, storeHost, out, err)
	}
	rec.File, rec.Size, rec.SHA256 = got.File, got.Size, got.SHA256
	rec.FrozenTime, rec.WallTime = st.FrozenTime, st.Duration
	cl, err := a.c.PeerClient(storeHost)
	if err == nil {
		sctx, cancel := context.WithTimeout(ctx, a.cfg.StepTimeout)
		err = cl.Do(sctx, http.MethodPost, "/v1/agent/forensics/commit", CommitRequest{Record: rec, Retention: req.Retention}, nil)
		cancel()
	}
	if err != nil {
		return rec, fmt.Errorf("snapshot %s: record on %s: %w", c.Name, storeHost, err)
	}
	a.log.Info("snapshot stored", "snapshot", rec.ID, "container", c.Name, "store", storeHost, "bytes", rec.Size,
		"frozen", st.FrozenTime, "wall", st.Duration, "reason", req.Reason)
	return rec, nil
}

// handleSnapshot is the store host's end of a snapshot stream. It accepts
// only a stream that a pending upload in the replicated state names, from
// the member that holds it, into this host.
func (a *Agent) handleSnapshot(ctx context.Context, h transfer.StreamHeader, r io.Reader) ([]byte, error) {
	if err := a.authorizeUpload(ctx, h.ID, senderOf(ctx)); err != nil {
		a.log.Warn("refused snapshot stream", "snapshot", h.ID, "sender", senderOf(ctx), "err", err)
		return nil, err
	}
	got, err := a.st.receive(ctx, h, r)
	if err != nil {
		return nil, err
	}
	return json.Marshal(got)
}

// CommitRequest asks the store host to record a snapshot it received.
type CommitRequest struct {
	Record    cluster.SnapshotRecord `json:"record"`
	Retention *Retention             `json:"retention,omitempty"`
}

// CommitResult answers a commit.
type CommitResult struct {
	Pruned []string `json:"pruned,omitempty"`
}

// commit records a received file in the replicated state, then applies
// retention. If the record cannot be written, the file goes.
func (a *Agent) commit(w http.ResponseWriter, r *http.Request) {
	var req CommitRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || !validID(req.Record.ID) {
		cluster.WriteError(w, fmt.Errorf("%w: want a snapshot record", cluster.ErrInvalid))
		return
	}
	rec := req.Record
	ctx := r.Context()
	if rec.StoreHost != a.cfg.Host || rec.File != rec.ID+archiveExt {
		cluster.WriteError(w, fmt.Errorf("%w: snapshot %s is not stored here as %s", cluster.ErrInvalid, rec.ID, rec.File))
		return
	}
	if p, ok := a.pending(rec.ID); !ok || p.holder != rec.Host || p.storeHost != a.cfg.Host || p.container != rec.Container {
		cluster.WriteError(w, fmt.Errorf("%w: %w: no pending upload of snapshot %s from %s", cluster.ErrInvalid, ErrUnauthorized, rec.ID, rec.Host))
		return
	}
	fi, err := os.Stat(a.st.path(rec.ID))
	if err == nil && fi.Size() != rec.Size {
		err = fmt.Errorf("size %d, record says %d", fi.Size(), rec.Size)
	}
	if err == nil {
		err = a.c.PutSnapshot(ctx, rec)
	}
	if err != nil {
		_ = a.st.remove(rec.ID)
		cluster.WriteError(w, fmt.Errorf("record snapshot %s: %w", rec.ID, err))
		return
	}
	// Retention reads the local replica: wait until it has the new record.
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	for {
		if _, err := a.c.Snapshot(rec.ID); err == nil {
			break
		}
		select {
		case <-wctx.Done():
		case <-time.After(20 * time.Millisecond):
			continue
		}
		break
	}
	cancel()
	ret := a.cfg.Retention
	if req.Retention != nil {
		ret = req.Retention.or(a.cfg.Retention)
	}
	pruned, err := a.prune(ctx, ret)
	if err != nil {
		// The snapshot is stored; a failed prune is retried by the next one.
		a.log.Warn("prune snapshot store", "err", err)
	}
	cluster.WriteJSON(w, http.StatusOK, CommitResult{Pruned: pruned})
}

// prune drops the records retention selects and then their files, and
// removes files that no record names. Records go first: a record must
// never name a missing file, while a file left by a failure is an orphan
// that a later prune removes.
func (a *Agent) prune(ctx context.Context, ret Retention) ([]string, error) {
	a.pruneMu.Lock()
	defer a.pruneMu.Unlock()
	now := a.cfg.Now()
	a.releaseStaleUploads(ctx, now)
	recs := a.c.Snapshots()
	drop := Prune(recs, a.cfg.Host, now, ret)
	if len(drop) > 0 {
		if err := a.c.DeleteSnapshots(ctx, drop); err != nil {
			return nil, fmt.Errorf("forget snapshots %v: %w", drop, err)
		}
		var errs []error
		for _, id := range drop {
			if err := a.st.remove(id); err != nil {
				errs = append(errs, err)
			}
		}
		a.log.Info("snapshot retention", "removed", drop, "count", ret.Count, "max_age", ret.MaxAge)
		if err := errors.Join(errs...); err != nil {
			return drop, err
		}
	}
	recorded := map[string]bool{}
	for _, s := range recs {
		if s.StoreHost == a.cfg.Host {
			recorded[s.ID] = true
		}
	}
	for _, path := range a.st.orphans(recorded, now, a.cfg.OrphanGrace) {
		a.log.Info("removing unrecorded snapshot file", "path", path)
		_ = os.Remove(path)
	}
	a.staleSpools(now, a.cfg.OrphanGrace)
	return drop, nil
}

// Run applies the store's retention every PruneInterval (jittered), and
// soon after start (orphans a crash left), until ctx ends. A failed prune,
// e.g. while there is no leader, is retried at the next tick.
func (a *Agent) Run(ctx context.Context) error {
	t := time.NewTimer(jitter(min(time.Minute, a.cfg.PruneInterval)))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, err := a.prune(ctx, a.cfg.Retention); err != nil && ctx.Err() == nil {
			a.log.Warn("prune snapshot store", "err", err)
		}
		t.Reset(jitter(a.cfg.PruneInterval))
	}
}

// jitter returns d plus up to a tenth of it, so that hosts do not prune in
// step.
func jitter(d time.Duration) time.Duration {
	return d + time.Duration(mathrand.Int64N(int64(d)/10+1))
}

// file serves a stored archive.
func (a *Agent) file(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !validID(id) {
		cluster.WriteError(w, fmt.Errorf("%w: snapshot id %q", cluster.ErrInvalid, id))
		return
	}
	f, err := os.Open(a.st.path(id))
	if errors.Is(err, os.ErrNotExist) {
		cluster.WriteError(w, fmt.Errorf("%w: snapshot %s is not stored on %s", cluster.ErrNotFound, id, a.cfg.Host))
		return
	}
	if err != nil {
		cluster.WriteError(w, err)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/x-tar")
	http.ServeContent(w, r, "", time.Time{}, f)
}

// checkpointWithFacts checkpoints a container into w with the host facts
// (CRIU and kernel versions, which the images do not record) added to the
// archive, when the engine reports them.
func (a *Agent) checkpointWithFacts(ctx context.Context, id string, w io.Writer, leaveRunning bool) (engine.Stats, error) {
	fr, ok := a.eng.(engine.FeatureReporter)
	if !ok {
		return a.eng.Checkpoint(ctx, id, w, options(leaveRunning))
	}
	f, err := fr.Features(ctx)
	if err != nil {
		a.log.Warn("engine features for the snapshot's host facts", "err", err)
	}
	fw := archive.HostFactsWriter(w, archive.HostFacts{Host: a.cfg.Host, At: a.cfg.Now().UTC(), Engine: f.Engine,
		EngineVersion: f.EngineVersion, CRIUVersion: f.CRIUVersion, Kernel: f.Kernel, Arch: f.Arch})
	st, err := a.eng.Checkpoint(ctx, id, fw, options(leaveRunning))
	if cerr := fw.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("checkpoint %s: add host facts: %w", id, cerr)
	}
	return st, err
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}
