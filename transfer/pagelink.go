package transfer

// Page links: a page channel's bytes on a TCP connection of their own,
// sealed with AES-GCM, instead of inside SSH. Go's SSH spends about 1.8 s
// of CPU per GiB here (32 KiB packets, a fresh buffer for each, a copy at
// every layer); sealed frames of up to a MiB spend 0.8 s, and a page
// session is bound by CPU while the container is frozen.
//
// What keeps it closed to anyone else:
//   - The client asks for a link in the channel's open request; the target
//     offers one in its accept reply, inside SSH: a port it just opened on
//     the address the client reached it on, and a fresh random key. Both
//     exist for that one channel only.
//   - The target accepts connections only from the SSH peer's address, one
//     at a time, and each must open with a hello sealed with the key and
//     naming the channel; any other first frame closes that connection.
//     The listener closes at the first good hello, or after linkWait.
//   - Every frame after that is sealed too, with a counter in its nonce (a
//     replayed, reordered, dropped or forged frame fails to open) and its
//     type as additional data. A clean end is a sealed end frame: a link
//     that simply closes before one reads as cut, never as a whole stream.
//     Nothing reaches CRIU's page server that the key did not seal.
//   - The client says over SSH whether it uses the link ('D') or stays on
//     SSH ('S': it could not connect, e.g. a firewall passes only the
//     transfer port); both ends then agree.
//
// Wire format of a frame: u8 type | u32 n | n bytes sealed (payload +
// 16-byte tag). Nonce: u32 direction | u64 counter, big-endian.

import (
	"bufio"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// pageLinkRequest is a page channel's open-request data asking for a link.
const pageLinkRequest = "orchestrate-page-link-1"

const (
	frameHello = 'h' // client → server, payload: the channel's ID
	frameAck   = 'a' // server → client, empty
	frameData  = 'd'
	frameEnd   = 'e' // no more data this way

	linkKeyLen   = 16      // AES-128-GCM, as SSH's default cipher here
	maxLinkFrame = 1 << 20 // largest payload of one frame
	linkTagLen   = 16

	dirClient = 1 // nonce direction of frames the client sends
	dirServer = 2

	decisionLink = 'D'
	decisionSSH  = 'S'
)

// linkWait bounds each step of setting a link up: the client's connect
// and hello, the server's wait for them and for the client's decision.
const linkWait = 3 * time.Second

// ErrLinkAuth: a link frame failed to open with the channel's key.
var ErrLinkAuth = errors.New("page link: frame failed authentication")

// linkOffer is the target's accept reply when it offers a link.
type linkOffer struct {
	Port int    `json:"port"`
	Key  []byte `json:"key"`
}

// pageLink is one end of a link. Reads and writes may run at once (one
// reader, one writer); Close may come from anywhere.
type pageLink struct {
	c    net.Conn
	aead cipher.AEAD
	br   *bufio.Reader
	send uint32 // nonce direction of what this end sends
	recv uint32

	wmu     sync.Mutex
	wseq    uint64
	wnonce  [12]byte
	wbuf    []byte
	wclosed bool

	rseq   uint64
	rnonce [12]byte
	rbuf   []byte
	plain  []byte // opened payload not yet returned
	rerr   error  // sticky: io.EOF after an end frame, or why the link failed

	closeOnce sync.Once
}

func newPageLink(c net.Conn, key []byte, client bool) (*pageLink, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	l := &pageLink{c: c, aead: aead, br: bufio.NewReaderSize(c, 64<<10), send: dirServer, recv: dirClient}
	if client {
		l.send, l.recv = dirClient, dirServer
	}
	return l, nil
}

// nonce fills n with direction dir and counter seq.
func nonce(n *[12]byte, dir uint32, seq uint64) []byte {
	binary.BigEndian.PutUint32(n[:4], dir)
	binary.BigEndian.PutUint64(n[4:], seq)
	return n[:]
}

// cut is the error of a link that ended inside a frame or before an end
// frame: never io.EOF, which only an end frame may give.
func cut(err error) error {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("page link cut: %w", err)
}

// writeFrame seals p as one frame of type typ and writes it in one call.
func (l *pageLink) writeFrame(typ byte, p []byte) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.wclosed {
		return net.ErrClosed
	}
	need := 5 + len(p) + linkTagLen
	if cap(l.wbuf) < need {
		l.wbuf = make([]byte, 0, need)
	}
	out := append(l.wbuf[:0], typ, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(out[1:], uint32(len(p)+linkTagLen))
	out = l.aead.Seal(out, nonce(&l.wnonce, l.send, l.wseq), p, []byte{typ})
	l.wseq++
	_, err := l.c.Write(out)
	return err
}

// readFrame reads and opens the next frame.
func (l *pageLink) readFrame() (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(l.br, hdr[:]); err != nil {
		return 0, nil, cut(err)
	}
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < linkTagLen || n > maxLinkFrame+linkTagLen {
		return 0, nil, fmt.Errorf("%w: a frame of %d bytes", ErrLinkAuth, n)
	}
	if cap(l.rbuf) < n {
		l.rbuf = make([]byte, n)
	}
	buf := l.rbuf[:n]
	if _, err := io.ReadFull(l.br, buf); err != nil {
		return 0, nil, cut(err)
	}
	p, err := l.aead.Open(buf[:0], nonce(&l.rnonce, l.recv, l.rseq), buf, hdr[:1])
	if err != nil {
		return 0, nil, ErrLinkAuth
	}
	l.rseq++
	return hdr[0], p, nil
}

// Read returns the payload of data frames; io.EOF after the peer's end
// frame. A link closed before an end frame, or a frame that does not open,
// fails the read (and every later one), and a bad frame closes the link.
func (l *pageLink) Read(b []byte) (int, error) {
	for len(l.plain) == 0 {
		if l.rerr != nil {
			return 0, l.rerr
		}
		typ, p, err := l.readFrame()
		switch {
		case err != nil:
			l.rerr = err
			if errors.Is(err, ErrLinkAuth) {
				l.Close()
			}
		case typ == frameData:
			l.plain = p
		case typ == frameEnd:
			l.rerr = io.EOF
		default:
			l.rerr = fmt.Errorf("%w: unexpected frame %q", ErrLinkAuth, typ)
			l.Close()
		}
	}
	n := copy(b, l.plain)
	l.plain = l.plain[n:]
	return n, nil
}

// Write sends b in data frames of at most maxLinkFrame.
func (l *pageLink) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		k := min(len(b), maxLinkFrame)
		if err := l.writeFrame(frameData, b[:k]); err != nil {
			return n, err
		}
		n += k
		b = b[k:]
	}
	return n, nil
}

// CloseWrite sends the end frame and shuts the write half: the peer reads
// io.EOF. It gives up after linkWait on a link that takes nothing.
func (l *pageLink) CloseWrite() error {
	_ = l.c.SetWriteDeadline(time.Now().Add(linkWait))
	err := l.writeFrame(frameEnd, nil)
	l.wmu.Lock()
	l.wclosed = true
	l.wmu.Unlock()
	if tc, ok := l.c.(interface{ CloseWrite() error }); ok {
		err = errors.Join(err, tc.CloseWrite())
	}
	return err
}

// Close closes the connection: blocked reads and writes return at once.
func (l *pageLink) Close() error {
	var err error
	l.closeOnce.Do(func() { err = l.c.Close() })
	return err
}

// linkListener is the server's side of an offer: a listener for one
// channel's link, closed at the first good hello or after linkWait.
type linkListener struct {
	ln    net.Listener
	key   []byte
	links chan *pageLink // the first good one, then closed
	stop  func()
}

// listenLink opens a listener on ip for the link of channel id, which
// only peer may use.
func listenLink(listen func(string, string) (net.Listener, error), ip, peer net.IP, id string, deadline time.Duration) (*linkListener, error) {
	key := make([]byte, linkKeyLen)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if listen == nil {
		listen = net.Listen
	}
	ln, err := listen("tcp", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		return nil, err
	}
	l := &linkListener{ln: ln, key: key, links: make(chan *pageLink, 1)}
	t := time.AfterFunc(deadline, func() { ln.Close() })
	l.stop = func() { t.Stop(); ln.Close() }
	go l.accept(peer, id)
	return l, nil
}

func (l *linkListener) offer() linkOffer {
	return linkOffer{Port: l.ln.Addr().(*net.TCPAddr).Port, Key: l.key}
}

// accept takes connections from peer one at a time until one opens with
// a good hello; everything else is closed unread (other addresses) or
// after its first frame.
func (l *linkListener) accept(peer net.IP, id string) {
	defer close(l.links)
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		if a, ok := c.RemoteAddr().(*net.TCPAddr); !ok || !a.IP.Equal(peer) {
			c.Close()
			continue
		}
		link, err := newPageLink(c, l.key, false)
		if err != nil {
			c.Close()
			continue
		}
		_ = c.SetDeadline(time.Now().Add(linkWait))
		typ, p, err := link.readFrame()
		if err != nil || typ != frameHello || string(p) != id || link.writeFrame(frameAck, nil) != nil {
			c.Close()
			continue
		}
		_ = c.SetDeadline(time.Time{})
		l.stop()
		l.links <- link
		return
	}
}

// dialLink connects to the link a server offered for channel id at host
// and says hello; nil error means the server accepted it.
func dialLink(ctx context.Context, dial func(context.Context, string, string) (net.Conn, error), host string, off linkOffer, id string) (*pageLink, error) {
	if len(off.Key) != linkKeyLen || off.Port <= 0 || off.Port > 65535 {
		return nil, fmt.Errorf("page link: bad offer (port %d, %d-byte key)", off.Port, len(off.Key))
	}
	ctx, cancel := context.WithTimeout(ctx, linkWait)
	defer cancel()
	c, err := dial(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(off.Port)))
	if err != nil {
		return nil, fmt.Errorf("page link: %w", err)
	}
	link, err := newPageLink(c, off.Key, true)
	if err != nil {
		c.Close()
		return nil, err
	}
	d, _ := ctx.Deadline()
	_ = c.SetDeadline(d)
	if err := link.writeFrame(frameHello, []byte(id)); err != nil {
		c.Close()
		return nil, fmt.Errorf("page link: hello: %w", err)
	}
	if typ, _, err := link.readFrame(); err != nil || typ != frameAck {
		c.Close()
		return nil, fmt.Errorf("page link: no acknowledgement: %v", err)
	}
	_ = c.SetDeadline(time.Time{})
	return link, nil
}

// parseOffer reads a server's accept reply body: empty means no offer.
func parseOffer(body []byte) (*linkOffer, error) {
	if len(body) == 0 {
		return nil, nil
	}
	var off linkOffer
	if err := json.Unmarshal(body, &off); err != nil {
		return nil, fmt.Errorf("page link: offer: %w", err)
	}
	return &off, nil
}

// pageLinkAddrs is what the server knows, when a page channel opens,
// about the link it may offer: whether the client asked, the address the
// client reached and the client's own.
type pageLinkAddrs struct {
	want        bool
	local, peer net.IP
}

// tcpIP is the IP of a TCP address; nil for anything else.
func tcpIP(a net.Addr) net.IP {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP
	}
	return nil
}
