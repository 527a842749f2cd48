//go:build remote

package podman

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/edgemigrate/orchestrate/engine/internal/criuimg"
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

// scanner is an io.Writer that parses the tar stream written to it, in a
// goroutine it owns until finish, and keeps config.dump and stats-dump. It
// never stops the stream: after a parse error it discards the rest, and
// reports the error through err.
type scanner struct {
	pw   *io.PipeWriter
	done chan struct{}

	mu       sync.Mutex
	cfg      archiveConfig
	stats    *criuimg.DumpStats
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
			if st, err := criuimg.ParseDumpStats(b); err == nil {
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

func (s *scanner) dumpStats() *criuimg.DumpStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}
