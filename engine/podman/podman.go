//go:build remote

// Package podman implements engine.Engine against a Podman service socket
// (`podman system service`), using the v4 bindings.
//
// Checkpoint and restore stream: the exported archive flows from the
// service's response body straight to the caller's writer, and a restore
// reads the caller's reader as the request body. orchestrate writes no copy of
// its own; the Podman service itself still stages the archive in its TMPDIR
// (see docs: put that on tmpfs). While bytes flow, a tar scanner reads the
// archive's small metadata entries (config.dump, stats-dump) so that CRIU's
// statistics can be returned and a failed restore can be cleaned up.
//
// The engine talks to the service only; it also runs `criu` locally for
// feature detection and reads CRIU's log files to put their error lines into
// errors, so it expects to run on the same host as the service.
package podman

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containers/podman/v4/pkg/bindings"
	"github.com/containers/podman/v4/pkg/bindings/containers"
	"github.com/containers/podman/v4/pkg/bindings/images"
	"github.com/containers/podman/v4/pkg/bindings/system"

	"github.com/edgemigrate/orchestrate/engine"
)

// apiVersion is the libpod API version orchestrate speaks in the requests it
// builds itself; Podman 4.x services accept it.
const apiVersion = "v4.0.0"

// Config configures the Podman engine.
type Config struct {
	// Socket is the service URI, e.g. unix:///run/podman/podman.sock.
	Socket string
	// CRIU is the criu binary used for feature detection (default "criu" on PATH).
	CRIU   string
	Logger *slog.Logger
	// ConnectTimeout bounds the first ping of the service.
	ConnectTimeout time.Duration
	// CRIUConfigDir is where runc looks for CRIU's config file
	// (runc.conf); the page path writes it there (pages.go).
	CRIUConfigDir string
	// ListenPages opens the loopback listener CRIU's page-server
	// connection comes to; it must be in the network namespace of the
	// service's runc. Nil: TCP on 127.0.0.1, a free port.
	ListenPages func() (net.Listener, error)
	// PageStall ends a page session that makes no progress this long
	// (a cut link). Zero: 10 s.
	PageStall time.Duration
	// CLI is the command line of the podman client acting on the same
	// storage as the service, for the one step the service's API lacks
	// (`container cleanup` after a checkpoint whose service died,
	// interrupted.go). Nil: "podman".
	CLI []string
	// Policy is this host's restore policy (policy.go); the zero value
	// refuses privileged containers, host binds, devices and added
	// capabilities.
	Policy engine.RestorePolicy
}

// DefaultConfig returns the defaults for a rootful Podman service.
func DefaultConfig() Config {
	return Config{
		Socket:         "unix:///run/podman/podman.sock",
		CRIU:           "criu",
		Logger:         slog.Default(),
		ConnectTimeout: 10 * time.Second,
		CRIUConfigDir:  "/etc/criu",
		ListenPages:    func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") },
		PageStall:      10 * time.Second,
		CLI:            []string{"podman"},
	}
}

// Engine is the Podman implementation of engine.Engine. It is safe for
// concurrent use; it owns no goroutines beyond the duration of a call.
type Engine struct {
	cfg     Config
	connCtx context.Context // carries the bindings' connection
	conn    *bindings.Connection
	log     *slog.Logger

	featOnce sync.Once
	feat     engine.Features
	featErr  error

	storeMu     sync.Mutex
	graphRoot   string // from the service's info, once
	graphDriver string

	pages pageGate // page-path checkpoints (pages.go)
}

var _ engine.Engine = (*Engine)(nil)

// New connects to the Podman service and checks that it answers.
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
	if cfg.CRIUConfigDir == "" {
		cfg.CRIUConfigDir = def.CRIUConfigDir
	}
	if cfg.ListenPages == nil {
		cfg.ListenPages = def.ListenPages
	}
	if cfg.PageStall <= 0 {
		cfg.PageStall = def.PageStall
	}
	if len(cfg.CLI) == 0 {
		cfg.CLI = def.CLI
	}
	pingCtx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	// The bindings keep the connection in the context; it must outlive
	// this call, so detach it from ctx's cancellation.
	connCtx, err := bindings.NewConnection(context.WithoutCancel(pingCtx), cfg.Socket)
	if err != nil {
		return nil, fmt.Errorf("connect to podman at %s: %w", cfg.Socket, err)
	}
	conn, err := bindings.GetClient(connCtx)
	if err != nil {
		return nil, fmt.Errorf("connect to podman at %s: %w", cfg.Socket, err)
	}
	e := &Engine{cfg: cfg, connCtx: connCtx, conn: conn, log: cfg.Logger.With("engine", "podman")}
	e.removeStaleRuncConf(ctx)
	return e, nil
}

// callCtx has the caller's deadline and cancellation and the bindings'
// connection values.
type callCtx struct {
	context.Context
	values context.Context
}

func (c callCtx) Value(k any) any {
	if v := c.Context.Value(k); v != nil {
		return v
	}
	return c.values.Value(k)
}

func (e *Engine) call(ctx context.Context) context.Context { return callCtx{ctx, e.connCtx} }

// apiError is the JSON error body of the libpod API.
type apiError struct {
	Cause    string `json:"cause"`
	Message  string `json:"message"`
	Response int    `json:"response"`
}

// do sends a raw request to the service; used where the bindings would
// stage data in files or retry a streamed body.
func (e *Engine) do(ctx context.Context, method, path string, q url.Values, body io.Reader) (*http.Response, error) {
	u := "http://d/" + apiVersion + "/libpod" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-tar")
	}
	return e.conn.Client.Do(req)
}

// responseError turns a non-2xx libpod response into an error.
func responseError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var ae apiError
	msg := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &ae) == nil && ae.Message != "" {
		msg = ae.Message
	}
	err := fmt.Errorf("podman: %s (HTTP %d)", msg, resp.StatusCode)
	if resp.StatusCode == http.StatusNotFound {
		err = fmt.Errorf("%w: %s", engine.ErrNotFound, msg)
	}
	return withCRIULog(err, msg)
}

var (
	logFileRe  = regexp.MustCompile(`log file: (\S+\.log)`)
	runcCRIURe = regexp.MustCompile(`runc (checkpoint|restore) .*--work-path (\S+)`)
)

// withCRIULog adds CRIU's error lines to err when msg points at a CRIU log
// file. Podman says only "criu failed: type NOTIFY errno 0" with the log's
// path, or that `runc checkpoint --work-path DIR` failed, whose log is
// DIR/dump.log (restore.log for a restore).
func withCRIULog(err error, msg string) error {
	var logFile string
	if m := logFileRe.FindStringSubmatch(msg); m != nil {
		logFile = m[1]
	} else if m := runcCRIURe.FindStringSubmatch(msg); m != nil {
		logFile = filepath.Join(m[2], map[string]string{"checkpoint": "dump.log", "restore": "restore.log"}[m[1]])
	} else if !strings.Contains(msg, "criu failed") {
		return err
	}
	var lines []string
	if logFile != "" {
		if b, rerr := os.ReadFile(logFile); rerr == nil {
			for _, l := range strings.Split(string(b), "\n") {
				// CRIU always complains that it cannot raise its own
				// RLIMIT_NOFILE inside a container's limits; harmless.
				if strings.Contains(l, "Error (") && !strings.Contains(l, "RLIMIT_NOFILE") {
					lines = append(lines, strings.TrimSpace(l))
				}
			}
		}
	}
	if len(lines) > 4 {
		lines = lines[len(lines)-4:]
	}
	if len(lines) == 0 {
		return fmt.Errorf("%w: %w", engine.ErrCRIU, err)
	}
	return fmt.Errorf("%w: %w; criu log: %s", engine.ErrCRIU, err, strings.Join(lines, " | "))
}

// Checkpoint implements engine.Checkpointer. The container must be running.
// With opts.Keep the checkpoint also stays on this host so Resume can roll
// back. If the dump fails, CRIU leaves the container running.
func (e *Engine) Checkpoint(ctx context.Context, id string, w io.Writer, opts engine.CheckpointOptions) (engine.Stats, error) {
	return e.checkpointQuery(ctx, id, w, checkpointOptions(opts))
}

// stickyReader remembers the first error its source returned, so that the
// cause of an aborted upload (for example a failed sha256 check in the
// transfer layer) is reported instead of the HTTP client's wrapping of it.
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

// restoreReport is one element of the libpod restore response
// (entities.RestoreReport; durations in µs).
type restoreReport struct {
	Err             any    `json:"Err"`
	ID              string `json:"Id"`
	RuntimeDuration int64  `json:"runtime_restore_duration"`
	CRIU            *struct {
		RestoreTime int64 `json:"restore_time"`
	} `json:"criu_statistics"`
}

// restoreTime is CRIU's own restore time when the service reports it, else
// the runtime's (runc restore).
func (r restoreReport) restoreTime() time.Duration {
	if r.CRIU != nil && r.CRIU.RestoreTime > 0 {
		return time.Duration(r.CRIU.RestoreTime) * time.Microsecond
	}
	return time.Duration(r.RuntimeDuration) * time.Microsecond
}

// Restore implements engine.Restorer. It streams r into the service. On any
// failure (a read error from r, a truncated or corrupted archive, a CRIU
// error) it removes the container the failed restore may have created, so
// nothing half-created is left behind.
func (e *Engine) Restore(ctx context.Context, r io.Reader, opts engine.RestoreOptions) (engine.Container, engine.Stats, error) {
	start := time.Now()
	before, err := e.containerSet(ctx)
	if err != nil {
		return engine.Container{}, engine.Stats{}, fmt.Errorf("restore: %w", err)
	}
	q := url.Values{}
	q.Set("import", "true")
	q.Set("keep", fmt.Sprint(opts.Keep))
	q.Set("tcpEstablished", fmt.Sprint(opts.TCPEstablished))
	q.Set("ignoreStaticIP", fmt.Sprint(opts.IgnoreStaticIP))
	q.Set("ignoreStaticMAC", fmt.Sprint(opts.IgnoreStaticMAC))
	q.Set("printStats", "true")
	if opts.Name != "" {
		q.Set("name", opts.Name)
	}
	src := &stickyReader{r: r}
	if !opts.Local {
		src.r = e.checkArchive(r) // the restore policy (policy.go)
	}
	sc := newScanner()
	resp, err := e.do(ctx, http.MethodPost, "/containers/import/restore", q, io.TeeReader(src, sc))
	if err == nil {
		defer resp.Body.Close()
	}
	sc.finish()
	st := engine.Stats{Bytes: src.n}
	fail := func(err error) (engine.Container, engine.Stats, error) {
		name := opts.Name
		if name == "" {
			name = sc.config().Name
		}
		e.cleanupFailedRestore(before, sc.config().ID, opts.Name)
		if name != "" {
			return engine.Container{}, st, fmt.Errorf("restore %s: %w", name, err)
		}
		return engine.Container{}, st, fmt.Errorf("restore: %w", err)
	}
	switch {
	case src.err != nil && !errors.Is(src.err, io.EOF):
		return fail(fmt.Errorf("read archive after %d bytes: %w", src.n, src.err))
	case err != nil:
		return fail(err)
	case resp.StatusCode != http.StatusOK:
		rerr := responseError(resp)
		if sc.err() != nil || !sc.complete() || sc.config().ID == "" {
			rerr = fmt.Errorf("%w (%v): %w", engine.ErrBadArchive, archiveProblem(sc), rerr)
		}
		return fail(rerr)
	}
	rep, err := decodeRestoreReport(resp.Body)
	if err != nil {
		return fail(err)
	}
	st.Duration = time.Since(start)
	st.RestoreTime = rep.restoreTime()
	e.pagesTaken(ctx, rep.ID)
	c, err := e.Inspect(ctx, rep.ID)
	if err != nil {
		return engine.Container{}, st, fmt.Errorf("restore: inspect restored %s: %w", rep.ID, err)
	}
	e.log.Debug("restored", "container", c.Name, "bytes", st.Bytes, "duration", st.Duration)
	return c, st, nil
}

func archiveProblem(sc *scanner) string {
	switch {
	case sc.err() != nil:
		return sc.err().Error()
	case !sc.complete():
		return "archive ended before its end-of-archive marker"
	default:
		return "archive has no " + entryConfigDump
	}
}

// containerSet returns the IDs and names of all containers, for telling
// apart what a failed restore created.
func (e *Engine) containerSet(ctx context.Context) (map[string]bool, error) {
	list, err := e.List(ctx)
	if err != nil {
		return nil, err
	}
	set := make(map[string]bool, 2*len(list))
	for _, c := range list {
		set[c.ID], set[c.Name] = true, true
	}
	return set, nil
}

// cleanupFailedRestore removes a container created by a failed restore: one
// named name (or with the archive's id) that did not exist before.
func (e *Engine) cleanupFailedRestore(before map[string]bool, archiveID, name string) {
	// The caller's ctx may be the reason for the failure: clean up anyway.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, ref := range []string{name, archiveID} {
		if ref == "" || before[ref] {
			continue
		}
		c, err := e.Inspect(ctx, ref)
		if err != nil {
			continue
		}
		if before[c.ID] || before[c.Name] {
			continue
		}
		if err := e.Remove(ctx, c.ID); err != nil {
			e.log.Warn("could not remove container left by a failed restore", "container", c.ID, "err", err)
		} else {
			e.log.Info("removed container left by a failed restore", "container", c.ID)
		}
	}
}

// Resume implements engine.Resumer: it restores the container in place from
// the checkpoint kept by Checkpoint(Keep: true). A running container is left
// as it is.
func (e *Engine) Resume(ctx context.Context, id string) error {
	c, err := e.Inspect(ctx, id)
	if err != nil {
		return fmt.Errorf("resume %s: %w", id, err)
	}
	if c.Running {
		return nil
	}
	if !c.Checkpointed {
		// Podman may have died during the checkpoint, after CRIU
		// finished (interrupted.go).
		if err := e.finishInterrupted(ctx, c.ID); err != nil {
			return fmt.Errorf("resume %s: %w (state %s): %v", id, engine.ErrNoCheckpoint, c.State, err)
		}
	}
	q := url.Values{}
	q.Set("keep", "false")
	// Established connections dumped with the checkpoint need this to come
	// back; it is harmless when there are none.
	q.Set("tcpEstablished", "true")
	resp, err := e.do(ctx, http.MethodPost, "/containers/"+url.PathEscape(c.ID)+"/restore", q, nil)
	if err != nil {
		return fmt.Errorf("resume %s: %w", id, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("resume %s: %w", id, responseError(resp))
	}
	if _, err := decodeRestoreReport(resp.Body); err != nil {
		return fmt.Errorf("resume %s: %w", id, err)
	}
	return nil
}

// decodeRestoreReport reads a restore response: one report object (an
// array of one from some service versions).
func decodeRestoreReport(r io.Reader) (restoreReport, error) {
	b, err := io.ReadAll(io.LimitReader(r, 1<<20))
	if err != nil {
		return restoreReport{}, fmt.Errorf("read restore response: %w", err)
	}
	var rep restoreReport
	if err := json.Unmarshal(b, &rep); err != nil {
		var reps []restoreReport
		if err2 := json.Unmarshal(b, &reps); err2 != nil || len(reps) != 1 {
			return restoreReport{}, fmt.Errorf("unexpected restore response %.200q: %w", b, err)
		}
		rep = reps[0]
	}
	if rep.Err != nil {
		return rep, fmt.Errorf("podman: %v", rep.Err)
	}
	if rep.ID == "" {
		return rep, fmt.Errorf("unexpected restore response %.200q: no container ID", b)
	}
	return rep, nil
}

// List implements engine.Lister: every container, with memory use for the
// running ones when the service reports it.
func (e *Engine) List(ctx context.Context) ([]engine.Container, error) {
	all := true
	list, err := containers.List(e.call(ctx), &containers.ListOptions{All: &all})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]engine.Container, 0, len(list))
	var running []string
	for _, l := range list {
		if l.IsInfra {
			continue
		}
		c := engine.Container{
			ID: l.ID, Image: l.Image, ImageID: l.ImageID, State: l.State, Running: l.State == "running",
			Labels: l.Labels, Created: l.Created,
		}
		if len(l.Names) > 0 {
			c.Name = l.Names[0]
		}
		if c.Running {
			running = append(running, c.ID)
		}
		out = append(out, c)
	}
	if len(running) > 0 {
		mem := e.memory(ctx, running)
		for i := range out {
			out[i].MemoryBytes = mem[out[i].ID]
		}
	}
	return out, nil
}

// memory returns the memory use of running containers; failures leave them
// at zero (the stats endpoint is best effort under cgroup v1).
func (e *Engine) memory(ctx context.Context, ids []string) map[string]int64 {
	out := map[string]int64{}
	q := url.Values{}
	q.Set("stream", "false")
	for _, id := range ids {
		q.Add("containers", id)
	}
	resp, err := e.do(ctx, http.MethodGet, "/containers/stats", q, nil)
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	var report struct {
		Stats []struct {
			ContainerID string `json:"ContainerID"`
			MemUsage    int64  `json:"MemUsage"`
		} `json:"Stats"`
	}
	if resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&report) == nil {
		for _, s := range report.Stats {
			out[s.ContainerID] = s.MemUsage
		}
	}
	return out
}

// inspectData is the part of libpod's inspect the engine reads.
type inspectData struct {
	ID        string    `json:"Id"`
	Name      string    `json:"Name"`
	Image     string    `json:"Image"`
	ImageName string    `json:"ImageName"`
	Created   time.Time `json:"Created"`
	StaticDir string    `json:"StaticDir"`
	State     struct {
		Status       string    `json:"Status"`
		Running      bool      `json:"Running"`
		Checkpointed bool      `json:"Checkpointed"`
		StartedAt    time.Time `json:"StartedAt"`
		RestoredAt   time.Time `json:"RestoredAt"`
	} `json:"State"`
	Config struct {
		Labels      map[string]string `json:"Labels"`
		Annotations map[string]string `json:"Annotations"`
	} `json:"Config"`
}

func (e *Engine) inspect(ctx context.Context, id string) (inspectData, error) {
	var d inspectData
	resp, err := e.do(ctx, http.MethodGet, "/containers/"+url.PathEscape(id)+"/json", nil, nil)
	if err != nil {
		return d, fmt.Errorf("inspect %s: %w", id, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return d, fmt.Errorf("container %s: %w", id, responseError(resp))
	}
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		return d, fmt.Errorf("inspect %s: decode: %w", id, err)
	}
	return d, nil
}

// Inspect implements engine.Lister.
func (e *Engine) Inspect(ctx context.Context, id string) (engine.Container, error) {
	d, err := e.inspect(ctx, id)
	if err != nil {
		return engine.Container{}, err
	}
	return engine.Container{
		ID: d.ID, Name: d.Name, Image: d.ImageName, ImageID: d.Image, State: d.State.Status,
		Running: d.State.Running, Labels: d.Config.Labels, Created: d.Created,
		Checkpointed: d.State.Checkpointed && !d.State.Running,
	}, nil
}

// Remove implements engine.Remover: it stops (without grace) and removes.
func (e *Engine) Remove(ctx context.Context, id string) error {
	force := true
	var timeout uint = 0
	reports, err := containers.Remove(e.call(ctx), id, &containers.RemoveOptions{Force: &force, Timeout: &timeout})
	if err != nil {
		if strings.Contains(err.Error(), "no such container") {
			return fmt.Errorf("remove %s: %w", id, engine.ErrNotFound)
		}
		return fmt.Errorf("remove %s: %w", id, err)
	}
	for _, r := range reports {
		if r.Err != nil {
			return fmt.Errorf("remove %s: %w", id, r.Err)
		}
	}
	return nil
}

// HasImage implements engine.Images.
func (e *Engine) HasImage(ctx context.Context, ref string) (bool, error) {
	ok, err := images.Exists(e.call(ctx), ref, nil)
	if err != nil {
		return false, fmt.Errorf("image %s: %w", ref, err)
	}
	return ok, nil
}

// ExportImage implements engine.Images: a docker-archive, as `podman save`
// writes it, which keeps the image ID when loaded elsewhere. An image given
// by ID is exported under its first name, because a restore looks the image
// up by the name recorded in the checkpoint.
func (e *Engine) ExportImage(ctx context.Context, ref string, w io.Writer) error {
	format := "docker-archive"
	if img, err := images.GetImage(e.call(ctx), ref, nil); err == nil && len(img.RepoTags) > 0 {
		ref = img.RepoTags[0]
	}
	if err := images.Export(e.call(ctx), []string{ref}, w, &images.ExportOptions{Format: &format}); err != nil {
		if strings.Contains(err.Error(), "image not known") {
			return fmt.Errorf("export image %s: %w", ref, engine.ErrNotFound)
		}
		return fmt.Errorf("export image %s: %w", ref, err)
	}
	return nil
}

// LoadImage implements engine.Images.
func (e *Engine) LoadImage(ctx context.Context, r io.Reader) (string, error) {
	rep, err := images.Load(e.call(ctx), r)
	if err != nil {
		return "", fmt.Errorf("load image: %w", err)
	}
	if len(rep.Names) == 0 {
		return "", errors.New("load image: the service loaded nothing")
	}
	return rep.Names[0], nil
}

// Features implements engine.FeatureReporter. CRIU's abilities are probed
// once and cached: they change only with a new kernel or CRIU.
func (e *Engine) Features(ctx context.Context) (engine.Features, error) {
	e.featOnce.Do(func() { e.feat, e.featErr = e.probe(ctx) })
	if e.featErr != nil {
		// Let a later call try again: the cause may be transient.
		e.featOnce = sync.Once{}
	}
	return e.feat, e.featErr
}

func (e *Engine) probe(ctx context.Context) (engine.Features, error) {
	f := engine.Features{Engine: "podman", Arch: runtime.GOARCH, Kernel: kernelRelease()}
	v, err := system.Version(e.call(ctx), nil)
	if err != nil {
		return f, fmt.Errorf("podman version: %w", err)
	}
	if v.Server != nil {
		f.EngineVersion = v.Server.Version
	}
	out, err := exec.CommandContext(ctx, e.cfg.CRIU, "--version").Output()
	if err != nil && ctx.Err() != nil {
		// Too slow to tell (a loaded host): not "no CRIU"; ask again later.
		return f, fmt.Errorf("criu --version: %w", ctx.Err())
	}
	if err != nil {
		// No CRIU: the engine runs containers but cannot migrate them.
		e.log.Warn("criu not usable; checkpoints will fail", "criu", e.cfg.CRIU, "err", err)
		return f, nil
	}
	f.CRIUVersion = parseCRIUVersion(string(out))
	f.PreCopy = e.criuFeature(ctx, "mem_dirty_track")
	f.LazyPages = e.criuFeature(ctx, "uffd-noncoop")
	if ctx.Err() != nil {
		// A check cut short says nothing about the feature.
		return f, fmt.Errorf("criu check: %w", ctx.Err())
	}
	return f, nil
}

func (e *Engine) criuFeature(ctx context.Context, name string) bool {
	return exec.CommandContext(ctx, e.cfg.CRIU, "check", "--feature", name).Run() == nil
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
	return string(bytes.TrimSpace(b))
}
