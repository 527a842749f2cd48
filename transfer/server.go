package transfer

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/edgemigrate/orchestrate/internal/netguard"
	"github.com/edgemigrate/orchestrate/internal/safefs"
)

// DefaultPort is the agent's SSH endpoint port.
const DefaultPort = 7922

// Handler consumes one stream. r yields the sender's uncompressed bytes and
// ends with io.EOF only once size and sha256 are verified; otherwise it
// returns an error wrapping ErrVerify, which the handler should pass on
// (engine.Restorer does, and creates nothing). ctx ends when the stream is
// cut, the connection drops or the server closes. The result, or the
// error's text, is sent back to the client.
//
// If the handler returns nil without reading to the end, the server reads
// and verifies the rest itself, and reports a verification failure instead
// of the result.
type Handler func(ctx context.Context, h StreamHeader, r io.Reader) (result []byte, err error)

// ServerConfig configures a Server.
type ServerConfig struct {
	// Addr is where Run listens, e.g. ":7922".
	Addr string
	// HostKey is the server's identity (see LoadOrCreateKey). Required.
	HostKey ssh.Signer
	// Authorizer decides which client keys may connect. Required.
	Authorizer Authorizer
	// SpoolDir confines SFTP. Empty disables the SFTP subsystem.
	SpoolDir string
	// PartialTTL: *.partial files older than this are removed when the
	// server starts and then every PartialTTL/2. Zero disables it.
	PartialTTL time.Duration
	// HandshakeTimeout bounds the SSH handshake of each connection.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection on which nothing arrived for this
	// long (clients send keepalives every 15 s, so only a dead or stopped
	// peer hits it).
	IdleTimeout time.Duration
	// MaxConns and MaxConnsPerIP cap the connections open at once, in
	// total and from one address; more are closed as they arrive, before
	// the handshake.
	MaxConns, MaxConnsPerIP int
	// MaxChannels caps the streams and SFTP sessions one connection may
	// have open at once; more are rejected.
	MaxChannels int
	// StallTimeout fails a stream whose handler has waited this long for
	// its next byte: the channel is closed, the handler's reader fails
	// with ErrVerify and ErrStalled, and whatever it held (a container's
	// lock) is released. Senders send an empty frame after every second
	// of silence, so a stall means the sender is stopped, hung or cut off.
	StallTimeout time.Duration
	// MaxStreamBytes caps, by stream kind, how many bytes a stream may
	// carry; a larger one fails with ErrVerify and ErrTooLarge. Kinds not
	// listed are not capped.
	MaxStreamBytes map[string]int64
	// MaxFileBytes caps one SFTP upload (0: none), and MinFreeBytes keeps
	// that much of the spool's file system free: a write that would eat
	// into it fails with ErrNoSpace.
	MaxFileBytes, MinFreeBytes int64
	// PageLinks offers clients that ask a page link for each page channel:
	// a TCP port opened for that channel alone, on the address the client
	// reached, which only that client's address may connect to and only
	// with the channel's key (see pagelink.go).
	PageLinks bool
	// ListenLink opens the listener of a page link offer; nil uses
	// net.Listen. Tests with network namespaces replace it.
	ListenLink func(network, addr string) (net.Listener, error)
	// Logger receives connection-level events. Nil discards.
	Logger *slog.Logger
}

// DefaultServerConfig returns a config listening on DefaultPort with a 24 h
// partial TTL and the default limits. HostKey, Authorizer and SpoolDir
// must still be set.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{
		Addr:             fmt.Sprintf(":%d", DefaultPort),
		PartialTTL:       24 * time.Hour,
		HandshakeTimeout: 10 * time.Second,
		IdleTimeout:      2 * time.Minute,
		MaxConns:         256,
		MaxConnsPerIP:    32,
		MaxChannels:      32,
		StallTimeout:     time.Minute,
		MaxFileBytes:     64 << 30,
		MinFreeBytes:     1 << 30,
		PageLinks:        true,
	}
}

// Server is the agent's SSH endpoint: SFTP into the spool directory and
// stream dispatch to registered handlers. It owns its listener, every
// connection it accepts and their goroutines; Close (or the end of Run's
// context) stops them all and waits.
type Server struct {
	cfg    ServerConfig
	log    *slog.Logger
	sshCfg *ssh.ServerConfig
	root   *os.Root

	mu       sync.Mutex
	handlers map[string]Handler
	conns    map[net.Conn]struct{}
	lns      map[net.Listener]struct{}
	closed   bool
	wg       sync.WaitGroup
	done     chan struct{}
	once     sync.Once

	// pageHandlers serve page channels (pages.go); guarded by mu.
	pageHandlers map[string]PageHandler
}

// NewServer checks cfg and opens the spool directory (creating it 0700).
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.HostKey == nil {
		return nil, errors.New("transfer server: no host key")
	}
	if cfg.Authorizer == nil {
		return nil, errors.New("transfer server: no authorizer")
	}
	def := DefaultServerConfig()
	for _, d := range []struct{ v, def *time.Duration }{
		{&cfg.HandshakeTimeout, &def.HandshakeTimeout}, {&cfg.IdleTimeout, &def.IdleTimeout}, {&cfg.StallTimeout, &def.StallTimeout},
	} {
		if *d.v <= 0 {
			*d.v = *d.def
		}
	}
	for _, n := range []struct{ v, def *int }{
		{&cfg.MaxConns, &def.MaxConns}, {&cfg.MaxConnsPerIP, &def.MaxConnsPerIP}, {&cfg.MaxChannels, &def.MaxChannels},
	} {
		if *n.v <= 0 {
			*n.v = *n.def
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg: cfg, log: log.With("component", "transfer-server"),
		handlers: map[string]Handler{}, conns: map[net.Conn]struct{}{},
		lns: map[net.Listener]struct{}{}, done: make(chan struct{}),
	}
	s.pageHandlers = map[string]PageHandler{}
	if cfg.SpoolDir != "" {
		if err := safefs.PrivateDir(cfg.SpoolDir); err != nil {
			return nil, fmt.Errorf("transfer server: spool: %w", err)
		}
		root, err := os.OpenRoot(cfg.SpoolDir)
		if err != nil {
			return nil, fmt.Errorf("transfer server: spool: %w", err)
		}
		s.root = root
	}
	s.sshCfg = &ssh.ServerConfig{
		PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if !cfg.Authorizer.Authorized(key) {
				s.log.Warn("refused client key", "remote", meta.RemoteAddr().String(), "user", meta.User(), "key", ssh.FingerprintSHA256(key))
				return nil, fmt.Errorf("key %s not authorised", ssh.FingerprintSHA256(key))
			}
			return &ssh.Permissions{Extensions: senderExtensions(cfg.Authorizer, key)}, nil
		},
	}
	s.sshCfg.AddHostKey(cfg.HostKey)
	return s, nil
}

// Handle registers h for streams of the given kind, replacing any earlier
// one. Safe to call while serving.
func (s *Server) Handle(kind string, h Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers[kind] = h
}

// Run listens on cfg.Addr and serves until ctx ends or Close is called.
func (s *Server) Run(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("transfer server: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve accepts connections on ln until ctx ends or Close is called; it
// closes ln. It returns nil on such a shutdown, after every connection and
// handler has stopped. Connections beyond the caps are closed as they
// arrive.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ln = netguard.Listen(ln, netguard.Config{MaxConns: s.cfg.MaxConns, MaxPerIP: s.cfg.MaxConnsPerIP, IdleTimeout: s.cfg.IdleTimeout})
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return net.ErrClosed
	}
	s.lns[ln] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-ctx.Done():
		case <-s.done:
		}
		ln.Close()
	}()
	if s.root != nil && s.cfg.PartialTTL > 0 {
		s.sweepPartials()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.sweepLoop(ctx)
		}()
	}

	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || s.isClosed() {
				s.closeConns()
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.closeConns()
			return fmt.Errorf("transfer server: accept: %w", err)
		}
		if !s.track(c) {
			c.Close()
			continue
		}
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			s.serveConn(ctx, c)
		}()
	}
}

// Close stops the server: listeners and connections close, handlers' ctx
// end. It waits for Serve's goroutines. Safe to call more than once.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.done)
		s.closeConns()
	})
	s.wg.Wait()
	if s.root != nil {
		s.mu.Lock()
		root := s.root
		s.mu.Unlock()
		_ = root.Close() // idempotent in os
	}
	return nil
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
}

func (s *Server) closeConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
	for ln := range s.lns {
		ln.Close()
	}
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	sc, chans, reqs, err := ssh.NewServerConn(c, s.sshCfg)
	if err != nil {
		s.log.Debug("handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	log := s.log.With("remote", c.RemoteAddr().String(), "key", sc.Permissions.Extensions["key"])
	ctx, cancel := context.WithCancel(ContextWithSender(ctx, sc.Permissions.Extensions[extNode]))
	defer cancel()
	go func() {
		<-ctx.Done()
		sc.Close()
	}()

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for req := range reqs {
			s.globalRequest(req)
		}
	}()
	// open counts this connection's channels (a cap, so that one member
	// cannot tie up the agent with thousands of them).
	var open atomic.Int32
	for nc := range chans {
		if t := nc.ChannelType(); (t == StreamChannelType || t == PageChannelType || t == "session") && int(open.Load()) >= s.cfg.MaxChannels {
			nc.Reject(ssh.ResourceShortage, fmt.Sprintf("at most %d channels per connection", s.cfg.MaxChannels))
			continue
		}
		switch nc.ChannelType() {
		case StreamChannelType:
			ch, creqs, err := nc.Accept()
			if err != nil {
				continue
			}
			go ssh.DiscardRequests(creqs)
			open.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer open.Add(-1)
				s.serveStream(ctx, log, ch, func() { sc.Close() })
			}()
		case PageChannelType:
			link := pageLinkAddrs{want: string(nc.ExtraData()) == pageLinkRequest, local: tcpIP(c.LocalAddr()), peer: tcpIP(c.RemoteAddr())}
			ch, creqs, err := nc.Accept()
			if err != nil {
				continue
			}
			open.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer open.Add(-1)
				s.servePages(ctx, log, ch, creqs, func() { sc.Close() }, link)
			}()
		case "session":
			if s.root == nil {
				nc.Reject(ssh.Prohibited, "no sftp")
				continue
			}
			ch, creqs, err := nc.Accept()
			if err != nil {
				continue
			}
			open.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer open.Add(-1)
				s.serveSession(ctx, log, ch, creqs)
			}()
		default:
			nc.Reject(ssh.UnknownChannelType, "unknown channel type")
		}
	}
	cancel()
}

// globalRequest answers hashRequestType with the size and sha256 of a spool
// file, so clients verify uploads without reading them back. Requests are
// answered in order, as the protocol requires.
func (s *Server) globalRequest(req *ssh.Request) {
	if req.Type != hashRequestType || s.root == nil {
		if req.WantReply {
			req.Reply(false, nil)
		}
		return
	}
	var msg struct{ Name string }
	if err := ssh.Unmarshal(req.Payload, &msg); err != nil {
		req.Reply(false, nil)
		return
	}
	size, sum, err := s.hashFile(msg.Name)
	if err != nil {
		req.Reply(false, ssh.Marshal(struct{ Err string }{err.Error()}))
		return
	}
	req.Reply(true, ssh.Marshal(struct {
		Size uint64
		Sum  string
	}{uint64(size), hex.EncodeToString(sum)}))
}

func (s *Server) hashFile(name string) (int64, []byte, error) {
	rel, err := spoolPath(name)
	if err != nil {
		return 0, nil, err
	}
	f, err := s.root.Open(rel)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, nil, err
	}
	return n, h.Sum(nil), nil
}

func (s *Server) serveSession(ctx context.Context, log *slog.Logger, ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	for req := range reqs {
		ok := false
		if req.Type == "subsystem" {
			var msg struct{ Name string }
			if ssh.Unmarshal(req.Payload, &msg) == nil && msg.Name == "sftp" {
				ok = true
			}
		}
		if req.WantReply {
			req.Reply(ok, nil)
		}
		if !ok {
			continue
		}
		go ssh.DiscardRequests(reqs)
		srv := sftp.NewRequestServer(ch, s.sftpHandlers(log))
		stop := context.AfterFunc(ctx, func() { srv.Close() })
		defer stop()
		if err := srv.Serve(); err != nil && !errors.Is(err, io.EOF) {
			log.Debug("sftp session ended", "err", err)
		}
		srv.Close()
		return
	}
}

// serveStream reads a header, runs the handler and writes the reply.
// dropConn closes the stream's whole connection (see stallReader).
func (s *Server) serveStream(ctx context.Context, log *slog.Logger, ch ssh.Channel, dropConn func()) {
	defer ch.Close()
	stall := &stallReader{ch: ch, timeout: s.cfg.StallTimeout, drop: dropConn}
	br := bufio.NewReaderSize(stall, 256<<10)
	h, err := readHeader(br)
	if err != nil {
		replyError(ch, err)
		return
	}
	log = log.With("kind", h.Kind, "id", h.ID)
	s.mu.Lock()
	handler := s.handlers[h.Kind]
	s.mu.Unlock()
	if handler == nil {
		replyError(ch, fmt.Errorf("%w %q", ErrNoHandler, h.Kind))
		return
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxFrameBytes*2))
	if err != nil {
		replyError(ch, err)
		return
	}
	defer dec.Close()

	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	vr := newVerifyReader(br, dec)
	vr.max = uint64(max(s.cfg.MaxStreamBytes[h.Kind], 0))
	vr.onDone = func(err error) {
		if !errors.Is(err, io.EOF) {
			cancel() // the stream is dead: stop the consumer too
		}
	}
	start := time.Now()
	result, herr := handler(hctx, h, vr)
	if herr == nil {
		// A handler that stopped early still only succeeds on a
		// verified stream.
		herr = vr.drain()
	}
	if herr != nil && stall.stalled.Load() && !errors.Is(herr, ErrStalled) {
		// The handler may have seen the dropped connection first (its
		// ctx, a page channel): the cause is still the stall.
		herr = fmt.Errorf("%w: no data for %s: %w", ErrStalled, s.cfg.StallTimeout, herr)
	}
	if herr != nil {
		log.Info("stream failed", "err", herr, "bytes", vr.n)
		replyError(ch, herr)
		return
	}
	log.Debug("stream received", "bytes", vr.n, "wire", vr.wire, "zstd_chunks", vr.compressed, "raw_chunks", vr.raw, "took", time.Since(start))
	writeReply(ch, replyOK, result)
}

func replyError(ch ssh.Channel, err error) {
	writeReply(ch, replyErr, append([]byte{errorCode(err)}, err.Error()...))
}

func writeReply(ch ssh.Channel, status byte, body []byte) {
	if len(body) > maxReplyBytes {
		body = body[:maxReplyBytes]
	}
	buf := make([]byte, 0, 5+len(body))
	buf = append(buf, status)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(body)))
	buf = append(buf, body...)
	_, _ = ch.Write(buf)
	_ = ch.CloseWrite()
}

// stallReader is a stream channel whose every Read must return within
// timeout. A Read that waits longer means the sender is stopped, hung or
// cut off (a live sender sends an empty frame every second, whatever its
// producer does), so its whole connection is closed: that is what ends a
// Read waiting on an SSH channel, and every other stream on the
// connection is waiting on the same dead peer. The Read then fails with
// ErrStalled. Only a waiting Read counts: a handler that is slow to
// consume never trips it.
type stallReader struct {
	ch      ssh.Channel
	timeout time.Duration
	drop    func()
	stalled atomic.Bool
}

func (s *stallReader) Read(p []byte) (int, error) {
	t := time.AfterFunc(s.timeout, func() {
		s.stalled.Store(true)
		s.ch.Close()
		if s.drop != nil {
			s.drop()
		}
	})
	n, err := s.ch.Read(p)
	t.Stop()
	if err != nil && s.stalled.Load() {
		return n, fmt.Errorf("%w: no data for %s", ErrStalled, s.timeout)
	}
	return n, err
}

// checkWrite refuses an SFTP write that would make a spool file larger than
// MaxFileBytes, or leave less than MinFreeBytes free on the spool's file
// system (checked when the write crosses a 64 MiB boundary, so that a
// stream of small writes costs no statfs each). The latter wraps
// syscall.ENOSPC, so the partial upload is dropped and the client sees
// ErrNoSpace.
func (s *Server) checkWrite(off int64, n int) error {
	end := off + int64(n)
	if s.cfg.MaxFileBytes > 0 && end > s.cfg.MaxFileBytes {
		return fmt.Errorf("%w: a spool file may hold at most %d bytes", ErrTooLarge, s.cfg.MaxFileBytes)
	}
	const every = 64 << 20
	if s.cfg.MinFreeBytes <= 0 || off/every == end/every && off != 0 {
		return nil
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(s.cfg.SpoolDir, &fs); err != nil {
		return nil // cannot tell; the write itself will say
	}
	if free := int64(fs.Bavail) * fs.Bsize; free-int64(n) < s.cfg.MinFreeBytes {
		return fmt.Errorf("spool: %d bytes free, %d kept in reserve: %w", free, s.cfg.MinFreeBytes, syscall.ENOSPC)
	}
	return nil
}
