package podman

import (
	"archive/tar"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// Entries of a Podman checkpoint archive that the engine reads on the fly.
const (
	entryConfigDump = "config.dump"
	entryStatsDump  = "stats-dump"
)

// archiveConfig is the part of config.dump the engine needs.
type archiveConfig struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	ImageID   string `json:"rootfsImageID"`
	ImageName string `json:"rootfsImageName"`
}

type dumpStats struct {
	frozen, memdump, memwrite time.Duration
	pagesWritten              uint64
}

// scanner is an io.Writer that parses the tar stream written to it, in a
// goroutine it owns until finish, and keeps config.dump and stats-dump. It
// never stops the stream: after a parse error it discards the rest, and
// reports the error through err.
type scanner struct {
	pw   *io.PipeWriter
	done chan struct{}

	mu       sync.Mutex
	cfg      archiveConfig
	stats    *dumpStats
	parseErr error
	eof      bool // the end-of-archive marker was seen
}

func newScanner() *scanner {
	pr, pw := io.Pipe()
	s := &scanner{pw: pw, done: make(chan struct{})}
	go s.run(pr)
	return s
}

func (s *scanner) Write(p []byte) (int, error) {
	// The pipe only fails once run has returned, which happens after
	// finish; never fail the stream we are watching.
	if _, err := s.pw.Write(p); err != nil {
		return len(p), nil
	}
	return len(p), nil
}

// finish ends the stream and waits for the parser.
func (s *scanner) finish() {
	s.pw.Close()
	<-s.done
}

func (s *scanner) run(pr *io.PipeReader) {
	defer close(s.done)
	defer func() { _, _ = io.Copy(io.Discard, pr) }()
	tr := tar.NewReader(pr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			s.mu.Lock()
			s.eof = true
			s.mu.Unlock()
			return
		}
		if err != nil {
			s.setErr(err)
			return
		}
		switch h.Name {
		case entryConfigDump:
			var cfg archiveConfig
			if err := json.NewDecoder(io.LimitReader(tr, 16<<20)).Decode(&cfg); err != nil {
				s.setErr(fmt.Errorf("%s: %w", entryConfigDump, err))
				return
			}
			s.mu.Lock()
			s.cfg = cfg
			s.mu.Unlock()
		case entryStatsDump:
			b, err := io.ReadAll(io.LimitReader(tr, 1<<20))
			if err != nil {
				s.setErr(err)
				return
			}
			if st, err := parseDumpStats(b); err == nil {
				s.mu.Lock()
				s.stats = st
				s.mu.Unlock()
			}
		}
	}
}

func (s *scanner) setErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.parseErr = err
}

func (s *scanner) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.parseErr
}

func (s *scanner) complete() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eof
}

func (s *scanner) config() archiveConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

func (s *scanner) dumpStats() *dumpStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// CRIU image magics (criu/include/magic.h).
const (
	imgServiceMagic = 0x55105940
	statsMagic      = 0x57093306
)

// parseDumpStats decodes CRIU's stats-dump image: two magics, a length, and
// a StatsEntry protobuf whose field 1 is the DumpStatsEntry (times in µs).
func parseDumpStats(b []byte) (*dumpStats, error) {
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
	st := &dumpStats{}
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
			st.frozen = time.Duration(v) * time.Microsecond
		case 3:
			st.memdump = time.Duration(v) * time.Microsecond
		case 4:
			st.memwrite = time.Duration(v) * time.Microsecond
		case 7:
			st.pagesWritten = v
		}
	}
	return st, nil
}
