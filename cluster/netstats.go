package cluster

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Byte counters of the two cluster protocols, for the metrics and the scale
// harness: gossip counts memberlist's UDP packets and TCP streams (payload,
// encrypted; UDP, TCP and IP headers are not counted), raft counts its TLS
// connections' bytes on the wire (records included, TCP and IP headers not).
// The agent API (forwarded writes, migration steps) is neither.

// NetStats are the byte counters since the agent started.
type NetStats struct {
	GossipIn, GossipOut int64
	RaftIn, RaftOut     int64
}

type netCounters struct {
	gossipIn, gossipOut atomic.Int64
	raftIn, raftOut     atomic.Int64
}

// NetStats returns the byte counters.
func (c *Cluster) NetStats() NetStats {
	n := &c.net
	return NetStats{GossipIn: n.gossipIn.Load(), GossipOut: n.gossipOut.Load(), RaftIn: n.raftIn.Load(), RaftOut: n.raftOut.Load()}
}

// countingConn counts the bytes read and written through a connection.
type countingConn struct {
	net.Conn
	in, out *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(int64(n))
	return n, err
}

// countingListener counts the bytes of every accepted connection.
type countingListener struct {
	net.Listener
	in, out *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{c, l.in, l.out}, nil
}

// countingTransport is memberlist's network transport with byte counters.
// Packets and streams pass through one goroutine each, which ends with
// Shutdown.
type countingTransport struct {
	memberlist.NodeAwareTransport
	n       *netCounters
	packets chan *memberlist.Packet
	streams chan net.Conn
	done    chan struct{}
	once    sync.Once
}

var _ memberlist.NodeAwareTransport = (*countingTransport)(nil)

func newCountingTransport(t memberlist.NodeAwareTransport, n *netCounters) *countingTransport {
	ct := &countingTransport{NodeAwareTransport: t, n: n, packets: make(chan *memberlist.Packet), streams: make(chan net.Conn), done: make(chan struct{})}
	go func() {
		for {
			select {
			case p := <-t.PacketCh():
				n.gossipIn.Add(int64(len(p.Buf)))
				select {
				case ct.packets <- p:
				case <-ct.done:
					return
				}
			case <-ct.done:
				return
			}
		}
	}()
	go func() {
		for {
			select {
			case c := <-t.StreamCh():
				select {
				case ct.streams <- countingConn{c, &n.gossipIn, &n.gossipOut}:
				case <-ct.done:
					c.Close()
					return
				}
			case <-ct.done:
				return
			}
		}
	}()
	return ct
}

func (t *countingTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }
func (t *countingTransport) StreamCh() <-chan net.Conn           { return t.streams }

func (t *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	t.n.gossipOut.Add(int64(len(b)))
	return t.NodeAwareTransport.WriteTo(b, addr)
}

func (t *countingTransport) WriteToAddress(b []byte, addr memberlist.Address) (time.Time, error) {
	t.n.gossipOut.Add(int64(len(b)))
	return t.NodeAwareTransport.WriteToAddress(b, addr)
}

func (t *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	c, err := t.NodeAwareTransport.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return countingConn{c, &t.n.gossipIn, &t.n.gossipOut}, nil
}

func (t *countingTransport) DialAddressTimeout(addr memberlist.Address, timeout time.Duration) (net.Conn, error) {
	c, err := t.NodeAwareTransport.DialAddressTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return countingConn{c, &t.n.gossipIn, &t.n.gossipOut}, nil
}

// Shutdown shuts the wrapped transport down first and only then stops the
// relays: its listeners hand each packet and stream over with a blocking
// send, so a relay that stopped first left a listener blocked on a packet
// that arrived during shutdown, memberlist's Shutdown waiting for it
// forever, and the agent process alive, holding its raft store (seen in
// CI: the agent restarted after it could not start).
func (t *countingTransport) Shutdown() error {
	err := t.NodeAwareTransport.Shutdown()
	t.once.Do(func() { close(t.done) })
	return err
}
