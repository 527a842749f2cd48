// Package netguard bounds what peers can hold on a listener: how many
// connections are open at once, in total and from one remote IP, and how
// long a connection may stay silent. It wraps a net.Listener; whoever owns
// the listener owns the guard.
//
// A connection over a cap is closed as soon as it is accepted, before any
// byte is read, so a flood of idle connections from one address costs the
// agent at most MaxPerIP file descriptors, and members on other addresses
// still get in. Counts drop when the server closes a connection.
package netguard

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Config sets the caps. Zero values mean no cap.
type Config struct {
	// MaxConns caps the connections open at once.
	MaxConns int
	// MaxPerIP caps the connections open at once from one remote IP.
	MaxPerIP int
	// IdleTimeout closes a connection on which nothing was read for this
	// long: each Read waits at most IdleTimeout (or less, when the server
	// set an earlier read deadline of its own).
	IdleTimeout time.Duration
}

// Limiter counts connections against the caps. Listener uses one; a
// transport that accepts connections itself (memberlist's) can use one
// directly.
type Limiter struct {
	cfg Config

	mu      sync.Mutex
	total   int
	perIP   map[string]int
	refused atomic.Int64
}

// NewLimiter returns a limiter with cfg's caps.
func NewLimiter(cfg Config) *Limiter { return &Limiter{cfg: cfg, perIP: map[string]int{}} }

// Admit returns c wrapped (its Close gives the slot back; its Reads obey
// the idle timeout) if it is within the caps; otherwise it closes c and
// returns false.
func (l *Limiter) Admit(c net.Conn) (net.Conn, bool) {
	ip := remoteIP(c)
	if !l.admit(ip) {
		l.refused.Add(1)
		c.Close()
		return nil, false
	}
	return &Conn{Conn: c, l: l, ip: ip, idle: l.cfg.IdleTimeout}, true
}

func (l *Limiter) admit(ip string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cfg.MaxConns > 0 && l.total >= l.cfg.MaxConns || l.cfg.MaxPerIP > 0 && l.perIP[ip] >= l.cfg.MaxPerIP {
		return false
	}
	l.total++
	l.perIP[ip]++
	return true
}

func (l *Limiter) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
}

// Open is the number of admitted connections not yet closed.
func (l *Limiter) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// Refused counts the connections closed for being over a cap.
func (l *Limiter) Refused() int64 { return l.refused.Load() }

// Listener is a guarded listener.
type Listener struct {
	net.Listener
	*Limiter
}

// Listen guards ln.
func Listen(ln net.Listener, cfg Config) *Listener {
	return &Listener{Listener: ln, Limiter: NewLimiter(cfg)}
}

// Accept returns the next connection within the caps; connections over a
// cap are closed and never returned.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if gc, ok := l.Admit(c); ok {
			return gc, nil
		}
	}
}

func remoteIP(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// Conn is an admitted connection. It gives its slot back when closed, and
// applies the idle timeout to every Read.
type Conn struct {
	net.Conn
	l    *Limiter
	ip   string
	idle time.Duration
	once sync.Once

	mu       sync.Mutex
	deadline time.Time // the read deadline the server set itself
}

// Close closes the connection and releases its slot (once).
func (c *Conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.ip) })
	return err
}

// Read reads with a deadline of now+IdleTimeout, or the server's own read
// deadline when that is earlier.
func (c *Conn) Read(p []byte) (int, error) {
	if c.idle > 0 {
		if err := c.Conn.SetReadDeadline(c.readDeadline()); err != nil && !errors.Is(err, net.ErrClosed) {
			return 0, err
		}
	}
	return c.Conn.Read(p)
}

// readDeadline is the earlier of now+IdleTimeout and the server's own.
func (c *Conn) readDeadline() time.Time {
	d := time.Now().Add(c.idle)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.deadline.IsZero() && c.deadline.Before(d) {
		d = c.deadline
	}
	return d
}

// SetDeadline remembers the server's read deadline (see Read). Clearing it
// leaves the idle timeout in force, also for a Read already waiting.
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetWriteDeadline(t)
}

// SetReadDeadline remembers the server's read deadline (see Read).
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	if c.idle > 0 {
		t = c.readDeadline()
	}
	return c.Conn.SetReadDeadline(t)
}

// DialFrom returns a dial function whose TCP connections leave from bind's
// IP when bind ("ip:port" or "ip") names a concrete IP that can reach the
// destination (same family; loopback only to loopback), and from whatever
// the kernel picks otherwise. Agents dial peers through it, so a peer's
// per-IP cap counts each agent under the address it advertises: agents
// that share one machine's routes (several on loopback, or a multi-homed
// host) would otherwise all arrive from one source address and share one
// MaxPerIP (seen in internal/scale: 100 agents, 64 API connections from
// 127.0.0.1 admitted, 36 followers' reports refused).
func DialFrom(bind string, timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	host := bind
	if h, _, err := net.SplitHostPort(bind); err == nil {
		host = h
	}
	local := net.ParseIP(host)
	if local != nil && local.IsUnspecified() {
		local = nil
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: timeout}
		if src := sourceFor(local, addr); src != nil {
			d.LocalAddr = &net.TCPAddr{IP: src}
		}
		return d.DialContext(ctx, network, addr)
	}
}

// sourceFor returns local when it can be the source of a connection to
// addr ("ip:port"), else nil.
func sourceFor(local net.IP, addr string) net.IP {
	if local == nil {
		return nil
	}
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil
	}
	dst := net.ParseIP(h)
	if dst == nil || (dst.To4() == nil) != (local.To4() == nil) || dst.IsLoopback() != local.IsLoopback() {
		return nil
	}
	return local
}
