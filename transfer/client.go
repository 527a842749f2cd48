package transfer

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// User is the SSH user name; our server ignores it, sshd does not.
	User string
	// Signer is the client's identity (see LoadOrCreateKey). Required.
	Signer ssh.Signer
	// HostKeys supplies the key each peer must present. Required.
	HostKeys HostKeys
	// DialTimeout bounds the TCP connect, HandshakeTimeout the SSH
	// handshake.
	DialTimeout      time.Duration
	HandshakeTimeout time.Duration
	// KeepaliveInterval: how often an idle pooled connection is probed;
	// a probe unanswered within KeepaliveTimeout closes the connection
	// (the next call redials). Zero disables keepalives.
	KeepaliveInterval time.Duration
	KeepaliveTimeout  time.Duration
	// Compression for streams.
	Compression Compression
	// ChunkSize is the stream chunk size (at most 4 MiB).
	ChunkSize int
	// BandwidthLimit caps the client's total send rate in bytes per
	// second (wire bytes for streams, file bytes for uploads). 0: none.
	BandwidthLimit int64
	// Progress, when set, receives progress reports for every transfer.
	Progress ProgressFunc
	// Retries is how many times Upload and Download reconnect and resume
	// after a dropped connection.
	Retries int
	// Dial makes TCP connections; nil uses net.Dialer. Tests and network
	// namespaces can override it.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger; nil discards.
	Logger *slog.Logger
	// CorruptAfter is fault injection for failure tests: when > 0, one bit
	// of the first stream data frame sent after that many frame bytes is
	// flipped, after hashing, as a bad link would. The receiver must refuse
	// the stream. Only binaries built with the testhooks tag set it (see
	// cmd/orchestrate/faults_testhooks.go).
	CorruptAfter int64
	// PageLinks asks targets to carry page channels on a page link (a TCP
	// connection of their own, sealed with a key sent over SSH; see
	// pagelink.go) instead of inside SSH. A target that does not offer one,
	// or whose offered port cannot be reached, keeps the channel on SSH.
	PageLinks bool

	// testHookFrame, when set, may modify each data frame's payload just
	// before it is written (after hashing): tests corrupt data in flight.
	testHookFrame func(typ byte, payload []byte)
	// progressEvery overrides ProgressInterval (tests want every chunk).
	progressEvery time.Duration
}

// DefaultClientConfig returns sensible timeouts, adaptive compression and 1
// MiB chunks. Signer and HostKeys must still be set.
func DefaultClientConfig() ClientConfig {
	return ClientConfig{
		User:              "orchestrate",
		DialTimeout:       5 * time.Second,
		HandshakeTimeout:  10 * time.Second,
		KeepaliveInterval: 15 * time.Second,
		KeepaliveTimeout:  10 * time.Second,
		Compression:       Compression{Mode: CompressAdaptive, Level: 1},
		ChunkSize:         1 << 20,
		Retries:           3,
		PageLinks:         true,
	}
}

// Client sends to peers. It keeps one SSH connection per peer and runs
// every stream and SFTP transfer to that peer as channels over it. It owns
// those connections and their keepalive goroutines; Close ends them.
type Client struct {
	cfg   ClientConfig
	log   *slog.Logger
	limit *limiter

	mu     sync.Mutex
	peers  map[string]*peerSlot
	closed bool
	wg     sync.WaitGroup
}

// peerSlot serialises dialing one peer and remembers what we learnt about
// its link across connections.
type peerSlot struct {
	mu   sync.Mutex
	conn *peerConn
	link linkStats
}

type peerConn struct {
	peer   string
	ssh    *ssh.Client
	closed chan struct{} // closed once the connection is gone

	mu     sync.Mutex
	sftp   *sftp.Client
	hashOK int // 0 unknown, 1 server answers hash requests, -1 it does not
}

func (pc *peerConn) alive() bool {
	select {
	case <-pc.closed:
		return false
	default:
		return true
	}
}

// NewClient checks cfg. It dials nothing until first used.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Signer == nil {
		return nil, errors.New("transfer client: no signer")
	}
	if cfg.HostKeys == nil {
		return nil, errors.New("transfer client: no host keys")
	}
	def := DefaultClientConfig()
	if cfg.User == "" {
		cfg.User = def.User
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = def.DialTimeout
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = def.HandshakeTimeout
	}
	if cfg.KeepaliveTimeout <= 0 {
		cfg.KeepaliveTimeout = def.KeepaliveTimeout
	}
	if cfg.ChunkSize <= 0 {
		cfg.ChunkSize = def.ChunkSize
	}
	cfg.ChunkSize = min(cfg.ChunkSize, maxChunkBytes)
	if cfg.CorruptAfter > 0 && cfg.testHookFrame == nil {
		var sent atomic.Int64
		var done atomic.Bool
		after := cfg.CorruptAfter
		cfg.testHookFrame = func(_ byte, p []byte) {
			if sent.Add(int64(len(p))) > after && len(p) > 0 && done.CompareAndSwap(false, true) {
				p[len(p)/2] ^= 0x10
			}
		}
	}
	if cfg.Retries < 0 {
		cfg.Retries = 0
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{
		cfg: cfg, log: log.With("component", "transfer-client"),
		limit: newLimiter(cfg.BandwidthLimit), peers: map[string]*peerSlot{},
	}, nil
}

// Close closes every pooled connection, which ends transfers in flight,
// and waits for the keepalive goroutines. Safe to call more than once.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	var conns []*peerConn
	for _, s := range c.peers {
		s.mu.Lock()
		if s.conn != nil {
			conns = append(conns, s.conn)
		}
		s.mu.Unlock()
	}
	c.mu.Unlock()
	for _, pc := range conns {
		pc.ssh.Close()
	}
	c.wg.Wait()
	return nil
}

func (c *Client) slot(peer string) (*peerSlot, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, net.ErrClosed
	}
	s := c.peers[peer]
	if s == nil {
		s = &peerSlot{}
		c.peers[peer] = s
	}
	return s, nil
}

// conn returns the pooled connection to peer, dialing if there is none or
// the old one died.
func (c *Client) conn(ctx context.Context, peer string) (*peerConn, *peerSlot, error) {
	s, err := c.slot(peer)
	if err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil && s.conn.alive() {
		return s.conn, s, nil
	}
	pc, err := c.dial(ctx, peer)
	if err != nil {
		return nil, nil, err
	}
	s.conn = pc
	return pc, s, nil
}

// drop closes peer's pooled connection if it is still pc.
func (c *Client) drop(peer string, pc *peerConn) {
	s, err := c.slot(peer)
	if err != nil {
		pc.ssh.Close()
		return
	}
	s.mu.Lock()
	if s.conn == pc {
		s.conn = nil
	}
	s.mu.Unlock()
	pc.ssh.Close()
}

// dialer is how the client makes TCP connections: cfg.Dial, or a plain
// net.Dialer.
func (c *Client) dialer() func(context.Context, string, string) (net.Conn, error) {
	if c.cfg.Dial != nil {
		return c.cfg.Dial
	}
	var d net.Dialer
	return d.DialContext
}

func (c *Client) dial(ctx context.Context, peer string) (*peerConn, error) {
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	raw, err := c.dialer()(dctx, "tcp", peer)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", peer, err)
	}
	// The handshake obeys both its own timeout and ctx.
	_ = raw.SetDeadline(time.Now().Add(c.cfg.HandshakeTimeout))
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	sc, chans, reqs, err := ssh.NewClientConn(raw, peer, &ssh.ClientConfig{
		User:            c.cfg.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(c.cfg.Signer)},
		HostKeyCallback: hostKeyCallback(c.cfg.HostKeys, peer),
		Timeout:         c.cfg.HandshakeTimeout,
	})
	if !stop() || err != nil {
		raw.Close()
		if err == nil {
			err = ctx.Err()
		} else if strings.Contains(err.Error(), "unable to authenticate") {
			err = fmt.Errorf("%w: %v", ErrUnauthorized, err)
		}
		return nil, fmt.Errorf("ssh handshake with %s: %w", peer, err)
	}
	_ = raw.SetDeadline(time.Time{})
	pc := &peerConn{peer: peer, ssh: ssh.NewClient(sc, chans, reqs), closed: make(chan struct{})}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		pc.ssh.Close()
		return nil, net.ErrClosed
	}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		c.watch(pc)
	}()
	return pc, nil
}

// watch owns a connection's lifetime: keepalives while it is up, and
// marking it closed once it is down.
func (c *Client) watch(pc *peerConn) {
	waitDone := make(chan struct{})
	go func() {
		_ = pc.ssh.Wait()
		close(waitDone)
	}()
	defer func() {
		close(pc.closed)
		pc.mu.Lock()
		if pc.sftp != nil {
			pc.sftp.Close()
		}
		pc.mu.Unlock()
	}()
	if c.cfg.KeepaliveInterval <= 0 {
		<-waitDone
		return
	}
	t := time.NewTicker(c.cfg.KeepaliveInterval)
	defer t.Stop()
	for {
		select {
		case <-waitDone:
			return
		case <-t.C:
			answered := make(chan struct{})
			go func() {
				_, _, _ = pc.ssh.SendRequest("keepalive@openssh.com", true, nil)
				close(answered)
			}()
			timer := time.NewTimer(c.cfg.KeepaliveTimeout)
			select {
			case <-answered:
				timer.Stop()
			case <-waitDone:
				timer.Stop()
				return
			case <-timer.C:
				c.log.Warn("keepalive unanswered, closing connection", "peer", pc.peer)
				pc.ssh.Close()
				<-waitDone
				<-answered
				return
			}
		}
	}
}

// StreamStats describes one stream as the sender saw it.
type StreamStats struct {
	Bytes     int64 // uncompressed bytes produced
	WireBytes int64 // frame bytes sent, after compression
	Duration  time.Duration
	SHA256    string
	// Compression says what was used: "none", "zstd-3", or for adaptive
	// mode e.g. "adaptive: zstd-1 on 12/40 chunks".
	Compression string
	ZstdChunks  int
	RawChunks   int
}

// Rate is the uncompressed throughput in bytes per second.
func (s StreamStats) Rate() float64 {
	if s.Duration <= 0 {
		return 0
	}
	return float64(s.Bytes) / s.Duration.Seconds()
}

// SendStream is Stream for data already available as a reader.
func (c *Client) SendStream(ctx context.Context, peer string, h StreamHeader, r io.Reader) ([]byte, StreamStats, error) {
	return c.Stream(ctx, peer, h, func(w io.Writer) error {
		_, err := io.Copy(w, r)
		return err
	})
}

// Stream sends one stream to peer's handler for h.Kind and returns that
// handler's result. produce writes the data to w (e.g. an engine's
// Checkpoint) and runs on its own goroutine while earlier chunks are
// compressed and sent; it must return once a Write fails. Nothing is
// written to disk.
//
// Stream returns nil error only if the receiver verified size and sha256
// and its handler succeeded. If produce fails, the receiver is told to abort
// (its reader fails with ErrVerify). Cancelling ctx closes the channel; the
// receiver's reader then fails and its ctx ends. Errors carry h.ID and peer;
// receiver-side failures wrap ErrRemote (and ErrVerify, ErrNoHandler,
// ErrBadHeader or ErrNoSpace when that was the cause).
func (c *Client) Stream(ctx context.Context, peer string, h StreamHeader, produce func(w io.Writer) error) ([]byte, StreamStats, error) {
	if h.Compression == "" {
		h.Compression = c.cfg.Compression.Mode.String()
	}
	res, st, err := c.stream(ctx, peer, h, produce)
	if err != nil {
		return nil, st, fmt.Errorf("send %s to %s: %w", h.ID, peer, err)
	}
	return res, st, nil
}

func (c *Client) stream(ctx context.Context, peer string, h StreamHeader, produce func(w io.Writer) error) ([]byte, StreamStats, error) {
	start := time.Now()
	var st StreamStats
	if err := h.Validate(); err != nil {
		return nil, st, err
	}
	ch, reqs, slot, err := c.openStream(ctx, peer)
	if err != nil {
		return nil, st, err
	}
	go ssh.DiscardRequests(reqs)
	defer ch.Close()
	stop := context.AfterFunc(ctx, func() { ch.Close() })
	defer stop()

	if err := writeHeader(ch, h); err != nil {
		return nil, st, c.failed(ctx, ch, err)
	}

	p := newPipeline(ctx, c, slot, h, peer)
	p.wg.Add(1)
	go p.produce(produce)
	sendErr := p.send(ch)
	p.wait()
	st = p.stats
	st.Duration = time.Since(start)
	if sendErr != nil {
		return nil, st, c.failed(ctx, ch, sendErr)
	}
	if p.prodErr != nil {
		_ = writeFrame(ch, frameAbort, []byte(p.prodErr.Error()))
		_ = ch.CloseWrite()
		return nil, st, fmt.Errorf("produce: %w", p.prodErr)
	}
	if err := writeFrame(ch, frameTrailer, trailerPayload(uint64(st.Bytes), p.sum)); err != nil {
		return nil, st, c.failed(ctx, ch, err)
	}
	_ = ch.CloseWrite()
	result, err := readReply(ch)
	st.Duration = time.Since(start)
	if err != nil {
		return nil, st, c.sendErr(ctx, err)
	}
	return result, st, nil
}

// openStream opens a stream channel on the pooled connection. A pooled
// connection that died since its last use is replaced once: nothing has
// been sent yet, so that is always safe.
func (c *Client) openStream(ctx context.Context, peer string) (ssh.Channel, <-chan *ssh.Request, *peerSlot, error) {
	for attempt := 0; ; attempt++ {
		pc, slot, err := c.conn(ctx, peer)
		if err != nil {
			return nil, nil, nil, err
		}
		ch, reqs, err := pc.ssh.OpenChannel(StreamChannelType, nil)
		if err == nil {
			return ch, reqs, slot, nil
		}
		var oce *ssh.OpenChannelError
		if errors.As(err, &oce) {
			return nil, nil, nil, err
		}
		c.drop(peer, pc)
		if attempt > 0 || ctx.Err() != nil {
			return nil, nil, nil, fmt.Errorf("%w: %v", ErrPeerClosed, err)
		}
	}
}

// sendErr prefers ctx's error: a closed channel after cancel is the
// cancel's doing.
// failed is the error of a stream whose write failed: a receiver that
// gave up first (an unknown kind, a refused record, a full disk) has
// already replied and closed the channel, and its reply says why better
// than the write's EOF does.
func (c *Client) failed(ctx context.Context, ch io.Reader, werr error) error {
	if ctx.Err() == nil {
		if _, rerr := readReply(ch); rerr != nil && !errors.Is(rerr, ErrPeerClosed) {
			return rerr
		}
	}
	return c.sendErr(ctx, werr)
}

func (c *Client) sendErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// How a cut connection shows depends on timing: EOF, a closed
	// connection, or the kernel's broken pipe / reset. All mean the peer
	// is gone.
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %v", ErrPeerClosed, err)
	}
	return err
}

// Reply error codes: the first byte of an error reply's body, so the
// client can wrap the right sentinel.
const (
	codeVerify   byte = 'V'
	codeHandler  byte = 'H'
	codeHeader   byte = 'B'
	codeNoSpace  byte = 'S'
	codeGeneric  byte = 'G'
	codeCanceled byte = 'C'
)

func errorCode(err error) byte {
	switch {
	case errors.Is(err, ErrVerify):
		return codeVerify
	case errors.Is(err, ErrNoHandler):
		return codeHandler
	case errors.Is(err, ErrBadHeader):
		return codeHeader
	case isNoSpace(err):
		return codeNoSpace
	case errors.Is(err, context.Canceled):
		return codeCanceled
	}
	return codeGeneric
}

func readReply(r io.Reader) ([]byte, error) {
	var pre [5]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return nil, fmt.Errorf("%w before reply: %v", ErrPeerClosed, err)
	}
	n := binary.BigEndian.Uint32(pre[1:])
	if n > maxReplyBytes {
		return nil, fmt.Errorf("%w: reply of %d bytes", ErrRemote, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("%w during reply: %v", ErrPeerClosed, err)
	}
	switch pre[0] {
	case replyOK:
		return body, nil
	case replyErr:
		if len(body) == 0 {
			return nil, ErrRemote
		}
		text := string(body[1:])
		switch body[0] {
		case codeVerify:
			return nil, fmt.Errorf("%w: %w: %s", ErrRemote, ErrVerify, text)
		case codeHandler:
			return nil, fmt.Errorf("%w: %w: %s", ErrRemote, ErrNoHandler, text)
		case codeHeader:
			return nil, fmt.Errorf("%w: %w: %s", ErrRemote, ErrBadHeader, text)
		case codeNoSpace:
			return nil, fmt.Errorf("%w: %w: %s", ErrRemote, ErrNoSpace, text)
		}
		return nil, fmt.Errorf("%w: %s", ErrRemote, text)
	}
	return nil, fmt.Errorf("%w: bad reply status %#x", ErrRemote, pre[0])
}

// hashRemote asks the server for a spool file's size and sha256. ok is
// false when the server does not answer such requests (stock sshd).
func (pc *peerConn) hashRemote(name string) (size int64, sum string, ok bool, err error) {
	pc.mu.Lock()
	known := pc.hashOK
	pc.mu.Unlock()
	if known < 0 {
		return 0, "", false, nil
	}
	accepted, payload, err := pc.ssh.SendRequest(hashRequestType, true, ssh.Marshal(struct{ Name string }{name}))
	if err != nil {
		return 0, "", false, fmt.Errorf("%w: %v", ErrPeerClosed, err)
	}
	if !accepted {
		var e struct{ Err string }
		if len(payload) > 0 && ssh.Unmarshal(payload, &e) == nil {
			return 0, "", true, fmt.Errorf("remote hash of %s: %s", name, e.Err)
		}
		pc.mu.Lock()
		pc.hashOK = -1
		pc.mu.Unlock()
		return 0, "", false, nil
	}
	var r struct {
		Size uint64
		Sum  string
	}
	if err := ssh.Unmarshal(payload, &r); err != nil {
		return 0, "", true, fmt.Errorf("remote hash of %s: %v", name, err)
	}
	pc.mu.Lock()
	pc.hashOK = 1
	pc.mu.Unlock()
	return int64(r.Size), r.Sum, true, nil
}

func hexSum(b []byte) string { return hex.EncodeToString(b) }
