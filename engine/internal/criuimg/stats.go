// Package criuimg reads the few CRIU image files the engines need on the
// fly, without CRIU: today, the dump statistics (stats-dump) that both
// Podman's and orchestrate's Docker archives carry.
package criuimg

import (
	"encoding/binary"
	"errors"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// DumpStats are CRIU's own timings of a dump.
type DumpStats struct {
	Frozen, Memdump, Memwrite time.Duration
	PagesWritten              uint64
}

// CRIU image magics (criu/include/magic.h).
const (
	imgServiceMagic = 0x55105940
	statsMagic      = 0x57093306
)

// ParseDumpStats decodes CRIU's stats-dump image: two magics, a length, and
// a StatsEntry protobuf whose field 1 is the DumpStatsEntry (times in µs).
func ParseDumpStats(b []byte) (*DumpStats, error) {
	if len(b) < 12 || binary.LittleEndian.Uint32(b) != imgServiceMagic || binary.LittleEndian.Uint32(b[4:]) != statsMagic {
		return nil, errors.New("stats-dump: bad magic")
	}
	size := int(binary.LittleEndian.Uint32(b[8:]))
	msg := b[12:]
	if size > len(msg) {
		return nil, errors.New("stats-dump: truncated")
	}
	msg = msg[:size]
	var dump []byte
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		msg = msg[n:]
		if num == 1 && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(msg)
			if n < 0 {
				return nil, protowire.ParseError(n)
			}
			dump = v
			break
		}
		n = protowire.ConsumeFieldValue(num, typ, msg)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		msg = msg[n:]
	}
	if dump == nil {
		return nil, errors.New("stats-dump: no dump statistics")
	}
	st := &DumpStats{}
	for len(dump) > 0 {
		num, typ, n := protowire.ConsumeTag(dump)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		dump = dump[n:]
		if typ != protowire.VarintType {
			n = protowire.ConsumeFieldValue(num, typ, dump)
			if n < 0 {
				return nil, protowire.ParseError(n)
			}
			dump = dump[n:]
			continue
		}
		v, n := protowire.ConsumeVarint(dump)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		dump = dump[n:]
		switch num {
		case 2:
			st.Frozen = time.Duration(v) * time.Microsecond
		case 3:
			st.Memdump = time.Duration(v) * time.Microsecond
		case 4:
			st.Memwrite = time.Duration(v) * time.Microsecond
		case 7:
			st.PagesWritten = v
		}
	}
	return st, nil
}
