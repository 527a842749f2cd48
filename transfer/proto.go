package transfer

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/klauspost/compress/zstd"
)

// Sentinel errors that callers act on. Errors returned by this package wrap
// them together with the IDs involved; test with errors.Is.
var (
	// ErrVerify: the received data does not match what the sender hashed
	// (size or sha256), or the stream was cut or aborted before its trailer.
	// Nothing built from it may be kept.
	ErrVerify = errors.New("transfer verification failed")
	// ErrUnknownHost: no host key is known for the peer.
	ErrUnknownHost = errors.New("unknown host key")
	// ErrHostKeyMismatch: the peer presented a key other than the one the
	// cluster published for it.
	ErrHostKeyMismatch = errors.New("host key mismatch")
	// ErrUnauthorized: the peer refused our client key (the cluster has not
	// yet published it to that peer, or it was revoked).
	ErrUnauthorized = errors.New("client key not authorised by peer")
	// ErrBadName: a remote name is empty, absolute, contains "..", or would
	// otherwise leave the spool directory.
	ErrBadName = errors.New("bad transfer name")
	// ErrBadHeader: a stream header is malformed or too large.
	ErrBadHeader = errors.New("bad stream header")
	// ErrNoHandler: the server has no handler for the stream's kind.
	ErrNoHandler = errors.New("no handler for stream kind")
	// ErrRemote: the receiving handler failed; the error text is the
	// remote's.
	ErrRemote = errors.New("remote handler failed")
	// ErrNoSpace: the receiver's disk is full (ENOSPC).
	ErrNoSpace = errors.New("no space left on receiver")
	// ErrPeerClosed: the peer closed the connection or channel before the
	// transfer completed.
	ErrPeerClosed = errors.New("peer closed connection")
	// ErrStalled: no byte of a stream arrived for the server's
	// StallTimeout; the stream failed (with ErrVerify too).
	ErrStalled = errors.New("stream stalled")
	// ErrTooLarge: a stream or upload exceeded the receiver's size limit.
	ErrTooLarge = errors.New("transfer too large")
)

// StreamChannelType is the SSH channel type that carries streams.
const StreamChannelType = "orchestrate-stream"

// hashRequestType is the global request our server answers with the sha256
// of a spool file; stock sshd rejects it, and the client then reads back.
const hashRequestType = "sha256@orchestrate"

const (
	streamMagic = "ORCHSTR1"

	maxHeaderBytes = 64 << 10
	maxMetaEntries = 64
	maxKindLen     = 64
	maxIDLen       = 256
	maxFrameBytes  = 8 << 20 // payload cap; chunks are at most 4 MiB raw
	maxChunkBytes  = 4 << 20
	maxReplyBytes  = 1 << 20
	trailerLen     = 8 + sha256.Size

	frameRaw     byte = 'R'
	frameZstd    byte = 'Z'
	frameAbort   byte = 'A'
	frameTrailer byte = 'T'

	replyOK  byte = 'K'
	replyErr byte = 'E'
)

// StreamHeader is what the sender says about a stream before its data.
type StreamHeader struct {
	// Kind selects the server's handler, e.g. "restore". Lower-case
	// letters, digits, '.', '_' and '-'; at most 64 bytes.
	Kind string `json:"kind"`
	// ID names what is being sent (a container or migration ID), for logs
	// and errors. Printable, at most 256 bytes.
	ID string `json:"id"`
	// Compression is what the sender intends: "none", "zstd" or
	// "adaptive". Informational: every frame says how it is encoded.
	Compression string `json:"compression,omitempty"`
	// Size is the uncompressed size when the sender knows it, else 0. Only
	// for progress; the trailer is authoritative.
	Size int64 `json:"size,omitempty"`
	// Meta carries small caller-defined values (e.g. restore options).
	Meta map[string]string `json:"meta,omitempty"`
}

// Validate reports whether h is acceptable on the wire.
func (h StreamHeader) Validate() error {
	if h.Kind == "" || len(h.Kind) > maxKindLen {
		return fmt.Errorf("%w: kind length %d", ErrBadHeader, len(h.Kind))
	}
	for _, r := range h.Kind {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("%w: kind %q", ErrBadHeader, h.Kind)
		}
	}
	if len(h.ID) > maxIDLen || !printable(h.ID) {
		return fmt.Errorf("%w: id %q", ErrBadHeader, h.ID)
	}
	if h.Size < 0 {
		return fmt.Errorf("%w: negative size", ErrBadHeader)
	}
	if len(h.Meta) > maxMetaEntries {
		return fmt.Errorf("%w: %d meta entries", ErrBadHeader, len(h.Meta))
	}
	for k, v := range h.Meta {
		if k == "" || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("%w: meta key %q", ErrBadHeader, k)
		}
	}
	return nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// writeHeader writes magic, length and JSON header.
func writeHeader(w io.Writer, h StreamHeader) error {
	if err := h.Validate(); err != nil {
		return err
	}
	body, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if len(body) > maxHeaderBytes {
		return fmt.Errorf("%w: %d bytes", ErrBadHeader, len(body))
	}
	buf := make([]byte, 0, len(streamMagic)+4+len(body))
	buf = append(buf, streamMagic...)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(body)))
	buf = append(buf, body...)
	_, err = w.Write(buf)
	return err
}

// readHeader reads and validates a header. It never reads past the header.
func readHeader(r io.Reader) (StreamHeader, error) {
	var pre [len(streamMagic) + 4]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return StreamHeader{}, fmt.Errorf("%w: %v", ErrBadHeader, err)
	}
	if string(pre[:len(streamMagic)]) != streamMagic {
		return StreamHeader{}, fmt.Errorf("%w: bad magic", ErrBadHeader)
	}
	n := binary.BigEndian.Uint32(pre[len(streamMagic):])
	if n > maxHeaderBytes {
		return StreamHeader{}, fmt.Errorf("%w: %d bytes", ErrBadHeader, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return StreamHeader{}, fmt.Errorf("%w: %v", ErrBadHeader, err)
	}
	var h StreamHeader
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return StreamHeader{}, fmt.Errorf("%w: %v", ErrBadHeader, err)
	}
	if dec.More() {
		return StreamHeader{}, fmt.Errorf("%w: trailing data", ErrBadHeader)
	}
	if err := h.Validate(); err != nil {
		return StreamHeader{}, err
	}
	return h, nil
}

// writeFrame writes one frame. The caller keeps payloads under maxFrameBytes.
func writeFrame(w io.Writer, typ byte, payload []byte) error {
	var pre [5]byte
	pre[0] = typ
	binary.BigEndian.PutUint32(pre[1:], uint32(len(payload)))
	if _, err := w.Write(pre[:]); err != nil {
		return err
	}
	if len(payload) == 0 {
		return nil
	}
	_, err := w.Write(payload)
	return err
}

func trailerPayload(size uint64, sum []byte) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, trailerLen), size)
	return append(b, sum...)
}

// verifyReader turns the frames of one stream back into the sender's bytes.
// It hashes and counts what it yields; at the trailer it returns io.EOF only
// if both match, and otherwise an error wrapping ErrVerify. Any other end
// (cut, abort, bad frame) is also an ErrVerify error, so a consumer never
// mistakes a partial stream for a whole one. Not safe for concurrent use.
type verifyReader struct {
	r      io.Reader // the channel (buffered)
	dec    *zstd.Decoder
	hash   hash.Hash
	n      uint64
	wire   uint64
	buf    []byte // decoded bytes not yet returned
	scrap  []byte // reusable frame buffer
	err    error  // sticky terminal result (io.EOF or ErrVerify)
	max    uint64 // bytes the stream may carry; 0: no limit
	onDone func(error)
	// compressed counts zstd frames, raw counts raw frames (for stats).
	compressed, raw int
}

func newVerifyReader(r io.Reader, dec *zstd.Decoder) *verifyReader {
	return &verifyReader{r: r, dec: dec, hash: sha256.New()}
}

func (v *verifyReader) Read(p []byte) (int, error) {
	for len(v.buf) == 0 {
		if v.err != nil {
			return 0, v.err
		}
		v.next()
	}
	n := copy(p, v.buf)
	v.buf = v.buf[n:]
	return n, nil
}

func (v *verifyReader) fail(format string, args ...any) {
	v.finish(fmt.Errorf("%w: "+format, append([]any{ErrVerify}, args...)...))
}

func (v *verifyReader) finish(err error) {
	if v.err != nil {
		return
	}
	v.err = err
	if v.onDone != nil {
		v.onDone(err)
	}
}

// cut ends the stream after a read error, keeping ErrStalled visible.
func (v *verifyReader) cut(err error) {
	if errors.Is(err, ErrStalled) {
		v.finish(fmt.Errorf("%w: stream cut after %d bytes: %w", ErrVerify, v.n, err))
		return
	}
	v.fail("stream cut after %d bytes: %v", v.n, err)
}

// next reads one frame into v.buf or sets v.err.
func (v *verifyReader) next() {
	var pre [5]byte
	if _, err := io.ReadFull(v.r, pre[:]); err != nil {
		v.cut(err)
		return
	}
	n := binary.BigEndian.Uint32(pre[1:])
	if n > maxFrameBytes {
		v.fail("frame of %d bytes", n)
		return
	}
	if cap(v.scrap) < int(n) {
		v.scrap = make([]byte, n)
	}
	payload := v.scrap[:n]
	if _, err := io.ReadFull(v.r, payload); err != nil {
		v.cut(err)
		return
	}
	v.wire += uint64(n) + 5
	switch pre[0] {
	case frameRaw:
		v.raw++
		v.buf = payload
	case frameZstd:
		if v.dec == nil {
			v.fail("compressed frame but no decoder")
			return
		}
		v.compressed++
		out, err := v.dec.DecodeAll(payload, nil)
		if err != nil {
			v.fail("decompress after %d bytes: %v", v.n, err)
			return
		}
		if len(out) > maxChunkBytes {
			v.fail("chunk of %d bytes", len(out))
			return
		}
		v.buf = out
	case frameAbort:
		v.fail("sender aborted after %d bytes: %.200q", v.n, payload)
		return
	case frameTrailer:
		if n != trailerLen {
			v.fail("trailer of %d bytes", n)
			return
		}
		size := binary.BigEndian.Uint64(payload[:8])
		sum := v.hash.Sum(nil)
		switch {
		case size != v.n:
			v.fail("size %d, sender sent %d", v.n, size)
		case !bytes.Equal(sum, payload[8:]):
			v.fail("sha256 %x, sender hashed %x", sum, payload[8:])
		default:
			v.finish(io.EOF)
		}
		return
	default:
		v.fail("unknown frame type %#x", pre[0])
		return
	}
	if v.max > 0 && v.n+uint64(len(v.buf)) > v.max {
		v.buf = nil
		v.finish(fmt.Errorf("%w: %w: more than %d bytes", ErrVerify, ErrTooLarge, v.max))
		return
	}
	v.n += uint64(len(v.buf))
	v.hash.Write(v.buf)
}

// drain reads to the end and reports whether the stream verified.
func (v *verifyReader) drain() error {
	_, err := io.Copy(io.Discard, v)
	if err == nil && errors.Is(v.err, io.EOF) {
		return nil
	}
	if err == nil {
		err = v.err
	}
	return err
}

// CheckName validates a remote (spool) name: a relative, clean, slash-
// separated path with no "..", no empty or "." elements, no NUL or control
// characters, and not ending in ".partial" (reserved for uploads in flight).
// The server additionally resolves names through os.Root, so symlinks cannot
// lead out of the spool either.
func CheckName(name string) error {
	if name == "" || len(name) > 1024 || !printable(name) {
		return fmt.Errorf("%w: %q", ErrBadName, name)
	}
	if strings.HasPrefix(name, "/") || strings.Contains(name, `\`) {
		return fmt.Errorf("%w: %q: must be relative", ErrBadName, name)
	}
	for _, el := range strings.Split(name, "/") {
		if el == "" || el == "." || el == ".." {
			return fmt.Errorf("%w: %q", ErrBadName, name)
		}
	}
	if strings.HasSuffix(name, partialSuffix) {
		return fmt.Errorf("%w: %q: %s is reserved", ErrBadName, name, partialSuffix)
	}
	return nil
}

const partialSuffix = ".partial"
