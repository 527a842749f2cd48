package forensics

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/transfer"
)

// KindSnapshot is the transfer stream kind that carries an archive into the
// snapshot store.
const KindSnapshot = "snapshot"

// StoreDir is the snapshot store's directory under node.data_dir.
const StoreDir = "snapshots"

const (
	archiveExt = ".tar"
	partialExt = ".partial"
)

// Retention bounds the snapshot store of one host. A zero field is no
// bound of that kind.
type Retention struct {
	// Count keeps at most this many snapshots (the newest).
	Count int `json:"count,omitempty"`
	// MaxAge drops snapshots older than this.
	MaxAge time.Duration `json:"max_age,omitempty"`
}

// DefaultRetention keeps the newest 10 snapshots of at most a week.
func DefaultRetention() Retention { return Retention{Count: 10, MaxAge: 7 * 24 * time.Hour} }

// or returns r with its zero fields taken from d.
func (r Retention) or(d Retention) Retention {
	if r.Count == 0 {
		r.Count = d.Count
	}
	if r.MaxAge == 0 {
		r.MaxAge = d.MaxAge
	}
	return r
}

// Prune decides which of host's snapshot records retention drops: those
// beyond the newest r.Count, and those older than r.MaxAge at now. Records
// of other store hosts are never chosen. It returns IDs, oldest first.
func Prune(recs []cluster.SnapshotRecord, host string, now time.Time, r Retention) []string {
	var mine []cluster.SnapshotRecord
	for _, s := range recs {
		if s.StoreHost == host {
			mine = append(mine, s)
		}
	}
	// newest first
	sort.Slice(mine, func(i, j int) bool {
		a, b := mine[i], mine[j]
		return a.At.After(b.At) || a.At.Equal(b.At) && a.ID > b.ID
	})
	var drop []string
	for i := len(mine) - 1; i >= 0; i-- {
		s := mine[i]
		if r.Count > 0 && i >= r.Count || r.MaxAge > 0 && now.Sub(s.At) > r.MaxAge {
			drop = append(drop, s.ID)
		}
	}
	return drop
}

// NewID returns a new snapshot ID, e.g. snap-20260102-030405-123-9f3a1c2e:
// sortable by time to the millisecond, unique by a random tail.
func NewID(at time.Time) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	at = at.UTC()
	return fmt.Sprintf("snap-%s-%03d-%s", at.Format("20060102-150405"), at.Nanosecond()/1e6, hex.EncodeToString(b))
}

// validID accepts the IDs NewID makes, and nothing that could leave the
// store directory.
func validID(id string) bool {
	if id == "" || len(id) > 100 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// store is one host's snapshot directory.
type store struct {
	dir string
}

func (s *store) path(id string) string { return filepath.Join(s.dir, id+archiveExt) }

// received is the store handler's answer to the sender.
type received struct {
	File   string `json:"file"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// receive writes one snapshot stream to <id>.tar.partial, hashing it in the
// same pass, and renames it only after the stream verified (the transfer
// layer's reader fails at EOF otherwise). On any error nothing is left.
func (s *store) receive(ctx context.Context, h transfer.StreamHeader, r io.Reader) (received, error) {
	if !validID(h.ID) {
		return received{}, fmt.Errorf("snapshot stream: bad id %q", h.ID)
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return received{}, fmt.Errorf("snapshot store: %w", err)
	}
	final := s.path(h.ID)
	if _, err := os.Stat(final); err == nil {
		return received{}, fmt.Errorf("snapshot %s: already stored: %w", h.ID, cluster.ErrConflict)
	}
	partial := final + partialExt
	f, err := os.OpenFile(partial, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return received{}, fmt.Errorf("snapshot %s: %w", h.ID, err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(partial)
		}
	}()
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, sum), &ctxReader{ctx: ctx, r: r})
	if err != nil {
		return received{}, fmt.Errorf("receive snapshot %s: %w", h.ID, err)
	}
	if err := f.Sync(); err != nil {
		return received{}, fmt.Errorf("receive snapshot %s: %w", h.ID, err)
	}
	if err := f.Close(); err != nil {
		return received{}, fmt.Errorf("receive snapshot %s: %w", h.ID, err)
	}
	if err := os.Rename(partial, final); err != nil {
		return received{}, fmt.Errorf("receive snapshot %s: %w", h.ID, err)
	}
	ok = true
	return received{File: filepath.Base(final), Size: n, SHA256: hex.EncodeToString(sum.Sum(nil))}, nil
}

// ctxReader stops a copy once ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// remove deletes a stored file; a missing one is not an error.
func (s *store) remove(id string) error {
	if !validID(id) {
		return fmt.Errorf("snapshot %q: bad id", id)
	}
	if err := os.Remove(s.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// orphans lists stored files (and stale partials) that no record names and
// that are older than grace: a file younger than that may be waiting for
// its record, or still arriving.
func (s *store) orphans(recorded map[string]bool, now time.Time, grace time.Duration) []string {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		name := e.Name()
		id, isArchive := strings.CutSuffix(name, archiveExt)
		_, isPartial := strings.CutSuffix(name, archiveExt+partialExt)
		if !isArchive && !isPartial || isArchive && recorded[id] {
			continue
		}
		fi, err := e.Info()
		if err != nil || now.Sub(fi.ModTime()) < grace {
			continue
		}
		out = append(out, filepath.Join(s.dir, name))
	}
	return out
}
