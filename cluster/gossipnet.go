package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/go-sockaddr"
	"github.com/hashicorp/memberlist"

	"github.com/edgemigrate/orchestrate/internal/netguard"
)

// gossipNet is the network under memberlist: one UDP socket for packets
// and one TCP listener for push/pull streams on the same address and
// port, as memberlist's NetTransport, with three differences that matter
// to a fleet:
//   - a received packet costs its own size, not 64 KiB: NetTransport
//     allocates a fresh 64 KiB buffer for every packet, which at 100 agents
//     gossiping made a quarter of an agent's CPU (zeroing pages, collecting
//     them) while the fleet converged;
//   - accepted streams pass gossipGuard's caps (netguard.Limiter) and
//     outgoing streams leave from the bind address (netguard.DialFrom);
//   - its listeners hand packets and streams over with a send that
//     Shutdown interrupts, so a packet arriving during shutdown cannot
//     block it.
//
// It owns its two listener goroutines; Shutdown closes the sockets and
// waits for both.
type gossipNet struct {
	bind    string
	tcp     *net.TCPListener
	udp     *net.UDPConn
	lim     *netguard.Limiter
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	logger  *log.Logger
	packets chan *memberlist.Packet
	streams chan net.Conn
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

var _ memberlist.NodeAwareTransport = (*gossipNet)(nil)

// maxPacket is the largest UDP payload; one buffer of it is reused for
// every read.
const maxPacket = 65536

// gossipRecvBuf is the socket receive buffer asked for (halved until the
// kernel accepts it), as NetTransport does: a burst of gossip while many
// members join must not overflow it.
const gossipRecvBuf = 2 << 20

// newGossipNet binds TCP and UDP on bind:port (port 0: the TCP listener's
// port, for UDP too). On failure nothing stays bound.
func newGossipNet(bind string, port int, logger *log.Logger) (*gossipNet, error) {
	ip := net.ParseIP(bind)
	if ip == nil {
		return nil, fmt.Errorf("gossip bind address %q is not an IP address", bind)
	}
	tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: ip, Port: port})
	if err != nil {
		return nil, fmt.Errorf("gossip TCP listener on %s port %d: %w", bind, port, err)
	}
	if port == 0 {
		port = tcp.Addr().(*net.TCPAddr).Port
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: port})
	if err != nil {
		tcp.Close()
		return nil, fmt.Errorf("gossip UDP listener on %s port %d: %w", bind, port, err)
	}
	for size := gossipRecvBuf; size > 0; size /= 2 {
		if err = udp.SetReadBuffer(size); err == nil {
			break
		}
	}
	if logger == nil {
		logger = log.New(io.Discard, "", 0)
	}
	t := &gossipNet{bind: bind, tcp: tcp, udp: udp, lim: netguard.NewLimiter(gossipGuard), dial: netguard.DialFrom(bind, 0), logger: logger,
		packets: make(chan *memberlist.Packet), streams: make(chan net.Conn), done: make(chan struct{})}
	t.wg.Add(2)
	go t.readPackets()
	go t.acceptStreams()
	return t, nil
}

// readPackets reads every datagram into one buffer and hands memberlist a
// copy of exactly its size.
func (t *gossipNet) readPackets() {
	defer t.wg.Done()
	buf := make([]byte, maxPacket)
	for {
		n, from, err := t.udp.ReadFromUDPAddrPort(buf)
		ts := time.Now()
		if err != nil {
			if t.closed() {
				return
			}
			t.logger.Printf("[ERR] memberlist: reading a gossip packet: %v", err)
			continue
		}
		if n < 1 {
			continue
		}
		own := make([]byte, n)
		copy(own, buf)
		p := &memberlist.Packet{Buf: own, From: net.UDPAddrFromAddrPort(from), Timestamp: ts}
		select {
		case t.packets <- p:
		case <-t.done:
			return
		}
	}
}

// acceptStreams admits push/pull connections under gossipGuard's caps,
// backing off (5 ms doubling to 1 s) while Accept fails.
func (t *gossipNet) acceptStreams() {
	defer t.wg.Done()
	var delay time.Duration
	for {
		c, err := t.tcp.Accept()
		if err != nil {
			if t.closed() {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			t.logger.Printf("[ERR] memberlist: accepting a gossip connection: %v", err)
			select {
			case <-time.After(delay):
			case <-t.done:
				return
			}
			continue
		}
		delay = 0
		gc, ok := t.lim.Admit(c)
		if !ok {
			continue
		}
		select {
		case t.streams <- gc:
		case <-t.done:
			gc.Close()
			return
		}
	}
}

func (t *gossipNet) closed() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// FinalAdvertiseAddr implements memberlist.Transport: the configured
// advertise address, else the bind address, else (bound to 0.0.0.0) the
// host's private IP.
func (t *gossipNet) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	if ip != "" {
		a := net.ParseIP(ip)
		if a == nil {
			return nil, 0, fmt.Errorf("gossip advertise address %q is not an IP address", ip)
		}
		if a4 := a.To4(); a4 != nil {
			a = a4
		}
		return a, port, nil
	}
	bound := t.tcp.Addr().(*net.TCPAddr)
	if !bound.IP.IsUnspecified() {
		return bound.IP, bound.Port, nil
	}
	priv, err := sockaddr.GetPrivateIP()
	if err != nil {
		return nil, 0, fmt.Errorf("gossip bound to %s: looking for a private address to advertise: %w", t.bind, err)
	}
	if priv == "" {
		return nil, 0, fmt.Errorf("gossip bound to %s and no private address found: set cluster.bind to this host's address", t.bind)
	}
	return net.ParseIP(priv), bound.Port, nil
}

// WriteTo implements memberlist.Transport.
func (t *gossipNet) WriteTo(b []byte, addr string) (time.Time, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		// A host name (memberlist resolves join addresses, but be safe).
		ua, rerr := net.ResolveUDPAddr("udp", addr)
		if rerr != nil {
			return time.Time{}, rerr
		}
		ap = ua.AddrPort()
	}
	_, err = t.udp.WriteToUDPAddrPort(b, ap)
	return time.Now(), err
}

// WriteToAddress implements memberlist.NodeAwareTransport.
func (t *gossipNet) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return t.WriteTo(b, a.Addr)
}

// PacketCh implements memberlist.Transport.
func (t *gossipNet) PacketCh() <-chan *memberlist.Packet { return t.packets }

// StreamCh implements memberlist.Transport.
func (t *gossipNet) StreamCh() <-chan net.Conn { return t.streams }

// DialTimeout implements memberlist.Transport: from the bind address.
func (t *gossipNet) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return t.dial(ctx, "tcp", addr)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport.
func (t *gossipNet) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(a.Addr, timeout)
}

// Shutdown implements memberlist.Transport: closes both sockets and waits
// for the listener goroutines; safe to call twice.
func (t *gossipNet) Shutdown() error {
	var err error
	t.once.Do(func() {
		close(t.done)
		err = errors.Join(t.tcp.Close(), t.udp.Close())
		t.wg.Wait()
	})
	return err
}
