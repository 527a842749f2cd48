package archive

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/checkpoint-restore/go-criu/v7/magic"
	"google.golang.org/protobuf/proto"
)

// Sentinel errors that callers can act on. Every error from this package that
// is caused by bad input wraps ErrCorrupt, ErrTruncated or ErrNotCheckpoint,
// and a *FileError naming the file involved.
var (
	// ErrNotCheckpoint: the input is a readable archive but not a container
	// checkpoint (no config.dump or no checkpoint/ images).
	ErrNotCheckpoint = errors.New("not a container checkpoint archive")
	// ErrCorrupt: a file in the archive is malformed.
	ErrCorrupt = errors.New("corrupt checkpoint archive")
	// ErrTruncated: the archive or a file in it ends early.
	ErrTruncated = errors.New("truncated checkpoint archive")
	// ErrMatchLimit: Grep stopped at Config.MaxMatches; the matches so far
	// are returned with it.
	ErrMatchLimit = errors.New("match limit reached")
)

// FileError says which file in the archive an error is about. Path is
// relative to the archive root ("checkpoint/mm-1.img"); for the archive
// itself it is empty.
type FileError struct {
	Path string
	Err  error
}

func (e *FileError) Error() string {
	if e.Path == "" {
		return "checkpoint archive: " + e.Err.Error()
	}
	return e.Path + ": " + e.Err.Error()
}

func (e *FileError) Unwrap() error { return e.Err }

func fileErr(path string, err error) error {
	var fe *FileError
	if errors.As(err, &fe) {
		return err
	}
	return &FileError{Path: path, Err: err}
}

func corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

func truncatedf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrTruncated, fmt.Sprintf(format, args...))
}

// CRIU image magics, from go-criu's generated table (criu/include/magic.h).
var magics = magic.LoadMagic().ByName

func magicOf(name string) uint32 { return uint32(magics[name]) }

var (
	imgCommonMagic  = magicOf("IMG_COMMON")
	imgServiceMagic = magicOf("IMG_SERVICE")
)

// maxEntry bounds one protobuf entry; CRIU's largest (core with xsave state,
// mm with thousands of VMAs) stay far below it.
const maxEntry = 16 << 20

// imageEntries splits a CRIU protobuf image into its raw entries after
// checking its magic. The format is: an optional IMG_COMMON or IMG_SERVICE
// magic, the image's own magic, then entries of a little-endian uint32 size
// followed by that many bytes of protobuf. The returned slices alias data.
func imageEntries(data []byte, magicName string) ([][]byte, error) {
	off, err := imageBody(data, magicName)
	if err != nil {
		return nil, err
	}
	var entries [][]byte
	for off < len(data) {
		if len(data)-off < 4 {
			return nil, truncatedf("entry %d: %d bytes left, too short for a size", len(entries), len(data)-off)
		}
		n := binary.LittleEndian.Uint32(data[off:])
		off += 4
		if n > maxEntry {
			return nil, corruptf("entry %d: size %d exceeds %d", len(entries), n, maxEntry)
		}
		if int(n) > len(data)-off {
			return nil, truncatedf("entry %d: size %d but %d bytes left", len(entries), n, len(data)-off)
		}
		entries = append(entries, data[off:off+int(n)])
		off += int(n)
	}
	return entries, nil
}

// imageBody checks an image's magic and returns where its entries start.
func imageBody(data []byte, magicName string) (int, error) {
	want := magicOf(magicName)
	if want == 0 {
		return 0, fmt.Errorf("internal: unknown CRIU magic %s", magicName)
	}
	if len(data) < 4 {
		return 0, truncatedf("%d bytes, too short for a CRIU image magic", len(data))
	}
	m := binary.LittleEndian.Uint32(data)
	off := 4
	if m == imgCommonMagic || m == imgServiceMagic {
		if len(data) < 8 {
			return 0, truncatedf("image ends after its first magic")
		}
		m = binary.LittleEndian.Uint32(data[4:])
		off = 8
	}
	if m != want {
		return 0, corruptf("magic 0x%08x, want %s (0x%08x)", m, magicName, want)
	}
	return off, nil
}

// unmarshalOpts tolerates missing required fields: a checkpoint written by a
// newer or older CRIU may lack some, and the analysis reads what is there.
var unmarshalOpts = proto.UnmarshalOptions{AllowPartial: true, DiscardUnknown: true}

// decodeImage decodes every entry of a CRIU image into a message made by newMsg.
func decodeImage[M proto.Message](data []byte, magicName string, newMsg func() M) ([]M, error) {
	raw, err := imageEntries(data, magicName)
	if err != nil {
		return nil, err
	}
	out := make([]M, 0, len(raw))
	for i, b := range raw {
		m := newMsg()
		if err := unmarshalOpts.Unmarshal(b, m); err != nil {
			return nil, corruptf("entry %d: %v", i, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// decodeSingle decodes an image that must hold exactly one entry.
func decodeSingle[M proto.Message](data []byte, magicName string, newMsg func() M) (M, error) {
	var zero M
	ms, err := decodeImage(data, magicName, newMsg)
	if err != nil {
		return zero, err
	}
	if len(ms) != 1 {
		return zero, corruptf("%d entries, want 1", len(ms))
	}
	return ms[0], nil
}
