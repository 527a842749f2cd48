// Package linkcut is test support: a dialer whose first connection is cut
// once it has sent a given number of bytes, as a link that goes down in
// the middle of a transfer, and which counts what every connection sent.
package linkcut

import (
	"context"
	"errors"
	"net"
	"sync"
)

// ErrCut is what a write on the cut connection returns.
var ErrCut = errors.New("linkcut: link cut")

// Dialer dials TCP. Its first connection is closed once it has written
// After bytes (0: never). Later connections are left alone.
type Dialer struct {
	After int64

	mu    sync.Mutex
	conns []*Conn
}

// DialContext dials addr and wraps the connection.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	w := &Conn{Conn: c}
	if len(d.conns) == 0 && d.After > 0 {
		w.limit = d.After
	}
	d.conns = append(d.conns, w)
	return w, nil
}

// Written returns the bytes each connection sent, in dial order.
func (d *Dialer) Written() []int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]int64, len(d.conns))
	for i, c := range d.conns {
		c.mu.Lock()
		out[i] = c.n
		c.mu.Unlock()
	}
	return out
}

// Cut reports whether the first connection was cut.
func (d *Dialer) Cut() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.conns) == 0 {
		return false
	}
	c := d.conns[0]
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cut
}

// Conn counts what it sends and cuts itself at its limit.
type Conn struct {
	net.Conn
	mu    sync.Mutex
	n     int64
	limit int64
	cut   bool
}

func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.cut {
		c.mu.Unlock()
		return 0, ErrCut
	}
	if c.limit > 0 && c.n+int64(len(p)) > c.limit {
		k := int(c.limit - c.n)
		c.cut = true
		c.mu.Unlock()
		n, _ := c.Conn.Write(p[:k])
		c.mu.Lock()
		c.n += int64(n)
		c.mu.Unlock()
		c.Conn.Close()
		return n, ErrCut
	}
	c.mu.Unlock()
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	c.n += int64(n)
	c.mu.Unlock()
	return n, err
}
