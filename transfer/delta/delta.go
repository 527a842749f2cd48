// Package delta owns the chunk-delta codec that content-based pre-copy uses:
// it describes a new byte stream (a checkpoint archive) as references into
// an older one the receiver already holds, plus the bytes it lacks.
//
// Data flow. The sender cuts every archive it sends into content-defined
// chunks (restic's Rabin chunker, so an insertion or a shifted layout moves
// the cuts with the content) and keeps an Index of them: sha256 of each chunk
// and where it lies. Encoding the next archive against that Index writes a
// copy op for each chunk the receiver already has and a literal op for the
// rest, merging neighbours; the Encoder's own Index of the new archive is the
// base for the round after. The receiver decodes with random access to its
// copy of the base (Decode, NewReader) and rebuilds the archive byte for byte.
// The sender never needs the old bytes, only their Index.
//
// Every delta ends with the new archive's size and sha256; the decoder
// checks both, and that the base it was given is the one the delta was made
// against. A decode therefore yields exactly the sender's bytes or fails with
// an error wrapping ErrCorrupt, ErrBase or ErrVerify; a reader returned by
// NewReader reports that error in place of io.EOF, so a consumer such as
// engine.Restorer fails and creates nothing.
//
// Wire format (integers big-endian):
//
//	"ORCHDLT1" | u8 flags (1: has base) | 32-byte base sha256 | u64 base size
//	ops:  'C' u64 offset u64 length      copy from the base
//	      'L' u32 n, n bytes             literal bytes (n <= MaxLiteral)
//	      'E' u64 size, 32-byte sha256   end: the rebuilt stream's size and hash
//
// The package imports nothing from orchestrate.
package delta

import (
	"errors"

	"github.com/restic/chunker"
)

// Sentinel errors of Decode. The wrapping error says what and where.
var (
	// ErrCorrupt: the delta is not well formed (bad magic, unknown op,
	// truncated, a copy outside the base, data after the end).
	ErrCorrupt = errors.New("corrupt delta")
	// ErrBase: the delta needs a base the decoder does not have, or was
	// made against a different one.
	ErrBase = errors.New("delta base mismatch")
	// ErrVerify: the rebuilt bytes do not have the size or sha256 the
	// sender stated.
	ErrVerify = errors.New("delta verification failed")
)

const (
	magic = "ORCHDLT1"
	// MaxLiteral is the longest literal op the encoder writes and the
	// decoder accepts.
	MaxLiteral = 1 << 20

	opCopy    = 'C'
	opLiteral = 'L'
	opEnd     = 'E'

	flagBase = 1
)

// Params choose the chunk boundaries. Sender and index must agree; the
// receiver does not need them (the ops say everything).
type Params struct {
	Pol      chunker.Pol
	Min, Max uint // chunk size bounds; Min >= 64 (the rolling window)
	AvgBits  int  // a cut where the fingerprint's low AvgBits bits are zero
}

// DefaultParams suit memory images: page-sized granularity (CRIU writes
// pages of 4 KiB), 8 KiB on average, 64 KiB at most.
func DefaultParams() Params {
	return Params{Pol: 0x3DA3358B4DC173, Min: 2 << 10, Max: 64 << 10, AvgBits: 13}
}

func (p Params) valid() error {
	// The polynomial's irreducibility is the caller's business (testing it
	// costs milliseconds); DefaultParams' is.
	if d := p.Pol.Deg(); d < 9 || d > 53 {
		return errors.New("delta: chunker polynomial degree must be 9..53")
	}
	if p.Min < 64 || p.Max < p.Min || p.AvgBits < 1 || p.AvgBits > 30 {
		return errors.New("delta: need 64 <= Min <= Max and 1 <= AvgBits <= 30")
	}
	return nil
}

// span is one chunk's place in its archive.
type span struct {
	off int64
	n   int64
}

// Index describes an archive the receiver holds: its size, its sha256, and
// its chunks by content hash. It holds no archive bytes.
type Index struct {
	p      Params
	size   int64
	sum    [32]byte
	chunks map[[32]byte]span
}

// Size is the indexed archive's length.
func (ix *Index) Size() int64 { return ix.size }

// Sum is the indexed archive's sha256.
func (ix *Index) Sum() [32]byte { return ix.sum }

// Chunks is the number of distinct chunks.
func (ix *Index) Chunks() int { return len(ix.chunks) }
