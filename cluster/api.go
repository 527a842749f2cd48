package cluster

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// API is the agent's HTTP+JSON API. The same mux serves two listeners: the
// unix socket (local CLI; trusted through its mode 0600) and TCP with TLS,
// where every request must carry "Authorization: Bearer <APIToken(secret)>"
// or gets 401 and nothing else.
//
// Routes (all JSON):
//
//	GET  /v1/self             this agent's member record, labels untruncated
//	GET  /v1/status           raft view: leader, state, term, stats
//	GET  /v1/members          []Member; ?name=N only that one (none when unknown)
//	GET  /v1/containers       this agent's local containers ([]engine.Container)
//	GET  /v1/ps               PSResult: containers across the cluster, from the
//	                          replicated reports (inventory.go); no host is asked
//	GET  /v1/hosts            []Host (replicated)
//	GET  /v1/migrations       []MigrationRecord, oldest first; ?since=RFC3339,
//	                          ?limit=N (the newest N), ?host=H; /v1/migrations/{id} one
//	GET  /v1/locks            []Lock
//	GET  /v1/events           []Event in log order; ?since=N (raft index) or
//	                          ?since=RFC3339, ?limit=N (the newest N)
//	POST /v1/apply            a framed FSM command (type byte + JSON), validated
//	                          in full, of a type members may write (not migration
//	                          records); applied on the leader, forwarded there if needed
//
// Other packages add routes with Cluster.Handle; they get the same auth.
type API struct {
	c   *Cluster
	mux *http.ServeMux
	// uploads: routes whose body is a file, with their caps (HandleUpload).
	uploads sync.Map
}

func newAPI(c *Cluster) *API {
	a := &API{c: c, mux: http.NewServeMux()}
	a.mux.HandleFunc("GET /v1/self", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, c.Self()) })
	a.mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, c.Status()) })
	a.mux.HandleFunc("GET /v1/members", a.members)
	a.mux.HandleFunc("GET /v1/containers", a.containers)
	a.mux.HandleFunc("GET /v1/ps", a.ps)
	a.mux.HandleFunc("GET /v1/hosts", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, c.Hosts()) })
	a.mux.HandleFunc("GET /v1/migrations", a.migrations)
	a.mux.HandleFunc("GET /v1/migrations/{id}", func(w http.ResponseWriter, r *http.Request) {
		m, err := c.Migration(r.PathValue("id"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, m)
	})
	a.mux.HandleFunc("GET /v1/locks", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, c.Locks()) })
	a.mux.HandleFunc("GET /v1/events", a.events)
	a.mux.HandleFunc("POST /v1/apply", a.apply)
	return a
}

// Handle registers an API route (net/http pattern syntax, e.g.
// "POST /v1/migrate"). It may be called before or after Run.
func (c *Cluster) Handle(pattern string, h http.Handler) { c.api.mux.Handle(pattern, h) }

// HandleFunc is Handle for a function.
func (c *Cluster) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	c.api.mux.HandleFunc(pattern, h)
}

// forwardedHeader marks a request an agent forwarded to the leader, so that
// a stale leader answers ErrNotLeader instead of forwarding again.
const forwardedHeader = "X-Orchestrate-Forwarded"

func (a *API) apply(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		writeError(w, err)
		return
	}
	// Validated in full before anything reaches raft, and only of the
	// types members may write through another agent.
	if err := checkForwarded(b); err != nil {
		writeError(w, err)
		return
	}
	if err := a.c.applyRaw(r.Context(), b, r.Header.Get(forwardedHeader) != ""); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) containers(w http.ResponseWriter, r *http.Request) {
	cs, err := a.c.Containers(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, cs)
}

func (a *API) ps(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.c.PS(r.Context()))
}

// authenticate lets through only requests bearing the cluster's token.
func (a *API) authenticate(next http.Handler) http.Handler {
	want := []byte("Bearer " + a.c.token)
	metrics := []byte("Bearer " + MetricsToken(a.c.cfg.Secret)) // GET /metrics only (metricstoken.go)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 && (!metricsRequest(r) || subtle.ConstantTimeCompare(got, metrics) != 1) {
			writeJSON(w, http.StatusUnauthorized, apiError{Error: "unauthorized", Code: "unauthorized"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

type listeners struct {
	tcp, unix net.Listener
}

func (a *API) listen() (listeners, error) {
	var l listeners
	var err error
	if addr := a.c.cfg.APIBindAddr; addr != "" {
		if l.tcp, err = listenAPI(addr, a.c.tls.serverConfig()); err != nil {
			return l, fmt.Errorf("api listen %s: %w", addr, err)
		}
	}
	if path := a.c.cfg.APISocket; path != "" {
		if l.unix, err = listenUnix(path); err != nil {
			if l.tcp != nil {
				l.tcp.Close()
			}
			return l, err
		}
	}
	return l, nil
}

// serve runs the servers until ctx ends, then shuts them down.
func (a *API) serve(ctx context.Context, l listeners) error {
	var srvs []*http.Server
	errc := make(chan error, 2)
	start := func(ln net.Listener, h http.Handler) {
		s := newAPIServer(h, &a.uploads)
		srvs = append(srvs, s)
		go func() {
			if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("api %s: %w", ln.Addr(), err)
			}
		}()
	}
	if l.tcp != nil {
		start(l.tcp, a.authenticate(a.mux))
	}
	if l.unix != nil {
		start(l.unix, a.mux)
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range srvs {
		_ = s.Shutdown(sctx)
	}
	return err
}

// apiError is every error response's body. Code names a sentinel.
type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code,omitempty"`
}

// errorCodes maps sentinels to wire codes and HTTP statuses.
var errorCodes = []struct {
	err    error
	code   string
	status int
}{
	{ErrNotFound, "not_found", http.StatusNotFound},
	{ErrNotLeader, "not_leader", http.StatusServiceUnavailable},
	{ErrNoLeader, "no_leader", http.StatusServiceUnavailable},
	{ErrCordoned, "cordoned", http.StatusConflict},
	{ErrLockHeld, "lock_held", http.StatusConflict},
	{ErrDuplicate, "duplicate", http.StatusConflict},
	{ErrConflict, "conflict", http.StatusConflict},
	{ErrInvalid, "invalid", http.StatusBadRequest},
	{ErrUnauthorized, "unauthorized", http.StatusUnauthorized},
	{ErrForbidden, "forbidden", http.StatusForbidden},
}

// WriteError writes err as the API's JSON error, with the status and code
// of the sentinel it wraps (500 otherwise). Routes added with Handle should
// use it so clients get sentinels back.
func WriteError(w http.ResponseWriter, err error) { writeError(w, err) }

func writeError(w http.ResponseWriter, err error) {
	for _, ec := range errorCodes {
		if errors.Is(err, ec.err) {
			writeJSON(w, ec.status, apiError{Error: err.Error(), Code: ec.code})
			return
		}
	}
	writeJSON(w, http.StatusInternalServerError, apiError{Error: err.Error()})
}

// WriteJSON writes v as JSON with the status.
func WriteJSON(w http.ResponseWriter, status int, v any) { writeJSON(w, status, v) }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// remoteError is an API error with its sentinel restored.
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

func decodeError(resp *http.Response) error {
	var ae apiError
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if json.Unmarshal(b, &ae) != nil || ae.Error == "" {
		ae.Error = strings.TrimSpace(string(b))
		if ae.Error == "" {
			ae.Error = resp.Status
		}
	}
	if resp.StatusCode == http.StatusUnauthorized {
		return ErrUnauthorized
	}
	for _, ec := range errorCodes {
		if ec.code == ae.Code {
			return &remoteError{msg: ae.Error, sentinel: ec.err}
		}
	}
	return errors.New(ae.Error)
}
