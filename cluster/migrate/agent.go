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
	"sync"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/internal/clock"
	"github.com/edgemigrate/orchestrate/internal/pause"
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
	images imageFiles // resumable image pushes (imagefile.go)
	auth   Authority

	// Preflight, when set before Register, runs at the top of every
	// migrate-out, before anything can freeze the container: an error
	// fails the migration, untouched.
	Preflight func(ctx context.Context, job *OutJob) error

	// outTimeout bounds one migrate-out run; recordWait how long a step
	// waits for the replica to show the record it needs.
	outTimeout, recordWait time.Duration

	mu      sync.Mutex
	locks   map[string]*sync.Mutex    // by container ID
	runs    map[string]*outRun        // migrate-out runs by migration ID
	methods map[string]TransferMethod // by name
	// defMethod is the method a record that names none gets ("":
	// MethodDirect); SetPages makes it the page path.
	defMethod string
}

// NewAgent returns the agent-side steps for host.
func NewAgent(host string, eng Engine, sender Streamer, log *slog.Logger) *Agent {
	if log == nil {
		log = slog.Default()
	}
	a := &Agent{host: host, eng: eng, sender: sender, log: log.With("host", host), outTimeout: 10 * time.Minute, recordWait: defaultRecordWait,
		locks: map[string]*sync.Mutex{}, runs: map[string]*outRun{}, methods: map[string]TransferMethod{}}
	a.SetPrecopy(DefaultPrecopyConfig())
	a.RegisterMethod(directMethod{a})
	return a
}

// SetPrecopy replaces the pre-copy configuration; call before Register.
func (a *Agent) SetPrecopy(cfg PrecopyConfig) {
	a.pc, a.bases = cfg, newBaseStore(cfg.Dir, cfg.MaxBaseBytes)
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
	streams.Handle(KindPreflight, a.handlePreflight)
	a.registerImageFiles(streams)
	// Bases of an earlier run of this agent are never used: clear them.
	a.bases.clear()
	streams.Handle(KindPrecopy, a.handlePrecopy)
	streams.Handle(KindPrecopyProbe, a.handleProbe)
	streams.Handle(KindDeltaRestore, a.handleDeltaRestore)
	a.mu.Lock()
	for _, m := range a.methods {
		if r, ok := m.(TargetRegistrar); ok {
			r.RegisterTarget(streams)
		}
	}
	a.mu.Unlock()
	a.registerEnginePrecopy(streams)
	mux.HandleFunc("POST /v1/agent/migrate-out", a.leaderStep(a.migrateOut))
	mux.HandleFunc("POST /v1/agent/push-image", a.leaderStep(a.pushImage))
	mux.HandleFunc("POST /v1/agent/resume", a.leaderStep(a.containerStep(a.resume)))
	mux.HandleFunc("POST /v1/agent/remove", a.leaderStep(a.containerStep(a.remove)))
	mux.HandleFunc("POST /v1/agent/abort", a.leaderStep(a.containerStep(a.abort)))
	mux.HandleFunc("POST /v1/agent/inspect", a.containerStep(a.inspect))
	mux.HandleFunc("POST /v1/agent/has-image", a.hasImage)
	mux.HandleFunc("POST /v1/agent/accept", a.accept) // accept.go
}

// OutRequest asks a source agent to migrate a container out. The source
// takes the container, the target, its address, the deadline and the method
// from the migration record and the member list, never from the caller:
// the other fields only have to agree with the record.
type OutRequest struct {
	Migration  string `json:"migration"`
	Container  string `json:"container"`
	TargetHost string `json:"target_host"`
	TargetAddr string `json:"target_addr"` // transfer address, from gossip
	// Deadline, when set (a drain's), bounds pre-copy.
	Deadline time.Time `json:"deadline,omitzero"`
	// Method names the transfer method (TransferMethod.Name); empty is
	// the default, MethodDirect (which judges whether to pre-copy).
	Method string `json:"method,omitempty"`
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
	// Untouched (with EvFailed): the container was never frozen.
	Untouched bool `json:"untouched,omitempty"`
	// Downtime (with progRestored): from the freeze until the target
	// answered, measured on this (the source's) clock alone.
	Downtime time.Duration `json:"downtime,omitempty"`
	// Method is the transfer method that ran (final lines).
	Method string `json:"method,omitempty"`
	// Precopy says which method ran, with pre-copy's rounds (on
	// progPrecopy and the final line).
	Precopy *PrecopyReport `json:"precopy,omitempty"`
}

// final reports whether p ends a migrate-out.
func (p Progress) final() bool { return p.Kind == progRestored || p.Kind == EvFailed }

// Progress kinds beyond the machine's events: the target restored (the
// leader still confirms before EvRunning).
const progRestored EventKind = "restored"

// restoreResult is what the target's restore handler answers.
type restoreResult struct {
	Container engine.Container `json:"container"`
	Stats     engine.Stats     `json:"stats"`
}

// TransferMethod is one way of moving a container from this host (the
// source) to the target: it freezes the container (keeping what a rollback
// needs to resume it here), moves its state and has the target restore it,
// and returns once the target answered that the container runs there. It
// never resumes the container itself: after a failure the leader decides,
// because only the leader knows whether the target restored.
//
// A method's target side is whatever stream handlers it registered (see
// TargetRegistrar). The leader picks a method per migration
// (MigrationRecord.Method, sent as OutRequest.Method).
type TransferMethod interface {
	// Name is the method's name in OutRequest.Method and the record.
	Name() string
	// Transfer runs the method for job. It calls job.Frozen() right before
	// the container freezes.
	Transfer(ctx context.Context, job *OutJob) (OutResult, error)
}

// TargetRegistrar is implemented by methods with target-side handlers;
// Agent.Register calls it.
type TargetRegistrar interface {
	RegisterTarget(streams StreamHandlers)
}

// StepHooks is implemented by transfer methods that keep state on a host
// beside the container (the page path: a recording of the memory on the
// source, a page directory on the target). The agent calls them from its
// record-scoped, leader-signed steps, after the step was authorised, with
// the record that authorised it and the container's lock held; they never
// act beyond that record's container.
type StepHooks interface {
	// BeforeResume readies the record's stopped source copy for Resume
	// (a rollback); its error fails the resume, which the leader retries.
	BeforeResume(ctx context.Context, m cluster.MigrationRecord) error
	// SourceSettled: the record's source copy was removed, or runs again.
	SourceSettled(m cluster.MigrationRecord)
	// Aborted: the target holds no copy of the record's container any
	// more (abort, or Reconcile after a rollback it missed).
	Aborted(ctx context.Context, m cluster.MigrationRecord)
}

// hooks returns the registered methods' step hooks.
func (a *Agent) hooks() []StepHooks {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []StepHooks
	for _, m := range a.methods {
		if h, ok := m.(StepHooks); ok {
			out = append(out, h)
		}
	}
	return out
}

// OutJob is one migrate-out as a transfer method sees it.
type OutJob struct {
	Req       OutRequest
	Container engine.Container // running, resolved by ID
	Log       *slog.Logger

	emit   func(Progress)
	frozen time.Time // monotonic: when Frozen was called
	// method is the method that runs: the one asked for, or the one it
	// fell back to before the freeze (UseMethod); ahead is its report as
	// it stands at the freeze (Ahead). Both go to the leader with the
	// freeze, so that the record names them even if the final report
	// never reaches a leader.
	method    string
	ahead     *PrecopyReport
	streaming sync.Once
}

// Ahead sets the report the record holds from the freeze on (the final
// line replaces it).
func (j *OutJob) Ahead(rep *PrecopyReport) { j.ahead = rep }

// UseMethod says that the job runs as method name from here on (a method
// that falls back to another before the freeze).
func (j *OutJob) UseMethod(name string) { j.method = name }

// Frozen reports that the container is about to freeze: downtime runs from
// here, and from here a failure has something to undo. The line names the
// method and its report so far.
func (j *OutJob) Frozen() {
	if j.frozen.IsZero() {
		j.frozen = time.Now()
		j.emit(Progress{Kind: EvFrozen, Method: j.method, Precopy: j.ahead})
	}
}

// Streaming reports that the container's state is crossing to the target,
// with the method that carries it (once; later calls do nothing).
func (j *OutJob) Streaming() {
	j.streaming.Do(func() { j.emit(Progress{Kind: EvStreaming, Method: j.method}) })
}

// Received reports that the target has all of it and is restoring.
func (j *OutJob) Received(bytes int64, ckpt engine.Stats) {
	j.emit(Progress{Kind: EvReceived, Bytes: bytes, Checkpoint: &ckpt})
}

// Report passes an intermediate pre-copy report on to the leader.
func (j *OutJob) Report(rep *PrecopyReport) { j.emit(Progress{Kind: progPrecopy, Precopy: rep}) }

// OutResult is what a transfer method reports once the target runs the
// container.
type OutResult struct {
	// Method is the method's name (set by the caller: the job's, see
	// OutJob.UseMethod); a method reports its variants in its report
	// (Precopy.Method).
	Method      string
	Bytes       int64
	Compression string
	Checkpoint  engine.Stats
	Restore     engine.Stats
	Container   engine.Container
	Precopy     *PrecopyReport
}

// RegisterMethod adds a transfer method; call before Register.
func (a *Agent) RegisterMethod(m TransferMethod) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.methods[m.Name()] = m
}

func (a *Agent) method(name string) (TransferMethod, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if name == "" {
		name = a.defMethod
	}
	if name == "" {
		name = MethodDirect
	}
	m, ok := a.methods[name]
	return m, ok
}

// outRun is one migration's migrate-out on this host: its progress lines so
// far and whether it ended. A second request for the same migration (a new
// leader, a retried call) attaches to the run and reads every line from the
// first, instead of checkpointing again.
type outRun struct {
	mu    sync.Mutex
	lines []Progress
	done  bool
	more  chan struct{} // closed and replaced when a line is added
}

func newOutRun() *outRun { return &outRun{more: make(chan struct{})} }

func (r *outRun) add(p Progress) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return
	}
	r.lines = append(r.lines, p)
	r.done = p.final()
	close(r.more)
	r.more = make(chan struct{})
}

// from returns the lines from index i on, whether the run ended, and a
// channel closed when there is more.
func (r *outRun) from(i int) ([]Progress, bool, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lines[min(i, len(r.lines)):], r.done, r.more
}

// outRunTTL is how long a finished run's outcome is kept for a leader that
// asks again.
const outRunTTL = 30 * time.Minute

// run returns the migration's run, starting it (with start) if there is
// none.
func (a *Agent) run(id string, start func(*outRun)) *outRun {
	a.mu.Lock()
	r, ok := a.runs[id]
	if !ok {
		r = newOutRun()
		a.runs[id] = r
	}
	a.mu.Unlock()
	if !ok {
		go func() {
			start(r)
			time.AfterFunc(outRunTTL, func() {
				a.mu.Lock()
				defer a.mu.Unlock()
				if a.runs[id] == r {
					delete(a.runs, id)
				}
			})
		}()
	}
	return r
}

// migrateOut answers with the migration's progress lines (NDJSON): it
// starts the run, or attaches to the one under way, or replays the one that
// ended. The run does not depend on the request: a leader that dies
// mid-migration does not cut it, and the next leader reads its outcome.
func (a *Agent) migrateOut(w http.ResponseWriter, r *http.Request) {
	var req OutRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Migration == "" {
		writeErr(w, fmt.Errorf("%w: want {\"migration\": ID}", cluster.ErrInvalid))
		return
	}
	m, err := a.authorised(r.Context(), "migrate-out", req.Migration, a.asSource(req.Container, outPhases...))
	if err != nil {
		writeErr(w, err)
		return
	}
	if req.TargetHost != "" && req.TargetHost != m.To {
		writeErr(w, fmt.Errorf("%w: migration %s goes to %s, not %s", cluster.ErrForbidden, m.ID, m.To, req.TargetHost))
		return
	}
	addr, err := a.targetAddr(m.To)
	if err != nil {
		writeErr(w, err)
		return
	}
	req = OutRequest{Migration: m.ID, Container: m.Container, TargetHost: m.To, TargetAddr: addr, Deadline: m.Deadline, Method: m.Method}
	run := a.run(req.Migration, func(run *outRun) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), a.outTimeout)
		defer cancel()
		a.runOut(ctx, req, run.add)
	})
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	for i := 0; ; {
		lines, done, more := run.from(i)
		for _, p := range lines {
			_ = enc.Encode(p)
		}
		i += len(lines)
		if flusher != nil {
			flusher.Flush()
		}
		if done {
			return
		}
		select {
		case <-more:
		case <-r.Context().Done():
			return
		}
	}
}

// runOut is one migrate-out: preflight, then the transfer method. Every line
// goes to emit; the last is progRestored or EvFailed.
func (a *Agent) runOut(ctx context.Context, req OutRequest, emit func(Progress)) {
	stamp := func(p Progress) {
		if p.At.IsZero() {
			p.At = clock.Now().UTC()
		}
		emit(p)
	}
	log := a.log.With("migration", req.Migration, "container", req.Container, "to", req.TargetHost)
	unlock := a.lock(ctx, req.Container)
	defer unlock()
	job := &OutJob{Req: req, Log: log, emit: stamp}
	fail := func(err error, pre *PrecopyReport) {
		log.Warn("migrate out failed", "err", err, "untouched", job.frozen.IsZero())
		stamp(Progress{Kind: EvFailed, Err: err.Error(), Untouched: job.frozen.IsZero(), Precopy: pre})
	}
	c, err := a.eng.Inspect(ctx, req.Container)
	if err == nil && !c.Running {
		err = fmt.Errorf("container %s is %s on %s: %w", req.Container, c.State, a.host, engine.ErrNotRunning)
		// Not running here: it may have been frozen by an earlier run (of
		// an agent since restarted). Never report that as untouched.
		job.frozen = time.Now()
	}
	if err == nil {
		err = a.preflight(ctx, c, req, log) // the target's restore policy, before any freeze (preflight.go)
	}
	if err != nil {
		fail(err, nil)
		return
	}
	job.Container = c
	method, ok := a.method(req.Method)
	if !ok {
		fail(fmt.Errorf("%w: no transfer method %q on %s", cluster.ErrInvalid, req.Method, a.host), nil)
		return
	}
	if a.Preflight != nil {
		if err := a.Preflight(ctx, job); err != nil {
			fail(fmt.Errorf("preflight of %s for %s: %w", c.Name, req.TargetHost, err), nil)
			return
		}
	}
	job.method = method.Name()
	res, err := method.Transfer(ctx, job)
	res.Method = job.method
	if err != nil {
		fail(err, res.Precopy)
		return
	}
	downtime := time.Since(job.frozen)
	log.Info("migrated out", "method", res.Method, "bytes", res.Bytes, "compression", res.Compression, "downtime", downtime)
	stamp(Progress{Kind: progRestored, Bytes: res.Bytes, Compression: res.Compression, Checkpoint: &res.Checkpoint,
		Restore: &res.Restore, Container: &res.Container, Precopy: res.Precopy, Method: res.Method, Downtime: downtime})
}

// directMethod is the built-in transfer: the checkpoint streams straight
// into the target's restore handler, after content pre-copy rounds when the
// link is slow enough for them to pay (precopyOut judges).
type directMethod struct{ a *Agent }

func (directMethod) Name() string { return MethodDirect }

func (m directMethod) Transfer(ctx context.Context, job *OutJob) (OutResult, error) {
	// Pre-copy while the container runs; base is nil for a full transfer.
	base, pre := m.a.precopyOut(ctx, job.Container, job.Req, job.emit, job.Log)
	return m.a.streamOut(ctx, job, base, pre)
}

// streamOut is the direct method's final step, after pre-copy (base is the
// target's pre-copied archive, nil for a full transfer): the checkpoint
// streams into the target's restore.
func (a *Agent) streamOut(ctx context.Context, job *OutJob, base *delta.Index, pre *PrecopyReport) (OutResult, error) {
	c, req := job.Container, job.Req
	job.Log.Info("transfer method", "method", pre.Method, "reason", pre.Reason, "link_mbit", int(pre.LinkBps*8/1e6), "fallback", pre.Fallback)
	job.Ahead(pre.clone())
	hdr := transfer.StreamHeader{Kind: KindRestore, ID: req.Migration, Meta: map[string]string{"container": c.ID, "name": c.Name}}
	if base != nil {
		hdr.Kind, hdr.Meta["base"] = KindDeltaRestore, hex.EncodeToString(sumOf(base))
	}
	a.finalHeader(pre, &hdr)
	var ckpt engine.Stats
	var denc *delta.Encoder
	result, st, err := a.sender.Stream(ctx, req.TargetAddr, hdr, func(w io.Writer) error {
		job.Frozen()
		out := w
		if base != nil {
			var err error
			if denc, err = delta.NewEncoder(w, base); err != nil {
				return err
			}
			out = denc
		}
		cw := &progressWriter{w: out, first: func() {
			job.Streaming()
			pause.At(ctx, pause.Transferring) // test builds only
		}}
		pause.At(ctx, pause.Checkpointing) // test builds only
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
			job.Received(cw.n, ckpt)
		}
		return err
	})
	pre.final(ckpt, st, denc)
	res := OutResult{Precopy: pre}
	if err != nil {
		return res, fmt.Errorf("send %s to %s: %w", c.Name, req.TargetHost, err)
	}
	var rr restoreResult
	if err := json.Unmarshal(result, &rr); err != nil {
		return res, fmt.Errorf("target %s answered %q: %w", req.TargetHost, result, err)
	}
	res.Bytes, res.Compression, res.Checkpoint, res.Restore, res.Container = st.Bytes, st.Compression, ckpt, rr.Stats, rr.Container
	return res, nil
}

// atEOF calls f once, when r first reports io.EOF, before passing it on.
type atEOF struct {
	r    io.Reader
	f    func()
	done bool
}

func (e *atEOF) Read(b []byte) (int, error) {
	n, err := e.r.Read(b)
	if errors.Is(err, io.EOF) && !e.done {
		e.done = true
		e.f()
	}
	return n, err
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
	if _, err := a.authorised(ctx, "restore stream", h.ID, a.fromSource(ctx, h.Meta["container"], receivePhases...)); err != nil {
		return nil, err
	}
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
	r = &atEOF{r: r, f: func() { pause.At(ctx, pause.Restoring) }} // test builds only
	c, st, err := a.eng.Restore(context.WithoutCancel(ctx), r, engine.RestoreOptions{TCPEstablished: true})
	if err != nil {
		return nil, fmt.Errorf("restore %s on %s: %w", h.Meta["name"], a.host, err)
	}
	a.log.Info("restored", "migration", h.ID, "container", c.Name, "bytes", st.Bytes, "duration", st.Duration)
	return json.Marshal(restoreResult{Container: c, Stats: st})
}

func (a *Agent) handleImage(ctx context.Context, h transfer.StreamHeader, r io.Reader) ([]byte, error) {
	if err := a.authoriseImage(ctx, "image stream", h); err != nil {
		return nil, err
	}
	name, err := a.eng.LoadImage(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("load image %s on %s: %w", h.ID, a.host, err)
	}
	return []byte(name), nil
}

// authoriseImage lets an image in (streamed, or uploaded as a file) only for
// a migration record in which this host is the target of that image and the
// sender is the source.
func (a *Agent) authoriseImage(ctx context.Context, what string, h transfer.StreamHeader) error {
	from := a.fromSource(ctx, "", imagePhases...)
	_, err := a.authorised(ctx, what, h.Meta["migration"], func(m cluster.MigrationRecord) string {
		if m.Image != h.ID {
			return fmt.Sprintf("it needs image %s, not %s", short(m.Image), short(h.ID))
		}
		return from(m)
	})
	return err
}

// ImageRequest asks a source agent to send an image to a target.
type ImageRequest struct {
	Migration  string `json:"migration,omitempty"`
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
	source := a.asSource("", imagePhases...)
	m, err := a.authorised(r.Context(), "push-image", req.Migration, func(m cluster.MigrationRecord) string {
		if m.Image != req.Image {
			return fmt.Sprintf("it needs image %s, not %s", short(m.Image), short(req.Image))
		}
		return source(m)
	})
	if err != nil {
		writeErr(w, err)
		return
	}
	addr, err := a.targetAddr(m.To)
	if err != nil {
		writeErr(w, err)
		return
	}
	req.Migration, req.TargetHost, req.TargetAddr = m.ID, m.To, addr
	st, err := a.sendImage(r.Context(), req)
	if err != nil {
		writeErr(w, fmt.Errorf("send image %s to %s: %w", req.Image, req.TargetHost, err))
		return
	}
	writeJSON(w, st)
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
	m, err := a.authorised(ctx, "resume", req.Migration, a.asSource(req.Container, resumePhases...))
	if err != nil {
		return ContainerState{}, err
	}
	for _, h := range a.hooks() {
		if err := h.BeforeResume(ctx, m); err != nil {
			return ContainerState{}, err
		}
	}
	if err := a.eng.Resume(ctx, req.Container); err != nil {
		return ContainerState{}, err
	}
	a.log.Info("resumed after rollback", "container", req.Container, "migration", req.Migration)
	st, err := a.state(ctx, req.Container)
	if err == nil && st.Running {
		for _, h := range a.hooks() {
			h.SourceSettled(m)
		}
	}
	return st, err
}

// remove finalises the source: it removes the stopped copy, and refuses to
// remove a running one (that would lose the container).
func (a *Agent) remove(ctx context.Context, req ContainerRequest) (ContainerState, error) {
	m, err := a.authorised(ctx, "remove", req.Migration, a.asSource(req.Container, removePhases...))
	if err != nil {
		return ContainerState{}, err
	}
	pause.At(ctx, pause.Confirming) // test builds only
	st, err := a.state(ctx, req.Container)
	if err != nil {
		return st, err
	}
	if st.Running {
		return st, fmt.Errorf("container %s runs on %s: refusing to remove a running source copy", req.Container, a.host)
	}
	if st.Exists {
		if err := a.eng.Remove(ctx, st.Container.ID); err != nil {
			return st, err
		}
	}
	for _, h := range a.hooks() {
		h.SourceSettled(m)
	}
	return ContainerState{}, nil
}

// abort cleans the target after a failed migration: any copy of the
// container here goes, running or not (the source's copy is the one kept).
func (a *Agent) abort(ctx context.Context, req ContainerRequest) (ContainerState, error) {
	m, err := a.authorised(ctx, "abort", req.Migration, a.asTarget(req.Container, abortPhases...))
	if err != nil {
		return ContainerState{}, err
	}
	a.bases.drop(req.Migration)
	defer func() {
		for _, h := range a.hooks() {
			h.Aborted(ctx, m)
		}
	}()
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
