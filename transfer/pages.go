package transfer

// Page channels: a raw, two-way byte pipe over the cluster's authenticated
// SSH connection, for CRIU's page-server protocol (engine/pageserver). A
// checkpoint's memory pages cross the link inside it while CRIU dumps them,
// so no page server ever listens on the network.
//
// Wire format, after the channel of type "orchestrate-pages" opens:
//
//	client: "ORCHSTR1" | u32 n | n bytes JSON StreamHeader (as streams)
//	server: u8 'K' | u32 0                  the handler accepted
//	        u8 'E' | u32 n | code + text    or refused (no data follows)
//	then raw bytes both ways until each side closes its write half;
//	server: channel request "pages-result@orchestrate" {Err string} once
//	        its handler returned, then it closes the channel.
//
// Integrity and authenticity come from SSH; completeness from the carried
// protocol itself (CRIU's CLOSE and its answer) and the handler's result.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// PageChannelType is the SSH channel type of page channels.
const PageChannelType = "orchestrate-pages"

const pagesResultRequest = "pages-result@orchestrate"

// PageHandler serves one page channel. It prepares whatever must exist
// before the peer may send (a directory, a page-server process) and then
// calls ch.Accept; an error returned before Accept goes back to the peer's
// OpenPages, so the sender learns of it before it freezes anything. After
// Accept, ch carries the peer's bytes both ways. The handler's return
// value reaches the peer as PageConn.Result. ctx ends when the connection
// drops or the server closes.
type PageHandler func(ctx context.Context, h StreamHeader, ch *PageChannel) error

// HandlePages registers h for page channels of the given kind, replacing
// any earlier one. Safe to call while serving.
func (s *Server) HandlePages(kind string, h PageHandler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pageHandlers[kind] = h
}

// pageCloseGrace bounds how long a closed page channel stays open for the
// server's result (see PageChannel.Close and PageConn.Close).
const pageCloseGrace = 5 * time.Second

// PageChannel is the server's end of a page channel.
type PageChannel struct {
	ch        ssh.Channel
	dropConn  func()
	mu        sync.Mutex
	accepted  bool
	closeOnce sync.Once

	// A page link (pagelink.go): whether the client asked and this server
	// offers them and the connection's addresses (addrs), how to listen,
	// and, once Accept set it up, the link itself (nil: the bytes stay on
	// SSH).
	addrs  pageLinkAddrs
	listen func(string, string) (net.Listener, error)
	id     string
	link   *pageLink
}

// Accept tells the peer it may start sending. Reading or writing before
// Accept is an error. When the peer asked for a page link, Accept offers
// one and waits (up to a few seconds) until the peer connected to it or
// said it stays on SSH; an error then means the peer took the link and it
// failed, and the handler should give up.
func (p *PageChannel) Accept() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.accepted {
		return nil
	}
	p.accepted = true
	var ll *linkListener
	if a := p.addrs; a.want && a.local != nil && a.peer != nil {
		ll, _ = listenLink(p.listen, a.local, a.peer, p.id, 2*linkWait) // none: the client stays on SSH
	}
	if ll == nil {
		_, err := p.ch.Write([]byte{replyOK, 0, 0, 0, 0})
		return err
	}
	defer func() {
		// A link set up but not taken (the peer said 'S', or gave up)
		// is closed once the listener's goroutine hands it over.
		ll.stop()
		taken := p.link
		go func() {
			for l := range ll.links {
				if l != taken {
					l.Close()
				}
			}
		}()
	}()
	body, err := json.Marshal(ll.offer())
	if err != nil {
		return err
	}
	reply := binary.BigEndian.AppendUint32([]byte{replyOK}, uint32(len(body)))
	if _, err := p.ch.Write(append(reply, body...)); err != nil {
		return err
	}
	decision := make(chan byte, 1)
	go func() {
		var b [1]byte
		if _, err := io.ReadFull(p.ch, b[:]); err != nil {
			b[0] = 0
		}
		decision <- b[0]
	}()
	select {
	case d := <-decision:
		switch d {
		case decisionSSH:
			return nil
		case decisionLink:
		default:
			return fmt.Errorf("page channel %s: no page link decision from the peer", p.id)
		}
	case <-time.After(2 * linkWait):
		return fmt.Errorf("page channel %s: the peer neither took the page link nor declined it within %s", p.id, 2*linkWait)
	}
	// The client heard our acknowledgement before it said 'D', so the
	// link is (or is about to be) handed over.
	select {
	case link := <-ll.links:
		if link == nil {
			return fmt.Errorf("page channel %s: the peer took a page link that never connected", p.id)
		}
		p.link = link
		return nil
	case <-time.After(linkWait):
		return fmt.Errorf("page channel %s: the peer took a page link that never connected", p.id)
	}
}

// Link reports whether the channel's bytes travel on a page link.
func (p *PageChannel) Link() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.link != nil
}

func (p *PageChannel) closeLink() {
	if l := p.linkOf(); l != nil {
		l.Close()
	}
}

func (p *PageChannel) linkOf() *pageLink {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.link
}

func (p *PageChannel) isAccepted() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

var errNotAccepted = errors.New("page channel not accepted yet")

func (p *PageChannel) Read(b []byte) (int, error) {
	if !p.isAccepted() {
		return 0, errNotAccepted
	}
	if l := p.linkOf(); l != nil {
		return l.Read(b)
	}
	return p.ch.Read(b)
}

func (p *PageChannel) Write(b []byte) (int, error) {
	if !p.isAccepted() {
		return 0, errNotAccepted
	}
	if l := p.linkOf(); l != nil {
		return l.Write(b)
	}
	return p.ch.Write(b)
}

// CloseWrite ends the server's half: the peer reads EOF.
func (p *PageChannel) CloseWrite() error {
	if l := p.linkOf(); l != nil {
		return l.CloseWrite()
	}
	return p.ch.CloseWrite()
}

// Close ends the server's half at once: the peer reads EOF and its writes
// fail, and the channel's reads end once the peer closes its half (a
// PageConn does on EOF) or the connection drops. The channel itself
// closes once the handler's result has gone out, or after pageCloseGrace:
// a handler whose pump closes the channel when it fails (a full disk, its
// page server gone) still tells the peer why. Safe to call more than once.
func (p *PageChannel) Close() error {
	var err error
	p.closeOnce.Do(func() {
		if l := p.linkOf(); l != nil {
			// The end frame (bounded by linkWait) goes out on its own
			// goroutine: Close does not wait on a full link.
			go func() {
				_ = l.CloseWrite()
				time.AfterFunc(pageCloseGrace, func() { l.Close() })
			}()
		} else {
			err = p.ch.CloseWrite()
		}
		time.AfterFunc(pageCloseGrace, func() { p.ch.Close() })
	})
	return err
}

// Abort drops the whole SSH connection the channel came on, and its page
// link (see PageConn.Abort): for a link known dead, where Close could
// block.
func (p *PageChannel) Abort() error {
	p.closeLink()
	p.dropConn()
	return nil
}

// servePages reads the header, runs the handler and reports its result.
// link says whether and where to offer a page link: the client asked,
// this server offers them, and the addresses of the SSH connection.
func (s *Server) servePages(ctx context.Context, log *slog.Logger, ch ssh.Channel, reqs <-chan *ssh.Request, dropConn func(), link pageLinkAddrs) {
	defer ch.Close()
	// gone closes when the channel does: when the connection dropped, or
	// once this function closed it.
	gone := make(chan struct{})
	go func() {
		ssh.DiscardRequests(reqs)
		close(gone)
	}()
	h, err := readHeader(ch)
	if err != nil {
		replyError(ch, err)
		return
	}
	log = log.With("kind", h.Kind, "id", h.ID, "channel", "pages")
	s.mu.Lock()
	handler := s.pageHandlers[h.Kind]
	s.mu.Unlock()
	if handler == nil {
		replyError(ch, fmt.Errorf("%w %q (pages)", ErrNoHandler, h.Kind))
		return
	}
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	link.want = link.want && s.cfg.PageLinks
	pc := &PageChannel{ch: ch, dropConn: dropConn, id: h.ID, addrs: link, listen: s.cfg.ListenLink}
	// The link lives no longer than the SSH channel that set it up: a
	// dropped connection ends the session on both, as it would inside SSH.
	defer pc.closeLink()
	go func() {
		<-gone
		pc.closeLink()
	}()
	herr := handler(hctx, h, pc)
	if !pc.isAccepted() {
		if herr == nil {
			herr = errors.New("page handler returned without accepting")
		}
		log.Info("page channel refused", "err", herr)
		replyError(ch, herr)
		return
	}
	msg := ""
	if herr != nil {
		log.Info("page channel failed", "err", herr)
		msg = string(errorCode(herr)) + herr.Error()
	}
	_, _ = ch.SendRequest(pagesResultRequest, false, ssh.Marshal(struct{ Err string }{msg}))
}

// PageConn is the client's end of a page channel: an io.ReadWriteCloser
// whose writes obey the client's bandwidth limit.
type PageConn struct {
	ch     ssh.Channel
	ctx    context.Context
	limit  *limiter
	peer   string
	id     string
	result chan error    // one value: the server handler's result
	closed chan struct{} // closed when the server closed the channel
	stop   func() bool
	abort  func()
	once   sync.Once
	link   atomic.Pointer[pageLink] // nil: the bytes travel inside SSH
	shut   atomic.Bool              // Close was called: writes fail
}

// OpenPages opens a page channel to peer's handler for h.Kind and waits
// until that handler accepted it (or refused: the error then wraps
// ErrRemote, and ErrNoSpace or ErrNoHandler when that was the cause).
// Cancelling ctx closes the channel.
func (c *Client) OpenPages(ctx context.Context, peer string, h StreamHeader) (*PageConn, error) {
	pc, err := c.openPages(ctx, peer, h)
	if err != nil {
		return nil, fmt.Errorf("open page channel %s to %s: %w", h.ID, peer, err)
	}
	return pc, nil
}

func (c *Client) openPages(ctx context.Context, peer string, h StreamHeader) (*PageConn, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	conn, _, err := c.conn(ctx, peer)
	if err != nil {
		return nil, err
	}
	var ask []byte
	if c.cfg.PageLinks {
		ask = []byte(pageLinkRequest)
	}
	ch, reqs, err := conn.ssh.OpenChannel(PageChannelType, ask)
	if err != nil {
		var oce *ssh.OpenChannelError
		if !errors.As(err, &oce) {
			c.drop(peer, conn)
			err = fmt.Errorf("%w: %v", ErrPeerClosed, err)
		}
		return nil, err
	}
	p := &PageConn{ch: ch, ctx: ctx, limit: c.limit, peer: peer, id: h.ID, result: make(chan error, 1), closed: make(chan struct{}),
		abort: func() { c.drop(peer, conn) }}
	p.stop = context.AfterFunc(ctx, func() {
		ch.Close()
		if l := p.link.Load(); l != nil {
			l.Close()
		}
	})
	go p.collect(reqs)
	if err := writeHeader(ch, h); err != nil {
		p.Close()
		return nil, c.sendErr(ctx, err)
	}
	body, err := readReply(ch)
	if err != nil {
		p.Close()
		return nil, c.sendErr(ctx, err)
	}
	off, err := parseOffer(body)
	if err != nil {
		p.Close()
		return nil, err
	}
	if off != nil {
		host, _, _ := net.SplitHostPort(peer)
		link, lerr := dialLink(ctx, c.dialer(), host, *off, h.ID)
		decision := byte(decisionLink)
		if lerr != nil {
			decision = decisionSSH
			c.log.Info("page link not set up: the page channel stays on SSH", "peer", peer, "id", h.ID, "err", lerr)
		}
		if _, err := ch.Write([]byte{decision}); err != nil {
			if link != nil {
				link.Close()
			}
			p.Close()
			return nil, c.sendErr(ctx, err)
		}
		p.link.Store(link)
		if link != nil && ctx.Err() != nil {
			link.Close() // cancelled while it was set up: AfterFunc ran before p.link existed
		}
	}
	return p, nil
}

// Link reports whether the channel's bytes travel on a page link.
func (p *PageConn) Link() bool { return p.link.Load() != nil }

// collect waits for the server's result request. A channel that closes
// without one means the server (or the link) went away mid-session.
func (p *PageConn) collect(reqs <-chan *ssh.Request) {
	var res error = fmt.Errorf("%w: page channel closed without a result", ErrPeerClosed)
	for req := range reqs {
		if req.Type != pagesResultRequest {
			if req.WantReply {
				req.Reply(false, nil)
			}
			continue
		}
		var m struct{ Err string }
		if ssh.Unmarshal(req.Payload, &m) != nil {
			continue
		}
		res = nil
		if m.Err != "" {
			res = remoteError(m.Err[0], m.Err[1:])
		}
	}
	p.result <- res
	close(p.closed)
}

// remoteError rebuilds a handler's error from its reply code and text.
func remoteError(code byte, text string) error {
	switch code {
	case codeVerify:
		return fmt.Errorf("%w: %w: %s", ErrRemote, ErrVerify, text)
	case codeNoSpace:
		return fmt.Errorf("%w: %w: %s", ErrRemote, ErrNoSpace, text)
	}
	return fmt.Errorf("%w: %s", ErrRemote, text)
}

func (p *PageConn) Read(b []byte) (int, error) {
	if l := p.link.Load(); l != nil {
		return l.Read(b)
	}
	return p.ch.Read(b)
}

func (p *PageConn) Write(b []byte) (int, error) {
	if err := p.limit.wait(p.ctx, len(b)); err != nil {
		return 0, err
	}
	if l := p.link.Load(); l != nil {
		if p.shut.Load() {
			return 0, net.ErrClosed
		}
		return l.Write(b)
	}
	return p.ch.Write(b)
}

// CloseWrite ends the client's half: the server reads EOF.
func (p *PageConn) CloseWrite() error {
	if l := p.link.Load(); l != nil {
		return l.CloseWrite()
	}
	return p.ch.CloseWrite()
}

// Close ends the client's half at once: the server reads EOF, and this
// end's writes fail. The channel closes both ways once the server has
// sent its result and closed (reads end then), or after pageCloseGrace:
// a pump that closes the channel when CRIU's side fails still gets the
// target's reason (Result). It does not block. Safe to call more than
// once; cancelling the channel's context closes it at once.
func (p *PageConn) Close() error {
	var err error
	p.once.Do(func() {
		l := p.link.Load()
		if l != nil {
			p.shut.Store(true)
		} else {
			err = p.ch.CloseWrite()
		}
		go func() {
			if l != nil {
				_ = l.CloseWrite() // bounded by linkWait
				defer l.Close()
			}
			t := time.NewTimer(pageCloseGrace)
			defer t.Stop()
			select {
			case <-p.closed:
			case <-t.C:
			}
			p.stop()
			p.ch.Close()
		}()
	})
	return err
}

// Abort drops the whole SSH connection the channel runs on, which unblocks
// every read and write at once. Use it when the link is known dead (a
// stalled session): Close would wait to send its close message into a full
// send buffer. Other transfers to the same peer fail too; they could not
// make progress either. The next call to the peer dials again.
func (p *PageConn) Abort() error {
	p.stop()
	if l := p.link.Load(); l != nil {
		l.Close()
	}
	p.abort()
	return nil
}

// Result waits until the server's handler returned and reports its error
// (nil on success). Call it after the session ended; ctx bounds the wait.
func (p *PageConn) Result(ctx context.Context) error {
	select {
	case err := <-p.result:
		p.result <- err
		if err != nil {
			return fmt.Errorf("pages %s on %s: %w", p.id, p.peer, err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

var _ io.ReadWriteCloser = (*PageConn)(nil)
