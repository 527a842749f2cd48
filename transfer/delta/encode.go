package delta

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/restic/chunker"
)

// Stats count what one Encoder wrote.
type Stats struct {
	Bytes        int64 // the new archive's size
	CopiedBytes  int64 // bytes referenced in the base (not sent)
	LiteralBytes int64 // bytes sent as literals
	DeltaBytes   int64 // the encoded delta's size
	Chunks       int   // chunks cut
	CopyChunks   int   // of which found in the base
	CopyOps      int   // copy ops after merging neighbours
	LiteralOps   int
}

// Encoder is the io.WriteCloser the new archive is written into; the delta
// goes to the writer given to NewEncoder as chunks are cut (a goroutine the
// Encoder owns runs the chunker). Close must be called, also after an error:
// it ends the goroutine, writes the end op, and returns the first error.
type Encoder struct {
	base *Index
	out  *bufio.Writer
	cw   *countWriter
	p    Params

	pw   *io.PipeWriter
	done chan struct{}
	err  error // the chunker goroutine's, read after done

	h      hash.Hash
	next   *Index
	st     Stats
	copyOn bool // a copy op is pending
	copy   span
	lit    []byte

	closeOnce sync.Once
	closeErr  error
}

// NewEncoder returns an Encoder writing a delta against base to w. A nil
// base makes a delta of literals only (a full first transfer that still
// builds the index for the next round); it uses DefaultParams.
func NewEncoder(w io.Writer, base *Index) (*Encoder, error) {
	p := DefaultParams()
	if base != nil {
		p = base.p
	}
	return NewEncoderParams(w, base, p)
}

// NewEncoderParams is NewEncoder with explicit chunking parameters, which
// must equal base's when base is not nil.
func NewEncoderParams(w io.Writer, base *Index, p Params) (*Encoder, error) {
	if err := p.valid(); err != nil {
		return nil, err
	}
	if base != nil && base.p != p {
		return nil, errors.New("delta: parameters differ from the base index's")
	}
	cw := &countWriter{w: w}
	e := &Encoder{
		base: base, cw: cw, out: bufio.NewWriterSize(cw, 256<<10), p: p,
		done: make(chan struct{}), h: sha256.New(),
		next: &Index{p: p, chunks: map[[32]byte]span{}},
	}
	hdr := make([]byte, 0, len(magic)+1+32+8)
	hdr = append(hdr, magic...)
	if base != nil {
		hdr = append(hdr, flagBase)
		hdr = append(hdr, base.sum[:]...)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(base.size))
	} else {
		hdr = append(hdr, 0)
		hdr = append(hdr, make([]byte, 32+8)...)
	}
	if _, err := e.out.Write(hdr); err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	e.pw = pw
	go e.run(pr)
	return e, nil
}

// Write feeds the new archive. The whole-archive hash runs here, on the
// caller's goroutine, in parallel with the chunker's.
func (e *Encoder) Write(b []byte) (int, error) {
	n, err := e.pw.Write(b)
	e.h.Write(b[:n])
	return n, err
}

// Close finishes the delta (end op, flush) and returns the first error of
// reading, chunking or writing. Safe to call more than once.
func (e *Encoder) Close() error {
	e.closeOnce.Do(func() {
		_ = e.pw.Close()
		<-e.done
		err := e.err
		if err == nil {
			err = e.finish()
		}
		e.closeErr = err
	})
	return e.closeErr
}

// CloseWithError abandons the delta: the goroutine ends and Close returns err.
func (e *Encoder) CloseWithError(err error) {
	e.closeOnce.Do(func() {
		_ = e.pw.CloseWithError(err)
		<-e.done
		e.closeErr = err
	})
}

// Stats are final after Close.
func (e *Encoder) Stats() Stats { return e.st }

// Index is the new archive's index, the base of the next round. Valid only
// after a successful Close.
func (e *Encoder) Index() *Index { return e.next }

func (e *Encoder) run(pr *io.PipeReader) {
	defer close(e.done)
	c := chunker.NewWithBoundaries(pr, e.p.Pol, e.p.Min, e.p.Max)
	c.SetAverageBits(e.p.AvgBits)
	buf := make([]byte, 0, e.p.Max)
	var off int64
	for {
		ch, err := c.Next(buf)
		if err == io.EOF {
			return
		}
		if err != nil {
			e.err = err
			pr.CloseWithError(err)
			return
		}
		if err := e.chunk(ch.Data, off); err != nil {
			e.err = err
			pr.CloseWithError(err)
			return
		}
		off += int64(len(ch.Data))
		buf = ch.Data[:0]
	}
}

func (e *Encoder) chunk(data []byte, off int64) error {
	sum := sha256.Sum256(data)
	n := int64(len(data))
	e.st.Chunks++
	e.st.Bytes += n
	if _, ok := e.next.chunks[sum]; !ok {
		e.next.chunks[sum] = span{off, n}
	}
	if e.base != nil {
		if sp, ok := e.base.chunks[sum]; ok && sp.n == n {
			e.st.CopyChunks++
			e.st.CopiedBytes += n
			if e.copyOn && e.copy.off+e.copy.n == sp.off {
				e.copy.n += n
				return nil
			}
			if err := e.flush(); err != nil {
				return err
			}
			e.copyOn, e.copy = true, sp
			return nil
		}
	}
	e.st.LiteralBytes += n
	if e.copyOn {
		if err := e.flush(); err != nil {
			return err
		}
	}
	for len(data) > 0 {
		k := min(len(data), MaxLiteral-len(e.lit))
		e.lit = append(e.lit, data[:k]...)
		data = data[k:]
		if len(e.lit) == MaxLiteral {
			if err := e.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// flush writes the pending op, if any.
func (e *Encoder) flush() error {
	var hdr [17]byte
	switch {
	case e.copyOn:
		hdr[0] = opCopy
		binary.BigEndian.PutUint64(hdr[1:], uint64(e.copy.off))
		binary.BigEndian.PutUint64(hdr[9:], uint64(e.copy.n))
		e.copyOn = false
		e.st.CopyOps++
		_, err := e.out.Write(hdr[:17])
		return err
	case len(e.lit) > 0:
		hdr[0] = opLiteral
		binary.BigEndian.PutUint32(hdr[1:], uint32(len(e.lit)))
		e.st.LiteralOps++
		if _, err := e.out.Write(hdr[:5]); err != nil {
			return err
		}
		_, err := e.out.Write(e.lit)
		e.lit = e.lit[:0]
		return err
	}
	return nil
}

func (e *Encoder) finish() error {
	if err := e.flush(); err != nil {
		return err
	}
	copy(e.next.sum[:], e.h.Sum(nil))
	e.next.size = e.st.Bytes
	end := make([]byte, 0, 41)
	end = append(end, opEnd)
	end = binary.BigEndian.AppendUint64(end, uint64(e.st.Bytes))
	end = append(end, e.next.sum[:]...)
	if _, err := e.out.Write(end); err != nil {
		return err
	}
	if err := e.out.Flush(); err != nil {
		return err
	}
	e.st.DeltaBytes = e.cw.n
	return nil
}

// NewIndex chunks r and returns its index (for an archive the receiver got
// some other way). Encoders build their archive's index as they go.
func NewIndex(r io.Reader, p Params) (*Index, error) {
	e, err := NewEncoderParams(io.Discard, nil, p)
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(e, r); err != nil {
		e.CloseWithError(err)
		return nil, fmt.Errorf("index: %w", err)
	}
	if err := e.Close(); err != nil {
		return nil, err
	}
	return e.Index(), nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}
