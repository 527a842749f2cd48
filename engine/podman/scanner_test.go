//go:build remote

package podman

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/edgemigrate/orchestrate/engine/internal/criuimg"
)

func statsImage(fields map[protowire.Number]uint64) []byte {
	var dump []byte
	for _, n := range []protowire.Number{1, 2, 3, 4, 5, 6, 7} {
		if v, ok := fields[n]; ok {
			dump = protowire.AppendTag(dump, n, protowire.VarintType)
			dump = protowire.AppendVarint(dump, v)
		}
	}
	var entry []byte
	entry = protowire.AppendTag(entry, 1, protowire.BytesType)
	entry = protowire.AppendBytes(entry, dump)
	b := binary.LittleEndian.AppendUint32(nil, 0x55105940)
	b = binary.LittleEndian.AppendUint32(b, 0x57093306)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entry)))
	return append(b, entry...)
}

func tarOf(t testing.TB, entries map[string][]byte) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, data := range entries {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestScanner(t *testing.T) {
	archive := tarOf(t, map[string][]byte{
		entryConfigDump:          []byte(`{"id":"abc","name":"w1","rootfsImageID":"img"}`),
		entryStatsDump:           statsImage(map[protowire.Number]uint64{2: 1000}),
		"checkpoint/pages-1.img": bytes.Repeat([]byte{1}, 1<<20),
	})
	sc := newScanner()
	for i := 0; i < len(archive); i += 777 { // odd-sized writes
		sc.Write(archive[i:min(i+777, len(archive))])
	}
	sc.finish()
	if sc.err() != nil || !sc.complete() || sc.config().Name != "w1" || sc.dumpStats().Frozen != time.Millisecond {
		t.Fatalf("err=%v complete=%v cfg=%+v stats=%+v", sc.err(), sc.complete(), sc.config(), sc.dumpStats())
	}
	sc = newScanner()
	sc.Write(archive[:len(archive)/2])
	sc.finish()
	if sc.complete() || sc.err() == nil {
		t.Fatal("a truncated archive must be reported")
	}
}

// FuzzParseDumpStats: the scanner and CRIU stats parser never panic and never
// block the stream they watch, whatever bytes arrive.
func FuzzParseDumpStats(f *testing.F) {
	f.Add(statsImage(map[protowire.Number]uint64{2: 10, 7: 3}))
	f.Add(tarOf(f, map[string][]byte{entryStatsDump: statsImage(nil), entryConfigDump: []byte("{")}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = criuimg.ParseDumpStats(b)
		sc := newScanner()
		n, err := sc.Write(b)
		sc.finish()
		if n != len(b) || err != nil {
			t.Fatalf("scanner write %d/%d: %v", n, len(b), err)
		}
	})
}
