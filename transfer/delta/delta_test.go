package delta

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

// small parameters make many chunks out of test-sized inputs.
var small = Params{Pol: DefaultParams().Pol, Min: 64, Max: 1024, AvgBits: 7}

// pages makes n 4 KiB pages like the test workload's: half random, half zero.
func pages(rng *rand.Rand, n int) []byte {
	b := make([]byte, n*4096)
	for p := 0; p < n; p++ {
		for i := 0; i < 2048; i += 8 {
			binary.LittleEndian.PutUint64(b[p*4096+i:], rng.Uint64())
		}
	}
	return b
}

func encode(t testing.TB, base *Index, p Params, data []byte) ([]byte, *Encoder) {
	t.Helper()
	var out bytes.Buffer
	e, err := NewEncoderParams(&out, base, p)
	if err != nil {
		t.Fatal(err)
	}
	// Odd write sizes: the encoder must not depend on them.
	for rest := data; len(rest) > 0; {
		k := min(len(rest), 1+len(rest)%7919)
		if _, err := e.Write(rest[:k]); err != nil {
			t.Fatal(err)
		}
		rest = rest[k:]
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), e
}

func baseOf(data []byte) *Base {
	return &Base{R: bytes.NewReader(data), Size: int64(len(data)), Sum: sha256.Sum256(data)}
}

func decode(t testing.TB, d []byte, base *Base) []byte {
	t.Helper()
	var out bytes.Buffer
	n, err := Decode(&out, bytes.NewReader(d), base)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if n != int64(out.Len()) {
		t.Fatalf("decode returned %d, wrote %d", n, out.Len())
	}
	return out.Bytes()
}

// TestRoundTrip: rounds of a changing archive, each encoded against the
// previous one's index, always rebuild the exact bytes, and unchanged
// content is sent as references.
func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	cur := pages(rng, 512) // 2 MiB
	d, e := encode(t, nil, DefaultParams(), cur)
	if got := decode(t, d, nil); !bytes.Equal(got, cur) {
		t.Fatal("full round differs")
	}
	if st := e.Stats(); st.CopiedBytes != 0 || st.LiteralBytes != int64(len(cur)) {
		t.Fatalf("full round stats %+v", st)
	}
	ix := e.Index()
	if ix.Size() != int64(len(cur)) || ix.Sum() != sha256.Sum256(cur) {
		t.Fatal("index size or sum wrong")
	}
	for round, tc := range []struct {
		name   string
		mutate func([]byte) []byte
		maxLit float64 // at most this fraction sent as literals
	}{
		{"unchanged", func(b []byte) []byte { return b }, 0.01},
		{"10% of pages rewritten", func(b []byte) []byte {
			b = bytes.Clone(b)
			for k := 0; k < len(b)/4096/10; k++ {
				p := rng.IntN(len(b) / 4096)
				copy(b[p*4096:p*4096+2048], pages(rng, 1)[:2048])
			}
			return b
		}, 0.35},
		{"shifted by an insertion", func(b []byte) []byte {
			return append(append(append([]byte{}, b[:100000]...), []byte("a header CRIU grew")...), b[100000:]...)
		}, 0.02},
		{"truncated and appended", func(b []byte) []byte { return append(bytes.Clone(b[:len(b)/2]), pages(rng, 16)...) }, 0.07},
		{"empty", func([]byte) []byte { return nil }, 0},
		{"from empty", func([]byte) []byte { return pages(rng, 8) }, 1},
	} {
		next := tc.mutate(cur)
		d, e := encode(t, ix, DefaultParams(), next)
		got := decode(t, d, baseOf(cur))
		if !bytes.Equal(got, next) {
			t.Fatalf("round %d (%s): rebuilt bytes differ", round, tc.name)
		}
		st := e.Stats()
		if len(next) > 0 && float64(st.LiteralBytes) > tc.maxLit*float64(len(next)) {
			t.Errorf("%s: %d of %d bytes sent as literals", tc.name, st.LiteralBytes, len(next))
		}
		if st.CopiedBytes+st.LiteralBytes != int64(len(next)) {
			t.Errorf("%s: stats %+v do not add up to %d", tc.name, st, len(next))
		}
		t.Logf("%s: %d bytes, delta %d (%d literal, %d copy ops, %d literal ops)", tc.name, len(next), st.DeltaBytes, st.LiteralBytes, st.CopyOps, st.LiteralOps)
		cur, ix = next, e.Index()
	}
}

// TestRandomRoundTrip: random bases and random edits, with tiny chunks.
func TestRandomRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 200; i++ {
		base := make([]byte, rng.IntN(20000))
		for j := range base {
			base[j] = byte(rng.IntN(4)) // low entropy: many equal chunks
		}
		next := bytes.Clone(base)
		for k := rng.IntN(5); k > 0 && len(next) > 0; k-- {
			at := rng.IntN(len(next))
			switch rng.IntN(3) {
			case 0:
				next[at] ^= 0xff
			case 1:
				next = append(next[:at], next[min(len(next), at+rng.IntN(300)):]...)
			case 2:
				ins := make([]byte, rng.IntN(300))
				for j := range ins {
					ins[j] = byte(rng.Uint32())
				}
				next = append(next[:at], append(ins, next[at:]...)...)
			}
		}
		ix, err := NewIndex(bytes.NewReader(base), small)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := encode(t, ix, small, next)
		if got := decode(t, d, baseOf(base)); !bytes.Equal(got, next) {
			t.Fatalf("case %d: rebuilt bytes differ", i)
		}
	}
}

// TestAdversarial: a delta that is wrong in any way fails with the right
// sentinel and never passes as the archive.
func TestAdversarial(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	base := pages(rng, 64)
	next := bytes.Clone(base)
	copy(next[4096*10:], pages(rng, 3))
	ix, err := NewIndex(bytes.NewReader(base), DefaultParams())
	if err != nil {
		t.Fatal(err)
	}
	good, _ := encode(t, ix, DefaultParams(), next)
	other := bytes.Clone(base)
	other[5] ^= 1
	le := func(op byte, n uint32, rest ...byte) []byte {
		b := append([]byte{op}, binary.BigEndian.AppendUint32(nil, n)...)
		return append(b, rest...)
	}
	cp := func(off, n uint64) []byte {
		b := append([]byte{opCopy}, binary.BigEndian.AppendUint64(nil, off)...)
		return binary.BigEndian.AppendUint64(b, n)
	}
	hdr := good[:len(magic)+41]
	noBaseHdr := append([]byte(magic), make([]byte, 41)...)
	for _, tc := range []struct {
		name  string
		delta []byte
		base  *Base
		want  error
	}{
		{"empty input", nil, baseOf(base), ErrCorrupt},
		{"bad magic", append([]byte("ORCHDLT2"), good[8:]...), baseOf(base), ErrCorrupt},
		{"bad flags", append(append([]byte(magic), 7), good[9:]...), baseOf(base), ErrCorrupt},
		{"no base held", good, nil, ErrBase},
		{"other base", good, baseOf(other), ErrBase},
		{"short base", good, &Base{R: bytes.NewReader(base[:100]), Size: int64(len(base)), Sum: sha256.Sum256(base)}, ErrBase},
		{"truncated", good[:len(good)-50], baseOf(base), ErrCorrupt},
		{"cut in the end op", good[:len(good)-10], baseOf(base), ErrCorrupt},
		{"no end", good[:len(good)-41], baseOf(base), ErrCorrupt},
		{"trailing data", append(bytes.Clone(good), 0), baseOf(base), ErrCorrupt},
		{"unknown op", append(bytes.Clone(hdr), 'X'), baseOf(base), ErrCorrupt},
		{"copy past the base", append(bytes.Clone(hdr), cp(uint64(len(base))-10, 11)...), baseOf(base), ErrCorrupt},
		{"copy offset overflow", append(bytes.Clone(hdr), cp(^uint64(0)-5, 10)...), baseOf(base), ErrCorrupt},
		{"empty copy", append(bytes.Clone(hdr), cp(0, 0)...), baseOf(base), ErrCorrupt},
		{"copy without base", append(bytes.Clone(noBaseHdr), cp(0, 10)...), baseOf(base), ErrCorrupt},
		{"huge literal", append(bytes.Clone(hdr), le(opLiteral, 1<<31)...), baseOf(base), ErrCorrupt},
		{"empty literal", append(bytes.Clone(hdr), le(opLiteral, 0)...), baseOf(base), ErrCorrupt},
		{"literal cut", append(bytes.Clone(hdr), le(opLiteral, 100, 1, 2, 3)...), baseOf(base), ErrCorrupt},
		{"wrong size in end", func() []byte {
			b := bytes.Clone(good)
			b[len(b)-33]++
			return b
		}(), baseOf(base), ErrVerify},
		{"wrong sum in end", func() []byte {
			b := bytes.Clone(good)
			b[len(b)-1]++
			return b
		}(), baseOf(base), ErrVerify},
		{"literal byte flipped", func() []byte {
			b := bytes.Clone(good)
			i := bytes.IndexByte(b[len(hdr):], opLiteral) + len(hdr) + 5 + 100
			b[i] ^= 0x40
			return b
		}(), baseOf(base), ErrVerify},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(io.Discard, bytes.NewReader(tc.delta), tc.base)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			// The streaming reader reports the same failure instead of EOF.
			r := NewReader(bytes.NewReader(tc.delta), tc.base)
			defer r.Close()
			if _, err := io.ReadAll(r); !errors.Is(err, tc.want) {
				t.Fatalf("reader: got %v, want %v", err, tc.want)
			}
		})
	}
	r := NewReader(bytes.NewReader(good), baseOf(base))
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, next) {
		t.Fatalf("reader: %v, equal %v", err, bytes.Equal(got, next))
	}
}

func TestParams(t *testing.T) {
	if _, err := NewEncoderParams(io.Discard, nil, Params{Pol: DefaultParams().Pol, Min: 10, Max: 100, AvgBits: 4}); err == nil {
		t.Fatal("Min below the window accepted")
	}
	ix, _ := NewIndex(bytes.NewReader([]byte("abc")), small)
	if _, err := NewEncoderParams(io.Discard, ix, DefaultParams()); err == nil {
		t.Fatal("parameters unlike the base's accepted")
	}
}

// TestWriterError: a failing destination fails Write or Close, never hangs.
func TestWriterError(t *testing.T) {
	e, err := NewEncoder(failWriter{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	data := pages(rand.New(rand.NewPCG(7, 8)), 256)
	_, werr := e.Write(data)
	cerr := e.Close()
	if werr == nil && cerr == nil {
		t.Fatal("no error from a failing writer")
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

// FuzzDelta: for any base, any new bytes, and any one corruption of the
// delta, decoding yields exactly the new bytes or an error.
func FuzzDelta(f *testing.F) {
	f.Add([]byte("hello world, hello world, hello world"), []byte("hello there world, hello world"), uint16(0), byte(0))
	f.Add(bytes.Repeat([]byte{0}, 3000), bytes.Repeat([]byte{0, 1}, 2000), uint16(60), byte(1))
	f.Add([]byte{}, []byte("x"), uint16(9), byte(0x80))
	f.Fuzz(func(t *testing.T, base, next []byte, at uint16, flip byte) {
		ix, err := NewIndex(bytes.NewReader(base), small)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := encode(t, ix, small, next)
		if got := decode(t, d, baseOf(base)); !bytes.Equal(got, next) {
			t.Fatal("rebuilt bytes differ")
		}
		bad := bytes.Clone(d)
		if flip != 0 && int(at) < len(bad) {
			bad[at] ^= flip
		} else if int(at) < len(bad) {
			bad = bad[:at]
		}
		var out bytes.Buffer
		n, err := Decode(&out, bytes.NewReader(bad), baseOf(base))
		if err == nil && !bytes.Equal(out.Bytes(), next) {
			t.Fatalf("a corrupted delta decoded without error to other bytes (%d)", n)
		}
		if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrBase) && !errors.Is(err, ErrVerify) {
			t.Fatalf("error without a sentinel: %v", err)
		}
	})
}

// BenchmarkEncode: encoding speed on a workload-like 64 MiB archive with 10%
// of its pages rewritten (the final round runs while the container is
// frozen).
func BenchmarkEncode(b *testing.B) {
	rng := rand.New(rand.NewPCG(9, 10))
	base := pages(rng, 16384)
	ix, err := NewIndex(bytes.NewReader(base), DefaultParams())
	if err != nil {
		b.Fatal(err)
	}
	next := bytes.Clone(base)
	for k := 0; k < 1638; k++ {
		p := rng.IntN(16384)
		copy(next[p*4096:p*4096+2048], pages(rng, 1)[:2048])
	}
	b.SetBytes(int64(len(next)))
	b.ResetTimer()
	for range b.N {
		e, _ := NewEncoder(io.Discard, ix)
		_, _ = e.Write(next)
		if err := e.Close(); err != nil {
			b.Fatal(err)
		}
		if b.N == 1 {
			b.Logf("%+v", e.Stats())
		}
	}
}
