package cluster

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/edgemigrate/orchestrate/internal/netguard"
)

// Deadlines and caps on the agent's listeners. A stranger (no secret) can
// open TCP connections and nothing more: each is closed when its handshake
// does not finish in time, and no address may hold more than a few dozen at
// once, so a flood of idle connections costs the agent a bounded number of
// file descriptors and members on other addresses still get in. The
// transfer endpoint's limits are in transfer.ServerConfig.
var (
	// raftGuard: raft peers pool a few connections each; a member's
	// connections that stay silent for 10 minutes are closed (raft
	// redials; the first RPC on a connection pooled on the far side that
	// long may fail once and is retried).
	raftGuard        = netguard.Config{MaxConns: 256, MaxPerIP: 32, IdleTimeout: 10 * time.Minute}
	raftHandshake    = 10 * time.Second
	apiGuard         = netguard.Config{MaxConns: 512, MaxPerIP: 64}
	gossipGuard      = netguard.Config{MaxConns: 256, MaxPerIP: 32} // memberlist's TCPTimeout bounds each
	apiBodyLimit     = int64(1 << 20)
	apiApplyLimit    = int64(4 << 20) // POST /v1/apply: a framed FSM command
	apiHeaderTimeout = 10 * time.Second
	apiReadTimeout   = time.Minute // the whole request, body included
	apiIdleTimeout   = 90 * time.Second
)

// guardRaft wraps raft's TCP listener: caps, then TLS whose handshake must
// finish within raftHandshake. Accept never waits for a handshake (that
// happens on the connection's first Read or Write, in raft's goroutine for
// the connection), so one slow peer cannot hold up the others.
func guardRaft(ln net.Listener, cfg *tls.Config) net.Listener {
	return &handshakeListener{Listener: netguard.Listen(ln, raftGuard), cfg: cfg, timeout: raftHandshake}
}

type handshakeListener struct {
	net.Listener
	cfg     *tls.Config
	timeout time.Duration
}

func (l *handshakeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &handshakeConn{Conn: tls.Server(c, l.cfg), timeout: l.timeout}, nil
}

// handshakeConn is a server-side TLS connection whose handshake has a
// deadline; a failed handshake fails every Read and Write.
type handshakeConn struct {
	*tls.Conn
	timeout time.Duration
	once    sync.Once
	err     error
}

func (c *handshakeConn) handshake() error {
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		defer cancel()
		if c.err = c.Conn.HandshakeContext(ctx); c.err != nil {
			c.Conn.Close()
		}
	})
	return c.err
}

func (c *handshakeConn) Read(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *handshakeConn) Write(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// listenAPI listens on addr with the API's caps below TLS. The TLS
// handshake's deadline is the HTTP server's (apiHeaderTimeout).
func listenAPI(addr string, cfg *tls.Config) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return tls.NewListener(netguard.Listen(ln, apiGuard), cfg), nil
}

// newAPIServer is the HTTP server for both API listeners: headers within
// apiHeaderTimeout, the whole request within apiReadTimeout (responses,
// such as a migration's progress, may stream for as long as they need),
// idle keep-alive connections closed after apiIdleTimeout, and request
// bodies capped (limitBodies).
func newAPIServer(h http.Handler, uploads *sync.Map) *http.Server {
	return &http.Server{
		Handler:           limitBodies(h, uploads),
		ReadHeaderTimeout: apiHeaderTimeout,
		ReadTimeout:       apiReadTimeout,
		IdleTimeout:       apiIdleTimeout,
		MaxHeaderBytes:    64 << 10,
	}
}

// HandleUpload registers a route whose body is a file (an archive), not
// JSON: its body may be up to limit bytes, and instead of the API's read
// timeout for the whole request it only has to keep moving (no read may
// wait longer than apiIdleTimeout), so a large upload over a slow link is
// not cut while a stalled one still is.
func (c *Cluster) HandleUpload(pattern string, limit int64, h func(http.ResponseWriter, *http.Request)) {
	_, path, _ := strings.Cut(pattern, " ")
	c.api.uploads.Store(path, limit)
	c.api.mux.HandleFunc(pattern, h)
}

// limitBodies caps every request body at apiBodyLimit (apiApplyLimit for
// /v1/apply, the registered limit for an upload route): a handler decoding
// more gets an error, and the API answers 413.
// uploads maps an upload route's path to its cap (nil: none).
func limitBodies(next http.Handler, uploads *sync.Map) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		limit := apiBodyLimit
		upload := false
		if r.URL.Path == "/v1/apply" {
			limit = apiApplyLimit
		} else if uploads != nil && r.Method == http.MethodPost {
			if v, ok := uploads.Load(r.URL.Path); ok {
				limit, upload = v.(int64), true
			}
		}
		if r.ContentLength > limit {
			writeJSON(w, http.StatusRequestEntityTooLarge, apiError{Error: "request body too large", Code: "invalid"})
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		if upload {
			r.Body = &movingBody{ReadCloser: r.Body, rc: http.NewResponseController(w)}
		}
		next.ServeHTTP(w, r)
	})
}

// movingBody pushes the connection's read deadline forward before every
// read: an upload may take as long as it needs while it keeps moving.
type movingBody struct {
	io.ReadCloser
	rc *http.ResponseController
}

func (b *movingBody) Read(p []byte) (int, error) {
	_ = b.rc.SetReadDeadline(time.Now().Add(apiIdleTimeout))
	return b.ReadCloser.Read(p)
}

// createGossip is memberlist.Create over gossipNet (gossipnet.go): its
// TCP (stream) connections capped by gossipGuard, memberlist's own
// TCPTimeout bounding how long each may take.
// wrap, when not nil, wraps the transport (the traffic counters).
func createGossip(mc *memberlist.Config, wrap func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport) (*memberlist.Memberlist, error) {
	gn, err := newGossipNet(mc.BindAddr, mc.BindPort, mc.Logger)
	if err != nil {
		return nil, err
	}
	if mc.BindPort == 0 {
		mc.BindPort = gn.tcp.Addr().(*net.TCPAddr).Port
		mc.AdvertisePort = mc.BindPort
	}
	var t memberlist.NodeAwareTransport = gn
	if wrap != nil {
		t = wrap(gn)
	}
	mc.Transport = t
	ml, err := memberlist.Create(mc)
	if err != nil {
		t.Shutdown()
		return nil, err
	}
	return ml, nil
}
