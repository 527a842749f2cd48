package migrate

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/transfer"
	"github.com/edgemigrate/orchestrate/transfer/delta"
)

// Engine is what the agent-side steps need from the local engine.
type Engine interface {
	engine.Checkpointer
	engine.Restorer
	engine.Resumer
	engine.Lister
	engine.Remover
	engine.Images
}

// Streamer sends a stream to a peer's transfer endpoint (transfer.Client).
type Streamer interface {
	Stream(ctx context.Context, peer string, h transfer.StreamHeader, produce func(w io.Writer) error) ([]byte, transfer.StreamStats, error)
}

// StreamHandlers is where the agent registers its transfer handlers
// (transfer.Server).
type StreamHandlers interface {
	Handle(kind string, h transfer.Handler)
}

// Mux is where the agent registers its API routes (the cluster's
// authenticated API).
type Mux interface {
	HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request))
}

// Stream kinds on the transfer layer.
const (
	KindRestore = "restore"
	KindImage   = "image"
)

// Agent runs the per-host steps of a migration. The leader calls them over
// the agent API; every step on one container holds that container's lock, so
// a rollback or a confirmation waits for a step still in flight (for example
// a restore whose stream already ended) instead of racing it.
type Agent struct {
	host   string
	eng    Engine
	sender Streamer
	log    *slog.Logger
	pc     PrecopyConfig
	bases  *baseStore // pre-copied archives, when this host is a target

	mu    sync.Mutex
	locks map[string]*sync.Mutex // by container ID
}

// NewAgent returns the agent-side steps for host.
func NewAgent(host string, eng Engine, sender Streamer, log *slog.Logger) *Agent {
	if log == nil {
		log = slog.Default()
	}
	a := &Agent{host: host, eng: eng, sender: sender, log: log.With("host", host), locks: map[string]*sync.Mutex{}}
	a.SetPrecopy(DefaultPrecopyConfig())
	return a
}

// SetPrecopy replaces the pre-copy configuration; call before Register.
func (a *Agent) SetPrecopy(cfg PrecopyConfig) {
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(os.TempDir(), "orchestrate-precopy", a.host)
	}
	a.pc, a.bases = cfg, newBaseStore(cfg.Dir)
}

// lock takes the per-container lock, resolving names to IDs first so that
// a name and an ID of one container share it.
func (a *Agent) lock(ctx context.Context, ref string) func() {
	id := ref
	if c, err := a.eng.Inspect(ctx, ref); err == nil {
		id = c.ID
	}
	a.mu.Lock()
	l, ok := a.locks[id]
	if !ok {
		l = &sync.Mutex{}
		a.locks[id] = l
	}
	a.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// Register adds the agent's routes and stream handlers.
func (a *Agent) Register(mux Mux, streams StreamHandlers) {
	streams.Handle(KindRestore, a.handleRestore)
	streams.Handle(KindImage, a.handleImage)
	// Bases of an earlier run of this agent are never used: clear them.
	a.bases.clear()
	streams.Handle(KindPrecopy, a.handlePrecopy)
	streams.Handle(KindPrecopyProbe, a.handleProbe)
	streams.Handle(KindDeltaRestore, a.handleDeltaRestore)
	a.registerEnginePrecopy(streams)
	mux.HandleFunc("POST /v1/agent/migrate-out", a.migrateOut)
	mux.HandleFunc("POST /v1/agent/push-image", a.pushImage)
	mux.HandleFunc("POST /v1/agent/resume", a.containerStep(a.resume))
	mux.HandleFunc("POST /v1/agent/remove", a.containerStep(a.remove))
	mux.HandleFunc("POST /v1/agent/abort", a.containerStep(a.abort))
	mux.HandleFunc("POST /v1/agent/inspect", a.containerStep(a.inspect))
	mux.HandleFunc("POST /v1/agent/has-image", a.hasImage)
}

// OutRequest asks a source agent to migrate a container out.
type OutRequest struct {
	Migration  string `json:"migration"`
	Container  string `json:"container"`
	TargetHost string `json:"target_host"`
	TargetAddr string `json:"target_addr"` // transfer address
	// Deadline, when set (a drain's), bounds pre-copy.
	Deadline time.Time `json:"deadline,omitzero"`
}

// Progress is one line of the migrate-out answer (NDJSON).
type Progress struct {
	Kind        EventKind         `json:"kind"`
	At          time.Time         `json:"at"`
	Bytes       int64             `json:"bytes,omitempty"`
	Compression string            `json:"compression,omitempty"`
	Checkpoint  *engine.Stats     `json:"checkpoint,omitempty"`
	Restore     *engine.Stats     `json:"restore,omitempty"`
	Container   *engine.Container `json:"container,omitempty"`
	Err         string            `json:"error,omitempty"`
	// Precopy says which method ran, with pre-copy's rounds (on
	// progPrecopy and the final line).
	Precopy *PrecopyReport `json:"precopy,omitempty"`
}

// Progress kinds beyond the machine's events: the target restored (the
// leader still confirms before EvRunning).
const progRestored EventKind = "restored"

// restoreResult is what the target's restore handler answers.
type restoreResult struct {
	Container engine.Container `json:"container"`
	Stats     engine.Stats     `json:"stats"`
}

// migrateOut checkpoints the container (Keep: so the leader can roll back
// with resume) and streams it into the target's restore handler, writing
// progress lines as it goes. It never resumes by itself: after a failure
// the leader decides, because only the leader knows whether the target
// restored.
func (a *Agent) migrateOut(w http.ResponseWriter, r *http.Request) {
	var req OutRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeErr(w, fmt.Errorf("%w: %v", cluster.ErrInvalid, err))
		return
	}
	ctx := r.Context()
	w.Header().Set("Content-Type", "application/x-ndjson")
	var wmu sync.Mutex
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	emit := func(p Progress) {
		wmu.Lock()
		defer wmu.Unlock()
		if p.At.IsZero() {
			p.At = time.Now().UTC()
		}
		_ = enc.Encode(p)
		if flusher != nil {
			flusher.Flush()
		}
	}
	log := a.log.With("migration", req.Migration, "container", req.Container, "to", req.TargetHost)
	unlock := a.lock(ctx, req.Container)
	defer unlock()

	c, err := a.eng.Inspect(ctx, req.Container)
	if err == nil && !c.Running {
		err = fmt.Errorf("container %s is %s: %w", req.Container, c.State, engine.ErrNotRunning)
	}
	if err != nil {
		emit(Progress{Kind: EvFailed, Err: err.Error()})
		return
	}
	// Pre-copy while the container runs; base is nil for a full transfer.
	base, pre := a.precopyOut(ctx, c, req, emit, log)
	log.Info("transfer method", "method", pre.Method, "reason", pre.Reason, "link_mbit", int(pre.LinkBps*8/1e6), "fallback", pre.Fallback)
	hdr := transfer.StreamHeader{Kind: KindRestore, ID: req.Migration, Meta: map[string]string{"container": c.ID, "name": c.Name}}
	if base != nil {
		hdr.Kind, hdr.Meta["base"] = KindDeltaRestore, hex.EncodeToString(sumOf(base))
	}
	a.finalHeader(pre, &hdr)
	var ckpt engine.Stats
	var denc *delta.Encoder
	result, st, err := a.sender.Stream(ctx, req.TargetAddr, hdr, func(w io.Writer) error {
		emit(Progress{Kind: EvFrozen})
		out := w
		if base != nil {
			var err error
			if denc, err = delta.NewEncoder(w, base); err != nil {
				return err
			}
			out = denc
		}
		cw := &progressWriter{w: out, first: func() { emit(Progress{Kind: EvStreaming}) }}
		var err error
		ckpt, err = a.finalCheckpoint(ctx, pre, c.ID, cw, engine.CheckpointOptions{Keep: true, TCPEstablished: true})
		if denc != nil {
			if err != nil {
				denc.CloseWithError(err)
			} else {
				err = denc.Close()
			}
		}
		if err == nil {
			emit(Progress{Kind: EvReceived, Bytes: cw.n, Checkpoint: &ckpt})
		}
		return err
	})
	pre.final(ckpt, st, denc)
	if err != nil {
		log.Warn("migrate out failed", "err", err)
		emit(Progress{Kind: EvFailed, Err: fmt.Sprintf("send %s to %s: %v", c.Name, req.TargetHost, err), Precopy: pre})
		return
	}
	var res restoreResult
	if err := json.Unmarshal(result, &res); err != nil {
		emit(Progress{Kind: EvFailed, Err: fmt.Sprintf("target %s answered %q: %v", req.TargetHost, result, err)})
		return
	}
	log.Info("migrated out", "bytes", st.Bytes, "wire", st.WireBytes, "compression", st.Compression, "duration", st.Duration)
	emit(Progress{Kind: progRestored, Bytes: st.Bytes, Compression: st.Compression, Checkpoint: &ckpt, Restore: &res.Stats, Container: &res.Container, Precopy: pre})
}

// progressWriter counts bytes and reports the first one.
type progressWriter struct {
	w     io.Writer
	n     int64
	first func()
}

func (p *progressWriter) Write(b []byte) (int, error) {
	if p.n == 0 && len(b) > 0 && p.first != nil {
		p.first()
	}
	n, err := p.w.Write(b)
	p.n += int64(n)
	return n, err
}

// handleRestore is the target's end of a migration stream. It restores
// under the container's own name and ID. The restore is not abandoned when
// the stream's context ends after the data arrived: a restore is finished
// or failed, never left half-done, and the leader then finds out which.
func (a *Agent) handleRestore(ctx context.Context, h transfer.StreamHeader, r io.Reader) ([]byte, error) {
	return a.restoreFrom(ctx, h, r)
}

// restoreFrom restores the archive r yields (a plain stream or one rebuilt
// from a delta).
func (a *Agent) restoreFrom(ctx context.Context, h transfer.StreamHeader, r io.Reader) ([]byte, error) {
	id := h.Meta["container"]
	if id == "" {
		return nil, errors.New("restore stream without a container")
	}
	unlock := a.lock(ctx, id)
	defer unlock()
	c, st, err := a.eng.Restore(context.WithoutCancel(ctx), r, engine.RestoreOptions{TCPEstablished: true})
	if err != nil {
		return nil, fmt.Errorf("restore %s on %s: %w", h.Meta["name"], a.host, err)
	}
	a.log.Info("restored", "migration", h.ID, "container", c.Name, "bytes", st.Bytes, "duration", st.Duration)
	return json.Marshal(restoreResult{Container: c, Stats: st})
}

func (a *Agent) handleImage(ctx context.Context, h transfer.StreamHeader, r io.Reader) ([]byte, error) {
	name, err := a.eng.LoadImage(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("load image %s on %s: %w", h.ID, a.host, err)
	}
	return []byte(name), nil
}

// ImageRequest asks a source agent to send an image to a target.
type ImageRequest struct {
	Image      string `json:"image"`
	TargetHost string `json:"target_host"`
	TargetAddr string `json:"target_addr"`
}

func (a *Agent) pushImage(w http.ResponseWriter, r *http.Request) {
	var req ImageRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeErr(w, fmt.Errorf("%w: %v", cluster.ErrInvalid, err))
		return
	}
	_, st, err := a.sender.Stream(r.Context(), req.TargetAddr, transfer.StreamHeader{Kind: KindImage, ID: req.Image},
		func(w io.Writer) error { return a.eng.ExportImage(r.Context(), req.Image, w) })
	if err != nil {
		writeErr(w, fmt.Errorf("send image %s to %s: %w", req.Image, req.TargetHost, err))
		return
	}
	writeJSON(w, map[string]any{"bytes": st.Bytes, "wire_bytes": st.WireBytes, "duration_ms": st.Duration.Milliseconds()})
}

func (a *Agent) hasImage(w http.ResponseWriter, r *http.Request) {
	var req ImageRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeErr(w, fmt.Errorf("%w: %v", cluster.ErrInvalid, err))
		return
	}
	ok, err := a.eng.HasImage(r.Context(), req.Image)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, map[string]bool{"present": ok})
}

// ContainerRequest names a container for resume, remove, abort, inspect.
type ContainerRequest struct {
	Container string `json:"container"`
	Migration string `json:"migration,omitempty"`
}

// ContainerState answers the container steps.
type ContainerState struct {
	Exists    bool             `json:"exists"`
	Running   bool             `json:"running"`
	Container engine.Container `json:"container"`
}

func (a *Agent) containerStep(step func(context.Context, ContainerRequest) (ContainerState, error)) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		var req ContainerRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Container == "" {
			writeErr(w, fmt.Errorf("%w: want {\"container\": ...}", cluster.ErrInvalid))
			return
		}
		unlock := a.lock(r.Context(), req.Container)
		defer unlock()
		st, err := step(r.Context(), req)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, st)
	}
}

func (a *Agent) state(ctx context.Context, id string) (ContainerState, error) {
	c, err := a.eng.Inspect(ctx, id)
	if errors.Is(err, engine.ErrNotFound) {
		return ContainerState{}, nil
	}
	if err != nil {
		return ContainerState{}, err
	}
	return ContainerState{Exists: true, Running: c.Running, Container: c}, nil
}

// resume rolls the source back: the container runs again from its kept
// checkpoint (a running container is left alone).
func (a *Agent) resume(ctx context.Context, req ContainerRequest) (ContainerState, error) {
	if err := a.eng.Resume(ctx, req.Container); err != nil {
		return ContainerState{}, err
	}
	a.log.Info("resumed after rollback", "container", req.Container, "migration", req.Migration)
	return a.state(ctx, req.Container)
}

// remove finalises the source: it removes the stopped copy, and refuses to
// remove a running one (that would lose the container).
func (a *Agent) remove(ctx context.Context, req ContainerRequest) (ContainerState, error) {
	st, err := a.state(ctx, req.Container)
	if err != nil || !st.Exists {
		return st, err
	}
	if st.Running {
		return st, fmt.Errorf("container %s runs on %s: refusing to remove a running source copy", req.Container, a.host)
	}
	if err := a.eng.Remove(ctx, st.Container.ID); err != nil {
		return st, err
	}
	return ContainerState{}, nil
}

// abort cleans the target after a failed migration: any copy of the
// container here goes, running or not (the source's copy is the one kept).
func (a *Agent) abort(ctx context.Context, req ContainerRequest) (ContainerState, error) {
	if req.Migration != "" {
		a.bases.drop(req.Migration)
	}
	st, err := a.state(ctx, req.Container)
	if err != nil || !st.Exists {
		return st, err
	}
	if err := a.eng.Remove(ctx, st.Container.ID); err != nil {
		return st, err
	}
	a.log.Info("removed target copy after rollback", "container", req.Container, "migration", req.Migration)
	return ContainerState{}, nil
}

func (a *Agent) inspect(ctx context.Context, req ContainerRequest) (ContainerState, error) {
	return a.state(ctx, req.Container)
}

func writeJSON(w http.ResponseWriter, v any) { cluster.WriteJSON(w, http.StatusOK, v) }

// writeErr sends err with its sentinel; engine.ErrNotFound maps to the
// cluster's, so callers can act on it.
func writeErr(w http.ResponseWriter, err error) {
	if errors.Is(err, engine.ErrNotFound) {
		err = fmt.Errorf("%w: %w", cluster.ErrNotFound, err)
	}
	cluster.WriteError(w, err)
}
