package criuimg

import (
	"encoding/binary"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
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
	b := binary.LittleEndian.AppendUint32(nil, imgServiceMagic)
	b = binary.LittleEndian.AppendUint32(b, statsMagic)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entry)))
	return append(b, entry...)
}

func TestParseDumpStats(t *testing.T) {
	st, err := ParseDumpStats(statsImage(map[protowire.Number]uint64{1: 5, 2: 47770, 3: 14308, 4: 11145, 7: 8495}))
	if err != nil {
		t.Fatal(err)
	}
	if st.Frozen != 47770*time.Microsecond || st.Memdump != 14308*time.Microsecond || st.PagesWritten != 8495 {
		t.Fatalf("%+v", st)
	}
	for _, bad := range [][]byte{nil, []byte("short"), make([]byte, 64), statsImage(nil)[:13]} {
		if _, err := ParseDumpStats(bad); err == nil {
			t.Fatalf("ParseDumpStats(%x): no error", bad)
		}
	}
}
