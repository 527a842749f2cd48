// Package pageserver carries one session of CRIU's page-server protocol
// between the dumping CRIU and a page server somewhere else, and lets a
// recorded session be replayed. It owns no listener and no process: the
// engine hands it CRIU's connection (engine/podman.CheckpointPages) and
// the migration code the other end (a transfer page channel).
//
// The protocol (criu/page-xfer.c, CRIU 4.x): the dump side sends 32-byte
// commands (u32 cmd, 4 bytes padding, u64 nr_pages, u64 vaddr, u64 dst_id,
// little-endian on the hosts CRIU supports), each PS_IOV_ADD(_F) with
// PE_PRESENT followed by nr_pages pages of data. The server answers
// PS_IOV_OPEN2 with one byte, PS_IOV_PARENT with four and PS_IOV_CLOSE /
// PS_IOV_FORCE_CLOSE with a four-byte status, after which CRIU closes. Pump
// parses the dump side as it forwards it, so it knows, without trusting
// either end, whether the session completed: CRIU sent CLOSE and received
// every answer it was owed. Only a complete session's recording can rebuild
// the memory; Pump says which it saw.
package pageserver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Commands of the page-server protocol (criu/page-xfer.c).
const (
	cmdAdd        = 1
	cmdHole       = 2
	cmdOpen       = 3
	cmdOpen2      = 4
	cmdParent     = 5
	cmdAddF       = 6
	cmdGet        = 7
	cmdClose      = 0x1023
	cmdForceClose = 0x1024

	cmdBits   = 16
	cmdMask   = 1<<cmdBits - 1
	pePresent = 1 << 2

	// HeaderSize is sizeof(struct page_server_iov) on 64-bit hosts.
	HeaderSize = 32
)

// Sentinel errors.
var (
	// ErrProtocol: the dump side sent something that is not a page-server
	// session (an unknown command, bytes after CLOSE, an absurd length).
	ErrProtocol = errors.New("page-server protocol error")
	// ErrStalled: a write to one side, or an answer the server owed,
	// made no progress for the stall timeout (a cut link).
	ErrStalled = errors.New("page-server session stalled")
	// ErrIncomplete: a recording or session ended before CRIU's CLOSE was
	// answered; it cannot rebuild the memory.
	ErrIncomplete = errors.New("page-server session incomplete")
)

// parser follows the dump side of a session. It is fed the bytes in order,
// in chunks of any size, and never copies page data.
type parser struct {
	pageSize uint64
	hdr      [HeaderSize]byte
	have     int    // header bytes collected
	data     uint64 // page bytes still to pass
	pages    uint64 // pages with data seen
	owed     int64  // answer bytes the server owes for the commands seen
	closed   bool   // CLOSE or FORCE_CLOSE seen
	err      error
}

func newParser() *parser { return &parser{pageSize: uint64(os.Getpagesize())} }

// maxPagesPerCommand bounds nr_pages (1 TiB of 4 KiB pages): CRIU sends one
// command per contiguous run of pages, never more than a process maps.
const maxPagesPerCommand = 1 << 28

// feed consumes b. After an error it consumes nothing more.
func (p *parser) feed(b []byte) error {
	for len(b) > 0 && p.err == nil {
		if p.data > 0 {
			n := min(uint64(len(b)), p.data)
			p.data -= n
			b = b[n:]
			continue
		}
		if p.closed {
			p.err = fmt.Errorf("%w: %d bytes after CLOSE", ErrProtocol, len(b))
			break
		}
		n := copy(p.hdr[p.have:], b)
		p.have += n
		b = b[n:]
		if p.have < HeaderSize {
			break
		}
		p.have = 0
		p.command()
	}
	return p.err
}

func (p *parser) command() {
	raw := binary.LittleEndian.Uint32(p.hdr[0:])
	nr := binary.LittleEndian.Uint64(p.hdr[8:])
	cmd, flags := raw&cmdMask, raw>>cmdBits
	switch cmd {
	case cmdAdd, cmdAddF:
		if cmd == cmdAdd {
			flags = pePresent
		}
		if nr > maxPagesPerCommand {
			p.err = fmt.Errorf("%w: %d pages in one command", ErrProtocol, nr)
			return
		}
		if flags&pePresent != 0 {
			p.data = nr * p.pageSize
			p.pages += nr
		}
	case cmdHole, cmdOpen:
	case cmdOpen2:
		p.owed++
	case cmdParent:
		p.owed += 4
	case cmdClose, cmdForceClose:
		p.owed += 4
		p.closed = true
	default:
		// cmdGet belongs to lazy pages, which a dump never sends.
		p.err = fmt.Errorf("%w: command %#x", ErrProtocol, raw)
	}
}

// complete reports whether the dump side ended cleanly: CLOSE seen, no
// command half-sent.
func (p *parser) complete() bool { return p.err == nil && p.closed && p.have == 0 && p.data == 0 }

// Stats describe one session.
type Stats struct {
	Sent     int64 // bytes the dump side sent
	Answered int64 // bytes the server answered
	Pages    int64 // pages of memory carried
	// Complete: CRIU closed the session and received every answer the
	// server owed it, so the server holds all pages and a recording of
	// the session can rebuild them.
	Complete bool
}

// halfCloser is implemented by TCP and Unix connections and SSH channels.
type halfCloser interface{ CloseWrite() error }

func closeWrite(c io.Closer) error {
	if hc, ok := c.(halfCloser); ok {
		return hc.CloseWrite()
	}
	return c.Close()
}

// PumpConfig tunes Pump.
type PumpConfig struct {
	// Record, when set, receives every byte the dump side sends. It is
	// written on a goroutine of its own, beside the forwarding, and
	// drained before CRIU gets the answer to its CLOSE: CRIU's dump
	// succeeds only with the whole session recorded, and a failed write
	// ends the session, so CRIU's dump fails and the container runs on.
	Record io.Writer
	// Stall: a write to either side, an answer the server owes, or the
	// rest of a command the dump side began, that makes no progress for
	// this long ends the session with ErrStalled. Zero: 10 s.
	Stall time.Duration
	// Idle: the dump side sending nothing at all for this long, before
	// its CLOSE, also ends the session (a receiver behind a cut link
	// would otherwise wait for the next command forever). Zero: off.
	Idle time.Duration
	// BufferSize of each direction; zero: 256 KiB.
	BufferSize int
}

// Pump forwards one session between dump (CRIU's connection) and server
// (the page server, or a channel to it) until both directions end. It
// closes both ends before returning. The error is about the pump itself (a
// stall, a failed recording, a protocol violation, ctx); a session that
// simply ended early (CRIU's dump failed, the server died) returns nil
// error with Complete false.
func Pump(ctx context.Context, dump, server io.ReadWriteCloser, cfg PumpConfig) (Stats, error) {
	if cfg.Stall <= 0 {
		cfg.Stall = 10 * time.Second
	}
	if cfg.BufferSize <= 0 {
		cfg.BufferSize = 256 << 10
	}
	p := &pump{dump: dump, server: server, cfg: cfg, parser: newParser(), done: make(chan struct{})}
	return p.run(ctx)
}

type pump struct {
	dump, server io.ReadWriteCloser
	cfg          PumpConfig
	parser       *parser

	sent, answered atomic.Int64
	owed           atomic.Int64 // answer bytes the server owes (from parser)
	writing        atomic.Int64 // unix nanos a write started; 0: none
	progress       atomic.Int64 // unix nanos of the last answer byte or command owing one
	lastRead       atomic.Int64 // unix nanos of the last byte from the dump side
	midCommand     atomic.Bool  // the dump side is inside a command
	closed         atomic.Bool  // the dump side sent CLOSE

	rec *recorder // nil without cfg.Record

	once sync.Once
	err  error
	done chan struct{}
}

// recorder writes the dump side's bytes to a Writer on its own goroutine.
// Buffers come from a pool and go back once both the forwarder and the
// recorder are done with them.
type recorder struct {
	w    io.Writer
	q    chan *recBuf
	pool sync.Pool
	wg   sync.WaitGroup // buffers queued and not yet written
	mu   sync.Mutex
	err  error
	stop chan struct{}
}

type recBuf struct {
	b    []byte
	n    int
	refs atomic.Int32
}

func newRecorder(w io.Writer, size int) *recorder {
	r := &recorder{w: w, q: make(chan *recBuf, 64), stop: make(chan struct{})}
	r.pool.New = func() any { return &recBuf{b: make([]byte, size)} }
	go r.run()
	return r
}

func (r *recorder) get() *recBuf { return r.pool.Get().(*recBuf) }

func (r *recorder) release(b *recBuf) {
	if b.refs.Add(-1) == 0 {
		r.pool.Put(b)
	}
}

// queue hands b (already counted for the caller) to the recorder.
func (r *recorder) queue(b *recBuf) {
	b.refs.Add(1)
	r.wg.Add(1)
	r.q <- b
}

func (r *recorder) run() {
	for {
		select {
		case <-r.stop:
			return
		case b := <-r.q:
			if r.error() == nil {
				if _, err := r.w.Write(b.b[:b.n]); err != nil {
					r.mu.Lock()
					r.err = fmt.Errorf("record page-server session: %w", err)
					r.mu.Unlock()
				}
			}
			r.release(b)
			r.wg.Done()
		}
	}
}

func (r *recorder) error() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// flush waits until everything queued is written and reports the first
// write error.
func (r *recorder) flush() error {
	r.wg.Wait()
	return r.error()
}

// aborter is implemented by ends whose Close can block on a dead link
// (transfer.PageConn): Abort tears the link down instead.
type aborter interface{ Abort() error }

// fail ends the session: the dump side first, so that CRIU's dump fails at
// once; a stalled server end is aborted, not closed, because closing it
// could wait on the very link that stalled.
func (p *pump) fail(err error) {
	p.once.Do(func() {
		p.err = err
		stalled := errors.Is(err, ErrStalled)
		for _, end := range []io.Closer{p.dump, p.server} {
			if a, ok := end.(aborter); ok && stalled {
				a.Abort()
			} else {
				end.Close()
			}
		}
	})
}

func (p *pump) run(ctx context.Context) (Stats, error) {
	stop := context.AfterFunc(ctx, func() { p.fail(ctx.Err()) })
	defer stop()
	p.lastRead.Store(time.Now().UnixNano())
	if cfg := p.cfg; cfg.Record != nil {
		p.rec = newRecorder(cfg.Record, cfg.BufferSize)
		defer close(p.rec.stop)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.forward() }()
	go func() { defer wg.Done(); p.answer() }()
	go p.watch()
	wg.Wait()
	close(p.done)
	if p.rec != nil {
		if err := p.rec.flush(); err != nil {
			p.fail(err)
		}
	}
	p.fail(nil) // close both ends; keeps an earlier error
	st := Stats{Sent: p.sent.Load(), Answered: p.answered.Load(), Pages: int64(p.parser.pages)}
	st.Complete = p.err == nil && p.parser.complete() && st.Answered == p.parser.owed
	return st, p.err
}

// write writes b to w, marking the write for the stall watchdog.
func (p *pump) write(w io.Writer, b []byte) error {
	p.writing.Store(time.Now().UnixNano())
	_, err := w.Write(b)
	p.writing.Store(0)
	return err
}

// forward carries the dump side to the server, parsing and recording it.
func (p *pump) forward() {
	own := make([]byte, p.cfg.BufferSize)
	for {
		buf := own
		var rb *recBuf
		if p.rec != nil {
			rb = p.rec.get()
			rb.refs.Store(1)
			buf = rb.b
		}
		n, rerr := p.dump.Read(buf)
		if rb != nil {
			rb.n = n
		}
		if n > 0 {
			p.lastRead.Store(time.Now().UnixNano())
			if err := p.parser.feed(buf[:n]); err != nil {
				p.fail(err)
				return
			}
			p.midCommand.Store(p.parser.have > 0 || p.parser.data > 0)
			p.closed.Store(p.parser.closed)
			if owed := p.parser.owed; owed > p.owed.Load() {
				p.owed.Store(owed)
				p.progress.Store(time.Now().UnixNano())
			}
			if p.rec != nil {
				if err := p.rec.error(); err != nil {
					p.rec.release(rb)
					p.fail(err)
					return
				}
				p.rec.queue(rb)
			}
			err := p.write(p.server, buf[:n])
			if rb != nil {
				p.rec.release(rb)
			}
			if err != nil {
				// The server went away; CRIU will see its
				// connection close and fail the dump.
				p.fail(nil)
				return
			}
			p.sent.Add(int64(n))
		} else if rb != nil {
			p.rec.release(rb)
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				p.fail(nil)
				return
			}
			_ = closeWrite(p.server)
			return
		}
	}
}

// answer carries the server's answers back to CRIU.
func (p *pump) answer() {
	buf := make([]byte, 4096)
	for {
		n, rerr := p.server.Read(buf)
		if n > 0 {
			p.progress.Store(time.Now().UnixNano())
			// The answer to CLOSE completes CRIU's dump: only once the
			// whole session is recorded.
			if p.rec != nil && p.closed.Load() {
				if err := p.rec.flush(); err != nil {
					p.fail(err)
					return
				}
			}
			if err := p.write(p.dump, buf[:n]); err != nil {
				p.fail(nil)
				return
			}
			p.answered.Add(int64(n))
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				p.fail(nil)
				return
			}
			_ = closeWrite(p.dump)
			return
		}
	}
}

// watch ends a stalled session: a write blocked for the stall timeout (the
// link is cut and the SSH window is full), or an answer owed that long.
func (p *pump) watch() {
	t := time.NewTicker(max(p.cfg.Stall/8, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case now := <-t.C:
			limit := now.Add(-p.cfg.Stall).UnixNano()
			if w := p.writing.Load(); w != 0 && w < limit {
				p.fail(fmt.Errorf("%w: a write blocked for %s", ErrStalled, p.cfg.Stall))
				return
			}
			if p.answered.Load() < p.owed.Load() && p.progress.Load() < limit {
				p.fail(fmt.Errorf("%w: the page server owes an answer for %s", ErrStalled, p.cfg.Stall))
				return
			}
			last := p.lastRead.Load()
			if p.midCommand.Load() && last < limit {
				p.fail(fmt.Errorf("%w: a command stopped halfway for %s", ErrStalled, p.cfg.Stall))
				return
			}
			if p.cfg.Idle > 0 && !p.closed.Load() && last < now.Add(-p.cfg.Idle).UnixNano() {
				p.fail(fmt.Errorf("%w: the dump side sent nothing for %s", ErrStalled, p.cfg.Idle))
				return
			}
		}
	}
}

// Check reads a recorded session to its end and reports whether it is
// whole (CRIU closed it after its last command); ErrIncomplete if not.
// Answers are not recorded, so Check cannot see them: a session cut after
// CLOSE but before its answer looks whole here, and Replay then finds out.
func Check(recording io.Reader) (Stats, error) {
	ps := newParser()
	n, err := io.Copy(parserWriter{ps}, recording)
	st := Stats{Sent: n, Pages: int64(ps.pages), Complete: err == nil && ps.complete()}
	if err != nil {
		return st, err
	}
	if !st.Complete {
		return st, fmt.Errorf("%w: %d bytes, CLOSE seen %v", ErrIncomplete, n, ps.closed)
	}
	return st, nil
}

type parserWriter struct{ p *parser }

func (w parserWriter) Write(b []byte) (int, error) {
	if err := w.p.feed(b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Replay sends a recorded session (the dump side's bytes, as Pump's Record
// received them) to server, reads and discards the answers, and fails with
// ErrIncomplete unless the recording is a whole session that the server
// answered in full. server is closed before Replay returns.
func Replay(ctx context.Context, recording io.Reader, server io.ReadWriteCloser) (Stats, error) {
	stop := context.AfterFunc(ctx, func() { server.Close() })
	defer stop()
	defer server.Close()
	ps := newParser()
	answered := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, server)
		answered <- n
	}()
	buf := make([]byte, 256<<10)
	var st Stats
	var err error
	for {
		n, rerr := recording.Read(buf)
		if n > 0 {
			if err = ps.feed(buf[:n]); err != nil {
				break
			}
			if _, err = server.Write(buf[:n]); err != nil {
				err = fmt.Errorf("replay to page server: %w", err)
				break
			}
			st.Sent += int64(n)
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				err = fmt.Errorf("read recording: %w", rerr)
			}
			break
		}
	}
	if err == nil {
		_ = closeWrite(server)
	} else {
		server.Close()
	}
	st.Answered = <-answered
	st.Pages = int64(ps.pages)
	st.Complete = err == nil && ps.complete() && st.Answered == ps.owed
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err == nil && !st.Complete {
		err = fmt.Errorf("%w: %d bytes, CLOSE seen %v, %d of %d answer bytes", ErrIncomplete, st.Sent, ps.closed, st.Answered, ps.owed)
	}
	return st, err
}

// Answerer is a page-server end that answers CRIU itself and passes the
// dump side on, one way, to W (for example a delta encoder over a page
// channel to the target, whose own page server's answers are then not
// needed). The answers are those of a page server without a parent image:
// no parent, status 0. It answers CLOSE only once W accepted every byte
// before it, so CRIU's dump succeeds only with the whole session handed
// on; whoever reads W's far end must verify it arrived whole (the delta's
// end op does). Use it as Pump's server end.
type Answerer struct {
	W io.Writer

	mu     sync.Mutex
	cond   *sync.Cond
	parser *parser
	owed   int64 // answer bytes not yet read by CRIU
	closed bool
}

// NewAnswerer returns an Answerer writing to w.
func NewAnswerer(w io.Writer) *Answerer {
	a := &Answerer{W: w, parser: newParser()}
	a.cond = sync.NewCond(&a.mu)
	return a
}

// Write passes CRIU's bytes on and queues the answers they are owed.
func (a *Answerer) Write(b []byte) (int, error) {
	if _, err := a.W.Write(b); err != nil {
		return 0, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	before := a.parser.owed
	if err := a.parser.feed(b); err != nil {
		return 0, err
	}
	a.owed += a.parser.owed - before
	a.cond.Broadcast()
	return len(b), nil
}

// Read returns the answers owed so far (zero bytes: no parent; status 0),
// blocking until there are some; io.EOF once closed and all were read.
func (a *Answerer) Read(b []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for a.owed == 0 && !a.closed {
		a.cond.Wait()
	}
	if a.owed == 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(b)), a.owed))
	clear(b[:n])
	a.owed -= int64(n)
	return n, nil
}

// CloseWrite: CRIU finished sending.
func (a *Answerer) CloseWrite() error { return a.Close() }

// Close ends the session; pending reads return what is owed, then io.EOF.
func (a *Answerer) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	a.cond.Broadcast()
	return nil
}

// Complete reports whether the session that passed through was whole.
func (a *Answerer) Complete() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.parser.complete()
}

// OneWay turns a reader of a dump side (a recording, or a rebuilt stream)
// into a Pump dump end whose answers are discarded.
type OneWay struct{ R io.Reader }

func (o OneWay) Read(b []byte) (int, error)  { return o.R.Read(b) }
func (o OneWay) Write(b []byte) (int, error) { return len(b), nil }
func (o OneWay) Close() error {
	if c, ok := o.R.(io.Closer); ok {
		return c.Close()
	}
	return nil
}
