package transfer

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"path"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// FuzzReadHeader: the server's header parser never panics, never accepts an
// invalid header, and what it accepts survives a round trip.
func FuzzReadHeader(f *testing.F) {
	var good bytes.Buffer
	writeHeader(&good, StreamHeader{Kind: "restore", ID: "abc", Compression: "adaptive", Size: 42, Meta: map[string]string{"name": "web"}})
	f.Add(good.Bytes())
	f.Add([]byte(streamMagic + "\x00\x00\x00\x02{}"))
	f.Add([]byte(streamMagic + "\xff\xff\xff\xff"))
	f.Add([]byte(streamMagic + "\x00\x00\x00\x10{\"kind\":\"../x\"}"))
	f.Add([]byte("ORCHSTR0\x00\x00\x00\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := readHeader(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrBadHeader) {
				t.Fatalf("error %v does not wrap ErrBadHeader", err)
			}
			return
		}
		if err := h.Validate(); err != nil {
			t.Fatalf("accepted invalid header %+v: %v", h, err)
		}
		var buf bytes.Buffer
		if err := writeHeader(&buf, h); err != nil {
			t.Fatalf("cannot re-encode accepted header %+v: %v", h, err)
		}
		h2, err := readHeader(&buf)
		if err != nil || h2.Kind != h.Kind || h2.ID != h.ID || len(h2.Meta) != len(h.Meta) {
			t.Fatalf("round trip: %+v -> %+v (%v)", h, h2, err)
		}
	})
}

// FuzzCheckName: an accepted name, and every path the spool resolver
// accepts, stays inside the spool.
func FuzzCheckName(f *testing.F) {
	for _, s := range []string{"a", "images/web.tar", "../x", "/etc/passwd", "a/../../b", "a/./b", "x.partial", "a\x00b", "..", "....", "a/..b/c", `a\..\b`, "/../../x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if CheckName(name) == nil {
			if strings.HasPrefix(name, "/") || strings.Contains(name, "..") && escapes(name) || path.Clean(name) != name {
				t.Fatalf("CheckName accepted %q", name)
			}
		}
		rel, err := spoolPath(name)
		if err != nil {
			if !errors.Is(err, ErrBadName) {
				t.Fatalf("spoolPath(%q) error %v does not wrap ErrBadName", name, err)
			}
			return
		}
		if rel != "." && (strings.HasPrefix(rel, "/") || escapes(rel) || path.Clean(rel) != rel) {
			t.Fatalf("spoolPath(%q) = %q escapes", name, rel)
		}
	})
}

func escapes(p string) bool {
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return true
		}
	}
	return false
}

// FuzzVerifyReader: arbitrary frame streams never panic, and the reader
// returns io.EOF only when the trailer matches what it yielded.
func FuzzVerifyReader(f *testing.F) {
	enc, _ := zstd.NewWriter(nil)
	good := func(data []byte, compress bool) []byte {
		var b bytes.Buffer
		if compress {
			writeFrame(&b, frameZstd, enc.EncodeAll(data, nil))
		} else {
			writeFrame(&b, frameRaw, data)
		}
		s := sha256.Sum256(data)
		writeFrame(&b, frameTrailer, trailerPayload(uint64(len(data)), s[:]))
		return b.Bytes()
	}
	f.Add(good([]byte("hello"), false))
	f.Add(good([]byte("hello hello hello hello"), true))
	f.Add(good(nil, false))
	f.Add([]byte{frameAbort, 0, 0, 0, 3, 'b', 'a', 'd'})
	f.Add([]byte{frameRaw, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{frameTrailer, 0, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxFrameBytes*2))
		if err != nil {
			t.Fatal(err)
		}
		defer dec.Close()
		vr := newVerifyReader(bytes.NewReader(data), dec)
		out, err := io.ReadAll(vr)
		if err == nil {
			// Verified: the trailer must describe exactly what came out.
			s := sha256.Sum256(out)
			if vr.n != uint64(len(out)) || !bytes.Contains(data, s[:]) {
				t.Fatalf("verified %d bytes without a matching trailer", len(out))
			}
			return
		}
		if !errors.Is(err, ErrVerify) {
			t.Fatalf("error %v does not wrap ErrVerify", err)
		}
	})
}

// FuzzPageLink feeds hostile bytes to the reading end of a page link: it
// must never panic, return more than it was given, or end cleanly unless
// the bytes were frames sealed with the link's key ending in an end frame;
// any other end is an authentication failure or a cut.
func FuzzPageLink(f *testing.F) {
	key := bytes.Repeat([]byte{3}, linkKeyLen)
	seal := func(write func(l *pageLink)) []byte {
		cc := &captureConn{}
		l, _ := newPageLink(cc, key, true)
		write(l)
		return cc.buf.Bytes()
	}
	f.Add(seal(func(l *pageLink) { l.Write([]byte("pages")); l.writeFrame(frameEnd, nil) }))
	f.Add(seal(func(l *pageLink) { l.Write(make([]byte, 5000)) }))
	f.Add(seal(func(l *pageLink) { l.writeFrame(frameHello, []byte("m1")) }))
	f.Add([]byte{frameData, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{frameEnd, 0, 0, 0, 16})
	f.Fuzz(func(t *testing.T, data []byte) {
		rc := &replayConn{r: bytes.NewReader(data)}
		l, err := newPageLink(rc, key, false)
		if err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(l)
		if len(out) > len(data) {
			t.Fatalf("read %d bytes from %d", len(out), len(data))
		}
		if err == nil {
			if l.rseq == 0 {
				t.Fatal("a clean end without a single sealed frame")
			}
			return
		}
		if !errors.Is(err, ErrLinkAuth) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("error %v is neither an authentication failure nor a cut", err)
		}
	})
}
