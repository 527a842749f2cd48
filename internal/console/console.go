package console

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/migrate"
)

// Agent is the console's only way to the cluster: the operator's client of
// one agent's API (*cluster.Client). It holds the credentials; the console
// only ever calls it.
type Agent interface {
	Do(ctx context.Context, method, path string, in, out any) error
}

var _ Agent = (*cluster.Client)(nil)

// Config configures a console.
type Config struct {
	Agent  Agent
	Listen string // host:port; loopback unless AllowRemote
	// AllowRemote permits a Listen address other than loopback. The console
	// speaks plain HTTP and can drain hosts: put it behind a TLS proxy.
	AllowRemote bool
	// Hosts are extra names the Host header may carry (IP literals and
	// localhost always may), e.g. the name of that proxy.
	Hosts []string
	// Poll is how often the agent is read while a page is open.
	Poll time.Duration
	// ContainersEvery: the container list (a fan-out to every host) is read
	// every this many polls, and at once after an action.
	ContainersEvery int
	// ReadTimeout bounds one poll's reads and one action.
	ReadTimeout time.Duration
	// DowntimeWindow is how many finished migrations the downtime chart covers.
	DowntimeWindow int
	Version        string
	Logger         *slog.Logger
	Now            func() time.Time
}

// DefaultListen is where the console listens unless told otherwise.
const DefaultListen = "127.0.0.1:7950"

// DefaultConfig returns the defaults; the caller sets Agent.
func DefaultConfig() Config {
	return Config{Listen: DefaultListen, Poll: time.Second, ContainersEvery: 3, ReadTimeout: 10 * time.Second,
		DowntimeWindow: 50, Version: "dev", Logger: slog.New(slog.DiscardHandler), Now: time.Now}
}

// ErrNotLoopback refuses a listen address other than loopback without
// Config.AllowRemote.
var ErrNotLoopback = errors.New("not a loopback address")

// Server is one console. Create it with New, bind with Listen, then Serve.
type Server struct {
	cfg   Config
	guard *guard
	hub   *hub
	mux   *http.ServeMux
	index *template.Template
	url   string
}

//go:embed assets
var assets embed.FS

// pages are the console's pages; each is the same document, which draws
// the page its path names.
var pages = []string{"/", "/hosts", "/containers", "/migrations", "/events", "/downtime", "/snapshots"}

// New returns a console for cfg.
func New(cfg Config) (*Server, error) {
	def := DefaultConfig()
	if cfg.Agent == nil {
		return nil, errors.New("console: no agent")
	}
	if cfg.Listen == "" {
		cfg.Listen = def.Listen
	}
	if cfg.Poll <= 0 {
		cfg.Poll = def.Poll
	}
	if cfg.ContainersEvery <= 0 {
		cfg.ContainersEvery = def.ContainersEvery
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = def.ReadTimeout
	}
	if cfg.DowntimeWindow <= 0 {
		cfg.DowntimeWindow = def.DowntimeWindow
	}
	if cfg.Logger == nil {
		cfg.Logger = def.Logger
	}
	if cfg.Now == nil {
		cfg.Now = def.Now
	}
	index, err := template.ParseFS(assets, "assets/index.html")
	if err != nil {
		return nil, fmt.Errorf("console: index template: %w", err)
	}
	s := &Server{cfg: cfg, guard: newGuard(cfg.Hosts), hub: newHub(cfg), mux: http.NewServeMux(), index: index}
	for _, p := range pages {
		if p == "/" {
			p = "/{$}"
		}
		s.mux.HandleFunc("GET "+p, s.page)
	}
	s.mux.HandleFunc("GET /assets/{file}", s.asset)
	s.mux.HandleFunc("GET /api/stream", s.stream)
	s.mux.Handle("POST /api/drain", s.guard.action(http.HandlerFunc(s.drain)))
	s.mux.Handle("POST /api/migrate", s.guard.action(http.HandlerFunc(s.migrate)))
	s.mux.Handle("POST /api/cordon", s.guard.action(s.cordon(true)))
	s.mux.Handle("POST /api/uncordon", s.guard.action(s.cordon(false)))
	return s, nil
}

// Handler is the console's whole HTTP surface, guarded.
func (s *Server) Handler() http.Handler { return s.guard.wrap(s.mux) }

// Listen binds cfg.Listen. Without AllowRemote it refuses an address that
// is not loopback (ErrNotLoopback), before and after resolving it.
func (s *Server) Listen() (net.Listener, error) {
	host, _, err := net.SplitHostPort(s.cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("console: listen address %q: %w", s.cfg.Listen, err)
	}
	if !s.cfg.AllowRemote && !loopback(host) {
		return nil, fmt.Errorf("console: listen address %s: %w; the console speaks plain HTTP and can drain hosts (--allow-remote, behind a TLS proxy, if you mean it)", s.cfg.Listen, ErrNotLoopback)
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("console: listen %s: %w", s.cfg.Listen, err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	if !s.cfg.AllowRemote && !addr.IP.IsLoopback() {
		ln.Close()
		return nil, fmt.Errorf("console: %s resolved to %s: %w", s.cfg.Listen, addr, ErrNotLoopback)
	}
	port := fmt.Sprint(addr.Port)
	s.guard.setPort(port)
	urlHost := addr.String()
	if addr.IP.IsUnspecified() {
		urlHost = net.JoinHostPort("localhost", port)
	}
	s.url = "http://" + urlHost + "/?" + keyParam + "=" + s.guard.key
	return ln, nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// URL is the address to open, with the key that starts a session. Valid
// after Listen.
func (s *Server) URL() string { return s.url }

// Serve serves on ln until ctx ends, then shuts down (open pages are
// disconnected; they reconnect to the next console by themselves).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	hubDone := make(chan struct{})
	go func() { defer close(hubDone); s.hub.run(ctx) }()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	_ = srv.Shutdown(sctx)
	<-hubDone
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	var b bytes.Buffer
	if err := s.index.Execute(&b, struct{ CSRF, Version string }{s.guard.csrf, s.cfg.Version}); err != nil {
		http.Error(w, "console: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(b.Bytes())
}

var assetTypes = map[string]string{".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}

func (s *Server) asset(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	typ, ok := assetTypes[path.Ext(name)]
	b, err := assets.ReadFile("assets/" + name)
	if !ok || err != nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", typ)
	_, _ = w.Write(b)
}

// stream is the page's live feed (server-sent events): "view" with the
// whole View when it changed, "tick" on every poll.
func (s *Server) stream(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	sub := s.hub.subscribe()
	defer s.hub.unsubscribe(sub)
	if _, err := io.WriteString(w, "retry: 2000\n\n"); err != nil || rc.Flush() != nil {
		return
	}
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keepalive.C:
			if _, err := io.WriteString(w, ": keepalive\n\n"); err != nil {
				return
			}
		case <-sub.notify:
			view, tick := sub.take()
			var b bytes.Buffer
			if view != nil {
				fmt.Fprintf(&b, "event: view\ndata: %s\n\n", view)
			}
			if tick != nil {
				fmt.Fprintf(&b, "event: tick\ndata: %s\n\n", tick)
			}
			if _, err := w.Write(b.Bytes()); err != nil {
				return
			}
		}
		if rc.Flush() != nil {
			return
		}
	}
}

// apiError is every refused or failed API call's body.
type apiError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// agentError answers an agent's refusal with a status the page can show.
func agentError(w http.ResponseWriter, err error) {
	status := http.StatusBadGateway
	switch {
	case errors.Is(err, cluster.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, cluster.ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, cluster.ErrCordoned), errors.Is(err, cluster.ErrConflict), errors.Is(err, cluster.ErrLockHeld), errors.Is(err, cluster.ErrDuplicate):
		status = http.StatusConflict
	case errors.Is(err, cluster.ErrNoLeader), errors.Is(err, cluster.ErrNotLeader):
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, apiError{Error: err.Error()})
}

// decode reads an action's JSON body (small, no unknown fields).
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "bad request body: " + err.Error()})
		return false
	}
	return true
}

// validName accepts a host or container name as typed or clicked: short,
// printable, no spaces.
func validName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, c := range s {
		if c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// DrainAction is POST /api/drain.
type DrainAction struct {
	Host            string `json:"host"`
	DeadlineSeconds int    `json:"deadline_seconds"`
	Parallel        int    `json:"parallel"`
	DryRun          bool   `json:"dry_run"`
}

func (s *Server) drain(w http.ResponseWriter, r *http.Request) {
	var a DrainAction
	if !decode(w, r, &a) {
		return
	}
	if !validName(a.Host) || a.DeadlineSeconds < 0 || a.DeadlineSeconds > 86400 || a.Parallel < 0 || a.Parallel > 32 {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "want a host, a deadline of 0-86400 s and a parallelism of 0-32"})
		return
	}
	req := migrate.DrainRequest{Host: a.Host, Deadline: time.Duration(a.DeadlineSeconds) * time.Second, Parallel: a.Parallel,
		DryRun: a.DryRun, Reason: "drained from the console"}
	var res migrate.DrainResult
	if !s.call(w, r, "/v1/drain", req, &res, "drain", "host", a.Host, "dry_run", a.DryRun) {
		return
	}
	if res.Moves == nil {
		res.Moves = []migrate.DrainMove{}
	}
	writeJSON(w, http.StatusOK, res)
}

// MigrateAction is POST /api/migrate.
type MigrateAction struct {
	Container string `json:"container"`
	To        string `json:"to"`
}

// MigrateResult answers a migrate action.
type MigrateResult struct {
	ID   string `json:"id"`
	From string `json:"from"`
	To   string `json:"to"`
}

func (s *Server) migrate(w http.ResponseWriter, r *http.Request) {
	var a MigrateAction
	if !decode(w, r, &a) {
		return
	}
	if !validName(a.Container) || (a.To != "" && !validName(a.To)) {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "want a container and, optionally, a target host"})
		return
	}
	var rec cluster.MigrationRecord
	if !s.call(w, r, "/v1/migrate", migrate.MigrateRequest{Container: a.Container, To: a.To}, &rec, "migrate", "container", a.Container, "to", a.To) {
		return
	}
	writeJSON(w, http.StatusOK, MigrateResult{ID: rec.ID, From: rec.From, To: rec.To})
}

// HostAction is POST /api/cordon and /api/uncordon.
type HostAction struct {
	Host string `json:"host"`
}

func (s *Server) cordon(on bool) http.HandlerFunc {
	path, verb := "/v1/cordon", "cordon"
	if !on {
		path, verb = "/v1/uncordon", "uncordon"
	}
	return func(w http.ResponseWriter, r *http.Request) {
		var a HostAction
		if !decode(w, r, &a) {
			return
		}
		if !validName(a.Host) {
			writeJSON(w, http.StatusBadRequest, apiError{Error: "want a host"})
			return
		}
		var h cluster.Host
		if !s.call(w, r, path, migrate.HostRequest{Host: a.Host, Reason: verb + "ed from the console"}, &h, verb, "host", a.Host) {
			return
		}
		writeJSON(w, http.StatusOK, h)
	}
}

// call forwards an action to the agent and logs it (the console's audit
// trail); on failure it has answered the page.
func (s *Server) call(w http.ResponseWriter, r *http.Request, path string, in, out any, verb string, attrs ...any) bool {
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.ReadTimeout)
	defer cancel()
	err := s.cfg.Agent.Do(ctx, http.MethodPost, path, in, out)
	log := s.cfg.Logger.With(append([]any{"action", verb, "remote", r.RemoteAddr}, attrs...)...)
	if err != nil {
		log.Warn("console action refused", "err", err)
		agentError(w, err)
		return false
	}
	log.Info("console action")
	s.hub.poke(true)
	return true
}
