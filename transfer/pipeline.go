package transfer

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// pipeline is one stream's sending side:
//
//	produce goroutine: caller's func -> chunkWriter (hash, decide) -> jobs/order
//	worker goroutines: compress the chunks that were marked for it
//	send (caller's goroutine): frames in order -> limiter -> SSH channel
//
// The order channel is bounded, so a slow link or compressor pushes back on
// the producer (the engine) instead of buffering the checkpoint in memory.
type pipeline struct {
	ctx   context.Context
	c     *Client
	link  *linkStats
	comp  Compression
	prog  *progressTracker
	order chan *chunk
	jobs  chan *chunk
	quit  chan struct{} // closed when send gives up
	qonce sync.Once
	wg    sync.WaitGroup
	pool  sync.Pool

	// Adaptive mode's current measurement window (send goroutine only):
	// chunks sent in one mode, timed from the first's completion.
	winMode          bool
	winN             int
	winBytes         int64
	winStart, winEnd time.Time

	// Written by the producer goroutine, read after wait().
	prodErr error
	sum     []byte
	stats   StreamStats
}

type chunk struct {
	data     []byte // uncompressed, from pool
	out      []byte // compressed, when compress
	compress bool
	decided  bool // adaptive mode's choice (compress may turn false if incompressible)
	done     chan struct{}
}

func newPipeline(ctx context.Context, c *Client, slot *peerSlot, h StreamHeader, peer string) *pipeline {
	comp := c.cfg.Compression
	workers := comp.workers()
	p := &pipeline{
		ctx: ctx, c: c, link: &slot.link, comp: comp,
		prog:  newProgress(c.cfg.Progress, c.cfg.progressEvery, "stream", h.ID, peer, h.Size),
		order: make(chan *chunk, workers*2),
		jobs:  make(chan *chunk, workers*2),
		quit:  make(chan struct{}),
	}
	size := c.cfg.ChunkSize
	p.pool.New = func() any { b := make([]byte, 0, size); return &b }
	if comp.Mode != CompressNone {
		for range workers {
			p.wg.Add(1)
			go p.worker()
		}
	}
	return p
}

func (p *pipeline) stop() { p.qonce.Do(func() { close(p.quit) }) }

// wait returns once the producer and the workers have exited.
func (p *pipeline) wait() {
	p.stop()
	p.wg.Wait()
}

func (p *pipeline) worker() {
	defer p.wg.Done()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(p.comp.level())),
		zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
	for ch := range p.jobs {
		if err != nil { // cannot happen with valid options; send raw
			ch.compress = false
			close(ch.done)
			continue
		}
		ch.out = enc.EncodeAll(ch.data, ch.out[:0])
		if len(ch.out) >= len(ch.data) {
			ch.compress = false // incompressible: raw is smaller
		}
		close(ch.done)
	}
	if enc != nil {
		enc.Close()
	}
}

func (p *pipeline) produce(fn func(io.Writer) error) {
	defer p.wg.Done() // Add is the caller's, before the goroutine starts
	cw := &chunkWriter{p: p, h: sha256.New()}
	err := fn(cw)
	if err == nil {
		err = cw.flush()
	}
	close(p.jobs)
	close(p.order)
	if err != nil && cw.sendErr != nil && errors.Is(err, cw.sendErr) {
		err = nil // the send side failed first; it reports why
	}
	p.prodErr = err
	p.sum = cw.h.Sum(nil)
	p.stats.Bytes = cw.n
	p.stats.SHA256 = hexSum(p.sum)
}

// chunkWriter is the io.Writer the caller's produce func writes to.
type chunkWriter struct {
	p       *pipeline
	h       hash.Hash
	n       int64
	cur     []byte
	sendErr error
}

func (w *chunkWriter) Write(b []byte) (int, error) {
	if w.sendErr != nil {
		return 0, w.sendErr
	}
	size := w.p.c.cfg.ChunkSize
	written := 0
	for len(b) > 0 {
		if w.cur == nil {
			w.cur = (*w.p.pool.Get().(*[]byte))[:0]
		}
		n := min(len(b), size-len(w.cur))
		w.cur = append(w.cur, b[:n]...)
		b = b[n:]
		written += n
		if len(w.cur) == size {
			if err := w.flush(); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

func (w *chunkWriter) flush() error {
	if len(w.cur) == 0 {
		return nil
	}
	data := w.cur
	w.cur = nil
	w.h.Write(data)
	w.n += int64(len(data))
	ch := &chunk{data: data, done: make(chan struct{})}
	switch w.p.comp.Mode {
	case CompressZstd:
		ch.compress = true
	case CompressAdaptive:
		ch.compress = w.p.link.decide()
	}
	ch.decided = ch.compress
	if !ch.compress {
		close(ch.done)
	}
	select {
	case w.p.order <- ch:
	case <-w.p.quit:
		w.sendErr = errSendStopped
		return w.sendErr
	case <-w.p.ctx.Done():
		w.sendErr = w.p.ctx.Err()
		return w.sendErr
	}
	if ch.compress {
		select {
		case w.p.jobs <- ch:
		case <-w.p.quit:
			ch.compress = false // no worker will see it; send drains it
			close(ch.done)
			w.sendErr = errSendStopped
			return w.sendErr
		}
	}
	return nil
}

var errSendStopped = errors.New("stream send stopped")

// keepaliveEvery: after this long without a frame the sender sends an empty
// one. Receivers of every version read it as zero bytes of data.
var keepaliveEvery = time.Second

// send writes chunks in order until the producer is done. On error it stops
// the pipeline and returns.
func (p *pipeline) send(w io.Writer) error {
	var err error
	tick := time.NewTicker(keepaliveEvery)
	defer tick.Stop()
	last := time.Now()
sending:
	for {
		var ch *chunk
		select {
		case c, ok := <-p.order:
			if !ok {
				break sending
			}
			ch = c
		case <-tick.C:
			if err == nil && time.Since(last) >= keepaliveEvery {
				// An empty frame: the receiver's stall timer sees a live
				// sender while produce is silent (a dump in progress).
				if err = writeFrame(w, frameRaw, nil); err != nil {
					p.stop()
				}
				last = time.Now()
			}
			continue
		}
		last = time.Now()
		if err == nil {
			err = p.sendChunk(w, ch)
			if err != nil {
				p.stop()
			}
		}
		if err != nil {
			// keep draining so the producer can finish, but wait for
			// workers to give the chunk back first.
			<-ch.done
		}
		p.release(ch)
	}
	if err == nil {
		p.closeWindow()
		p.prog.report(true)
	}
	p.stats.Compression = p.describe()
	return err
}

func (p *pipeline) sendChunk(w io.Writer, ch *chunk) error {
	select {
	case <-ch.done:
	case <-p.ctx.Done():
		<-ch.done
		return p.ctx.Err()
	}
	typ, payload := frameRaw, ch.data
	if ch.compress {
		typ, payload = frameZstd, ch.out
		p.stats.ZstdChunks++
	} else {
		p.stats.RawChunks++
	}
	if hook := p.c.cfg.testHookFrame; hook != nil {
		hook(typ, payload)
	}
	if err := p.c.limit.wait(p.ctx, len(payload)+5); err != nil {
		return err
	}
	if err := writeFrame(w, typ, payload); err != nil {
		return err
	}
	if p.comp.Mode == CompressAdaptive {
		p.measure(ch, time.Now())
	}
	p.stats.WireBytes += int64(len(payload) + 5)
	p.prog.add(len(ch.data))
	p.stats.Compression = p.describe()
	return nil
}

// measure adds a sent chunk to the current window, closing the window when
// the mode changes or it is full.
func (p *pipeline) measure(ch *chunk, now time.Time) {
	if p.winN > 0 && (ch.decided != p.winMode || p.winN >= adaptiveWindow) {
		p.closeWindow()
	}
	if p.winN == 0 {
		p.winMode, p.winStart, p.winBytes = ch.decided, now, 0
	} else {
		p.winBytes += int64(len(ch.data))
		p.winEnd = now
	}
	p.winN++
}

func (p *pipeline) closeWindow() {
	if p.winN >= 2 {
		p.link.observe(p.winMode, p.winBytes, p.winEnd.Sub(p.winStart))
	}
	p.winN = 0
}

func (p *pipeline) release(ch *chunk) {
	b := ch.data[:0]
	p.pool.Put(&b)
}

func (p *pipeline) describe() string {
	switch p.comp.Mode {
	case CompressNone:
		return "none"
	case CompressZstd:
		return fmt.Sprintf("zstd-%d", p.comp.level())
	}
	total := p.stats.ZstdChunks + p.stats.RawChunks
	return fmt.Sprintf("adaptive: zstd-%d on %d/%d chunks", p.comp.level(), p.stats.ZstdChunks, total)
}
