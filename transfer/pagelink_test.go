package transfer

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// roundTrip runs one page session (3 MiB up, "ok" back, the handler's
// result) and reports whether each end used a page link.
func roundTrip(t *testing.T, ts *testServer, c *Client, kind string) (clientLink, serverLink bool) {
	t.Helper()
	got := make(chan []byte, 1)
	srvLink := make(chan bool, 1)
	ts.srv.HandlePages(kind, func(ctx context.Context, h StreamHeader, ch *PageChannel) error {
		if h.Meta["container"] != "abc" {
			return fmt.Errorf("meta %v", h.Meta)
		}
		if err := ch.Accept(); err != nil {
			return err
		}
		srvLink <- ch.Link()
		b, err := io.ReadAll(ch)
		if err != nil {
			return err
		}
		got <- b
		if _, err := ch.Write([]byte("ok")); err != nil {
			return err
		}
		return ch.CloseWrite()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pc, err := c.OpenPages(ctx, ts.addr, StreamHeader{Kind: kind, ID: "m1", Meta: map[string]string{"container": "abc"}})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	data := make([]byte, 3<<20)
	rand.Read(data)
	go func() {
		pc.Write(data)
		pc.CloseWrite()
	}()
	answer, err := io.ReadAll(pc)
	if err != nil || string(answer) != "ok" {
		t.Fatalf("answer %q %v", answer, err)
	}
	if !bytes.Equal(<-got, data) {
		t.Fatal("the handler got other bytes")
	}
	if err := pc.Result(ctx); err != nil {
		t.Fatal(err)
	}
	return pc.Link(), <-srvLink
}

// onlySSH is a client Dial that reaches only the transfer port, as a
// firewall that passes nothing else would.
func onlySSH(addr string) func(ctx context.Context, network, a string) (net.Conn, error) {
	return func(ctx context.Context, network, a string) (net.Conn, error) {
		if a != addr {
			return nil, errors.New("filtered")
		}
		var d net.Dialer
		return d.DialContext(ctx, network, a)
	}
}

// A page channel takes a link when both ends want one, and stays on SSH,
// with the same bytes and result, whenever either does not or the link's
// port cannot be reached.
func TestPageLinkOrSSH(t *testing.T) {
	t.Run("link", func(t *testing.T) {
		ts, c := pair(t, nil, nil)
		if cl, sl := roundTrip(t, ts, c, "pages"); !cl || !sl {
			t.Fatalf("link used by client %v, server %v; want both", cl, sl)
		}
	})
	t.Run("server offers none", func(t *testing.T) {
		ts, c := pair(t, func(c *ServerConfig) { c.PageLinks = false }, nil)
		if cl, sl := roundTrip(t, ts, c, "pages"); cl || sl {
			t.Fatalf("link used by client %v, server %v; want neither", cl, sl)
		}
	})
	t.Run("client asks for none", func(t *testing.T) {
		ts, c := pair(t, nil, func(c *ClientConfig) { c.PageLinks = false })
		if cl, sl := roundTrip(t, ts, c, "pages"); cl || sl {
			t.Fatalf("link used by client %v, server %v; want neither", cl, sl)
		}
	})
	t.Run("port filtered", func(t *testing.T) {
		ck := newSigner(t)
		ts := startServer(t, nil, nil)
		ts.auth.Add(ck.PublicKey())
		hk := NewHostKeyMap()
		hk.Set(ts.addr, ts.hostKey.PublicKey())
		c := newTestClient(t, ck, hk, func(c *ClientConfig) { c.Dial = onlySSH(ts.addr) })
		if cl, sl := roundTrip(t, ts, c, "pages"); cl || sl {
			t.Fatalf("link used by client %v, server %v; want neither", cl, sl)
		}
	})
}

// The link's own connection cut mid-session: the sender's writes fail,
// the handler's reads fail as a cut (never a clean end), and its error
// comes back as the result over SSH.
func TestPageLinkCut(t *testing.T) {
	ck := newSigner(t)
	ts := startServer(t, nil, nil)
	ts.auth.Add(ck.PublicKey())
	hk := NewHostKeyMap()
	hk.Set(ts.addr, ts.hostKey.PublicKey())
	var mu sync.Mutex
	var linkProxy *proxy
	c := newTestClient(t, ck, hk, func(c *ClientConfig) {
		c.Dial = func(ctx context.Context, network, a string) (net.Conn, error) {
			var d net.Dialer
			if a == ts.addr {
				return d.DialContext(ctx, network, a)
			}
			p := newProxy(t, a) // the link's port, through a proxy the test can cut
			mu.Lock()
			linkProxy = p
			mu.Unlock()
			return d.DialContext(ctx, network, p.addr())
		}
	})
	started := make(chan struct{})
	ts.srv.HandlePages("pages", func(ctx context.Context, h StreamHeader, ch *PageChannel) error {
		if err := ch.Accept(); err != nil {
			return err
		}
		close(started)
		_, err := io.Copy(io.Discard, ch)
		if err == nil {
			return errors.New("the cut read as a clean end")
		}
		return err
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pc, err := c.OpenPages(ctx, ts.addr, StreamHeader{Kind: "pages", ID: "m1"})
	if err != nil {
		t.Fatal(err)
	}
	<-started
	if !pc.Link() {
		t.Fatal("no link was set up")
	}
	if _, err := pc.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	linkProxy.cut()
	mu.Unlock()
	var werr error
	for i := 0; i < 1000 && werr == nil; i++ {
		_, werr = pc.Write(make([]byte, 64<<10))
	}
	if werr == nil {
		t.Fatal("writes kept succeeding after the cut")
	}
	if err := pc.Result(ctx); !errors.Is(err, ErrRemote) || !strings.Contains(err.Error(), "page link cut") {
		t.Fatalf("result %v, want the handler's cut", err)
	}
	pc.Close()
}

// sealFrames writes frames with a client-side link into a buffer.
type captureConn struct {
	net.Conn
	buf bytes.Buffer
}

func (c *captureConn) Write(b []byte) (int, error) { return c.buf.Write(b) }
func (c *captureConn) Close() error                { return nil }

type replayConn struct {
	net.Conn
	r      io.Reader
	closed bool
}

func (c *replayConn) Read(b []byte) (int, error) { return c.r.Read(b) }
func (c *replayConn) Close() error               { c.closed = true; return nil }

// frames returns the wire bytes of each frame a client link writes.
func frames(t *testing.T, key []byte, write func(l *pageLink)) [][]byte {
	t.Helper()
	cc := &captureConn{}
	l, err := newPageLink(cc, key, true)
	if err != nil {
		t.Fatal(err)
	}
	write(l)
	var out [][]byte
	b := cc.buf.Bytes()
	for len(b) > 0 {
		n := 5 + int(binary.BigEndian.Uint32(b[1:5]))
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// readAll reads what a server link makes of wire bytes.
func readAll(t *testing.T, key []byte, wire ...[]byte) ([]byte, error, bool) {
	t.Helper()
	rc := &replayConn{r: bytes.NewReader(bytes.Join(wire, nil))}
	l, err := newPageLink(rc, key, false)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(l)
	return got, err, rc.closed
}

// Every frame is sealed: tampered, replayed, reordered, dropped, retyped,
// oversized or foreign frames, and a stream that ends without its end
// frame, all fail the read; only the whole stream reads as a clean end.
func TestPageLinkFramesAreAuthenticated(t *testing.T) {
	key := bytes.Repeat([]byte{7}, linkKeyLen)
	f := frames(t, key, func(l *pageLink) {
		l.Write([]byte("first"))
		l.Write([]byte("second"))
		l.writeFrame(frameEnd, nil)
	})
	if len(f) != 3 {
		t.Fatalf("%d frames", len(f))
	}
	if got, err, _ := readAll(t, key, f...); err != nil || string(got) != "firstsecond" {
		t.Fatalf("whole stream: %q, %v", got, err)
	}
	tampered := bytes.Clone(f[1])
	tampered[len(tampered)-20] ^= 1
	retyped := bytes.Clone(f[2])
	retyped[0] = frameData
	huge := binary.BigEndian.AppendUint32([]byte{frameData}, maxLinkFrame+linkTagLen+1)
	other := frames(t, bytes.Repeat([]byte{8}, linkKeyLen), func(l *pageLink) { l.Write([]byte("first")) })
	for _, c := range []struct {
		name string
		wire [][]byte
		want error
		got  string
	}{
		{"tampered payload", [][]byte{f[0], tampered, f[2]}, ErrLinkAuth, "first"},
		{"replayed frame", [][]byte{f[0], f[0], f[1], f[2]}, ErrLinkAuth, "first"},
		{"reordered frames", [][]byte{f[1], f[0], f[2]}, ErrLinkAuth, ""},
		{"dropped frame", [][]byte{f[0], f[2]}, ErrLinkAuth, "first"},
		{"end retyped as data", [][]byte{f[0], f[1], retyped}, ErrLinkAuth, "firstsecond"},
		{"oversized length", [][]byte{f[0], huge}, ErrLinkAuth, "first"},
		{"another key", [][]byte{other[0]}, ErrLinkAuth, ""},
		{"no end frame", [][]byte{f[0], f[1]}, io.ErrUnexpectedEOF, "firstsecond"},
		{"cut inside a frame", [][]byte{f[0], f[1][:10]}, io.ErrUnexpectedEOF, "first"},
	} {
		got, err, closed := readAll(t, key, c.wire...)
		if !errors.Is(err, c.want) || string(got) != c.got {
			t.Errorf("%s: read %q, %v; want %q, %v", c.name, got, err, c.got, c.want)
		}
		if errors.Is(c.want, ErrLinkAuth) && !closed {
			t.Errorf("%s: the link stayed open after a bad frame", c.name)
		}
	}
}

// The listener of an offer talks only to the channel's peer, and only to a
// connection that opens with the channel's sealed hello; strangers are
// closed before anything reaches the session, and the port closes once the
// peer is in.
func TestPageLinkListenerRefusesStrangers(t *testing.T) {
	lo := net.ParseIP("127.0.0.1")
	ll, err := listenLink(nil, lo, lo, "m1", 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer ll.stop()
	off := ll.offer()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(off.Port))
	// refused: dial, send what, and expect the connection closed with no
	// acknowledgement.
	refused := func(name string, from string, send []byte) {
		t.Helper()
		d := net.Dialer{Timeout: time.Second}
		if from != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
		}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		defer c.Close()
		if len(send) > 0 {
			c.Write(send)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 64)); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			t.Errorf("%s: got %d bytes, %v; want the connection closed", name, n, err)
		}
	}
	hello := func(key []byte, id string) []byte {
		return bytes.Join(frames(t, key, func(l *pageLink) { l.writeFrame(frameHello, []byte(id)) }), nil)
	}
	refused("another address", "127.0.0.2", hello(off.Key, "m1"))
	refused("garbage", "", []byte("GET / HTTP/1.0\r\n\r\n"))
	refused("another key", "", hello(bytes.Repeat([]byte{1}, linkKeyLen), "m1"))
	refused("another channel", "", hello(off.Key, "m2"))
	refused("data before hello", "", bytes.Join(frames(t, off.Key, func(l *pageLink) { l.Write([]byte("pages")) }), nil))
	select {
	case l := <-ll.links:
		t.Fatalf("a stranger got a link: %v", l)
	default:
	}

	var d net.Dialer
	link, err := dialLink(context.Background(), d.DialContext, "127.0.0.1", off, "m1")
	if err != nil {
		t.Fatalf("the peer's own hello: %v", err)
	}
	defer link.Close()
	srv := <-ll.links
	if srv == nil {
		t.Fatal("the listener delivered no link")
	}
	defer srv.Close()
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("the port still accepts connections after the peer got in")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// A peer that asks for a link and then misbehaves (says something other
// than 'D' or 'S', or takes the link and never connects) fails the
// handler's Accept with the reason, which comes back as the channel's
// result; nothing reaches the handler's reads.
func TestPageLinkAcceptRefusesBrokenPeers(t *testing.T) {
	ts, c := pair(t, nil, nil)
	accepted := make(chan error, 2)
	ts.srv.HandlePages("pages", func(ctx context.Context, h StreamHeader, ch *PageChannel) error {
		err := ch.Accept()
		accepted <- err
		return err
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, tc := range []struct {
		decision byte
		want     string
	}{
		{'X', "no page link decision"},
		{decisionLink, "never connected"}, // 'D' without ever connecting
	} {
		conn, _, err := c.conn(ctx, ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		ch, reqs, err := conn.ssh.OpenChannel(PageChannelType, []byte(pageLinkRequest))
		if err != nil {
			t.Fatal(err)
		}
		results := make(chan string, 1)
		go func() {
			res := ""
			for req := range reqs {
				if req.Type == pagesResultRequest {
					res = string(req.Payload)
				}
			}
			results <- res
		}()
		if err := writeHeader(ch, StreamHeader{Kind: "pages", ID: "m1"}); err != nil {
			t.Fatal(err)
		}
		body, err := readReply(ch)
		if err != nil {
			t.Fatal(err)
		}
		if off, err := parseOffer(body); err != nil || off == nil {
			t.Fatalf("no link offered: %v", err)
		}
		if _, err := ch.Write([]byte{tc.decision}); err != nil {
			t.Fatal(err)
		}
		if err := <-accepted; err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("decision %q: Accept %v, want %q", tc.decision, err, tc.want)
		}
		if res := <-results; !strings.Contains(res, tc.want) {
			t.Errorf("decision %q: result %q, want %q", tc.decision, res, tc.want)
		}
		ch.Close()
	}
}

// A client refuses an offer it cannot use before it connects anywhere.
func TestPageLinkBadOffers(t *testing.T) {
	if _, err := parseOffer([]byte("{not json")); err == nil {
		t.Error("a garbled offer was taken")
	}
	if off, err := parseOffer(nil); off != nil || err != nil {
		t.Errorf("no offer: %v, %v", off, err)
	}
	dialed := false
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed = true
		return nil, errors.New("unreachable")
	}
	for _, off := range []linkOffer{
		{Port: 0, Key: make([]byte, linkKeyLen)},
		{Port: 70000, Key: make([]byte, linkKeyLen)},
		{Port: 4000, Key: make([]byte, 5)},
	} {
		if _, err := dialLink(context.Background(), dial, "127.0.0.1", off, "m1"); err == nil || !strings.Contains(err.Error(), "bad offer") {
			t.Errorf("offer %+v: %v, want a bad offer", off, err)
		}
	}
	if dialed {
		t.Error("a bad offer was dialed")
	}
}
