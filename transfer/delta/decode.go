package delta

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Base is the decoder's copy of an earlier archive.
type Base struct {
	R    io.ReaderAt
	Size int64
	Sum  [32]byte
}

// Decode rebuilds the archive src describes into dst and returns its size.
// base may be nil when the delta has no base. On error dst may have received
// part of the bytes; the error wraps ErrCorrupt, ErrBase, ErrVerify, or is
// the reader's or writer's own.
func Decode(dst io.Writer, src io.Reader, base *Base) (int64, error) {
	br := bufio.NewReaderSize(src, 256<<10)
	hdr := make([]byte, len(magic)+1+32+8)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return 0, fmt.Errorf("%w: header: %w", ErrCorrupt, unexpected(err))
	}
	if string(hdr[:len(magic)]) != magic {
		return 0, fmt.Errorf("%w: not a delta (magic %q)", ErrCorrupt, hdr[:len(magic)])
	}
	var want Base
	hasBase := false
	switch hdr[len(magic)] {
	case 0:
	case flagBase:
		hasBase = true
		copy(want.Sum[:], hdr[len(magic)+1:])
		want.Size = int64(binary.BigEndian.Uint64(hdr[len(magic)+33:]))
	default:
		return 0, fmt.Errorf("%w: unknown flags %#x", ErrCorrupt, hdr[len(magic)])
	}
	if hasBase {
		if base == nil || base.R == nil {
			return 0, fmt.Errorf("%w: the delta needs base %x (%d bytes), and there is none", ErrBase, want.Sum[:8], want.Size)
		}
		if base.Sum != want.Sum || base.Size != want.Size {
			return 0, fmt.Errorf("%w: the delta needs base %x (%d bytes), have %x (%d bytes)", ErrBase, want.Sum[:8], want.Size, base.Sum[:8], base.Size)
		}
	}
	h := sha256.New()
	out := io.MultiWriter(dst, h)
	var n int64
	var op [17]byte
	cbuf := make([]byte, 256<<10)
	for {
		t, err := br.ReadByte()
		if err != nil {
			return n, fmt.Errorf("%w: no end after %d bytes: %w", ErrCorrupt, n, unexpected(err))
		}
		switch t {
		case opCopy:
			if _, err := io.ReadFull(br, op[1:17]); err != nil {
				return n, fmt.Errorf("%w: copy op: %w", ErrCorrupt, unexpected(err))
			}
			if !hasBase {
				return n, fmt.Errorf("%w: copy op in a delta without a base", ErrCorrupt)
			}
			off, ln := binary.BigEndian.Uint64(op[1:]), binary.BigEndian.Uint64(op[9:])
			if ln == 0 || off > uint64(want.Size) || ln > uint64(want.Size)-off {
				return n, fmt.Errorf("%w: copy of %d bytes at %d outside the base of %d bytes", ErrCorrupt, ln, off, want.Size)
			}
			m, err := io.CopyBuffer(out, io.NewSectionReader(base.R, int64(off), int64(ln)), cbuf)
			n += m
			if err != nil {
				return n, fmt.Errorf("copy %d bytes at %d from the base: %w", ln, off, err)
			}
			if m != int64(ln) {
				return n, fmt.Errorf("%w: the base is shorter than it claims (%d of %d bytes at %d)", ErrBase, m, ln, off)
			}
		case opLiteral:
			if _, err := io.ReadFull(br, op[1:5]); err != nil {
				return n, fmt.Errorf("%w: literal op: %w", ErrCorrupt, unexpected(err))
			}
			ln := binary.BigEndian.Uint32(op[1:])
			if ln == 0 || ln > MaxLiteral {
				return n, fmt.Errorf("%w: literal of %d bytes (1..%d allowed)", ErrCorrupt, ln, MaxLiteral)
			}
			m, err := io.CopyBuffer(out, io.LimitReader(br, int64(ln)), cbuf)
			n += m
			if err != nil {
				return n, err
			}
			if m != int64(ln) {
				return n, fmt.Errorf("%w: literal cut after %d of %d bytes", ErrCorrupt, m, ln)
			}
		case opEnd:
			if _, err := io.ReadFull(br, op[1:9]); err != nil {
				return n, fmt.Errorf("%w: end op: %w", ErrCorrupt, unexpected(err))
			}
			var sum [32]byte
			if _, err := io.ReadFull(br, sum[:]); err != nil {
				return n, fmt.Errorf("%w: end op: %w", ErrCorrupt, unexpected(err))
			}
			if _, err := br.ReadByte(); err != io.EOF {
				if err == nil {
					err = errors.New("data after the end")
				}
				return n, fmt.Errorf("%w: %w", ErrCorrupt, err)
			}
			size := int64(binary.BigEndian.Uint64(op[1:]))
			got := h.Sum(nil)
			if size != n || !bytes.Equal(got, sum[:]) {
				return n, fmt.Errorf("%w: rebuilt %d bytes sha256 %x, the sender stated %d bytes sha256 %x", ErrVerify, n, got[:8], size, sum[:8])
			}
			return n, nil
		default:
			return n, fmt.Errorf("%w: unknown op %#x after %d bytes", ErrCorrupt, t, n)
		}
	}
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// NewReader returns the rebuilt archive as a stream, decoded on a goroutine
// it owns. Reading it yields io.EOF only once the whole delta was verified;
// any failure is returned in its place. Close stops the decoder early.
func NewReader(src io.Reader, base *Base) io.ReadCloser {
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := Decode(pw, src, base)
		pw.CloseWithError(err) // nil: io.EOF for the reader
	}()
	return &reader{pr: pr, done: done}
}

type reader struct {
	pr   *io.PipeReader
	done chan struct{}
}

func (r *reader) Read(b []byte) (int, error) { return r.pr.Read(b) }

// Close stops the decoder and waits for its goroutine.
func (r *reader) Close() error {
	r.pr.CloseWithError(errors.New("delta reader closed"))
	<-r.done
	return nil
}
