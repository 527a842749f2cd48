package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// MessageType is the first byte of every raft log entry; the rest is the
// command's JSON. Values are part of the log format: never renumber.
type MessageType uint8

const (
	SetHostType         MessageType = 1
	PutMigrationType    MessageType = 2
	DeleteMigrationType MessageType = 3
	AcquireLockType     MessageType = 4
	ReleaseLockType     MessageType = 5
	AppendEventType     MessageType = 6
	PutSnapshotType     MessageType = 7
	DeleteSnapshotsType MessageType = 8
)

func (t MessageType) String() string {
	switch t {
	case SetHostType:
		return "set-host"
	case PutMigrationType:
		return "put-migration"
	case DeleteMigrationType:
		return "delete-migration"
	case AcquireLockType:
		return "acquire-lock"
	case ReleaseLockType:
		return "release-lock"
	case AppendEventType:
		return "append-event"
	case PutSnapshotType:
		return "put-snapshot"
	case DeleteSnapshotsType:
		return "delete-snapshots"
	}
	return fmt.Sprintf("type-%d", uint8(t))
}

// SetHostRequest changes a host's operator state. Nil fields are unchanged.
// At is stamped by the caller.
type SetHostRequest struct {
	Name     string    `json:"name"`
	Cordoned *bool     `json:"cordoned,omitempty"`
	Draining *bool     `json:"draining,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	At       time.Time `json:"at"`
}

// PutMigrationRequest stores a migration record. With IfPhase set, the
// stored record must be in that phase (ErrConflict otherwise); with IfAbsent,
// no record with that ID may exist. A new record cannot target a cordoned
// host (ErrCordoned).
type PutMigrationRequest struct {
	Record   MigrationRecord `json:"record"`
	IfPhase  string          `json:"if_phase,omitempty"`
	IfAbsent bool            `json:"if_absent,omitempty"`
}

// DeleteMigrationRequest forgets a migration record.
type DeleteMigrationRequest struct {
	ID string `json:"id"`
}

// AcquireLockRequest takes one slot of a counted lock. Re-acquiring a held
// slot succeeds. Limit < 1 means 1.
type AcquireLockRequest struct {
	Name   string    `json:"name"`
	Holder string    `json:"holder"`
	Limit  int       `json:"limit"`
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}

// ReleaseLockRequest gives back a slot; ErrNotFound when not held.
type ReleaseLockRequest struct {
	Name   string `json:"name"`
	Holder string `json:"holder"`
}

// AppendEventRequest adds an event; ErrDuplicate when its ID is already in
// the log.
type AppendEventRequest struct {
	Event Event `json:"event"`
}

// PutSnapshotRequest records a forensic snapshot kept in the snapshot
// store. A record with the same ID must not exist (ErrConflict).
type PutSnapshotRequest struct {
	Record SnapshotRecord `json:"record"`
}

// DeleteSnapshotsRequest forgets snapshot records (retention). IDs that are
// not recorded are ignored, so a prune that is retried is harmless.
type DeleteSnapshotsRequest struct {
	IDs []string `json:"ids"`
}

// encodeCommand frames a command for the raft log.
func encodeCommand(t MessageType, req any) ([]byte, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", t, err)
	}
	return append([]byte{byte(t)}, b...), nil
}

// fsm is the raft state machine. It is unexported so that Apply, Snapshot and
// Restore stay out of the package's API (hraftd style); Cluster reads it
// through copying accessors.
type fsm struct {
	mu sync.RWMutex
	s  *state
}

var _ raft.FSM = (*fsm)(nil)

func newFSM() *fsm { return &fsm{s: newState()} }

// Apply implements raft.FSM. The response is nil or an error (a rule
// violation). A command that cannot be decoded panics: the log is corrupt or
// written by a newer version, and continuing would diverge replicas.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand || len(l.Data) == 0 {
		return nil
	}
	t, body := MessageType(l.Data[0]), l.Data[1:]
	f.mu.Lock()
	defer f.mu.Unlock()
	switch t {
	case SetHostType:
		var req SetHostRequest
		mustDecode(t, body, &req)
		return f.applySetHost(req)
	case PutMigrationType:
		var req PutMigrationRequest
		mustDecode(t, body, &req)
		return f.applyPutMigration(req)
	case DeleteMigrationType:
		var req DeleteMigrationRequest
		mustDecode(t, body, &req)
		return f.applyDeleteMigration(req)
	case AcquireLockType:
		var req AcquireLockRequest
		mustDecode(t, body, &req)
		return f.applyAcquireLock(req)
	case ReleaseLockType:
		var req ReleaseLockRequest
		mustDecode(t, body, &req)
		return f.applyReleaseLock(req)
	case AppendEventType:
		var req AppendEventRequest
		mustDecode(t, body, &req)
		return f.applyAppendEvent(l.Index, req)
	case PutSnapshotType:
		var req PutSnapshotRequest
		mustDecode(t, body, &req)
		return f.applyPutSnapshot(req)
	case DeleteSnapshotsType:
		var req DeleteSnapshotsRequest
		mustDecode(t, body, &req)
		return f.applyDeleteSnapshots(req)
	}
	panic(fmt.Sprintf("fsm: unknown message type %d at index %d", t, l.Index))
}

func mustDecode(t MessageType, b []byte, v any) {
	if err := json.Unmarshal(b, v); err != nil {
		panic(fmt.Sprintf("fsm: decode %s: %v", t, err))
	}
}

func (f *fsm) applySetHost(req SetHostRequest) error {
	if req.Name == "" {
		return fmt.Errorf("set host: empty name: %w", ErrInvalid)
	}
	h := f.s.Hosts[req.Name]
	h.Name = req.Name
	if req.Cordoned != nil {
		h.Cordoned = *req.Cordoned
	}
	if req.Draining != nil {
		h.Draining = *req.Draining
	}
	h.Reason, h.UpdatedAt = req.Reason, req.At
	f.s.Hosts[req.Name] = h
	return nil
}

func (f *fsm) applyPutMigration(req PutMigrationRequest) error {
	rec := req.Record
	if rec.ID == "" {
		return fmt.Errorf("put migration: empty id: %w", ErrInvalid)
	}
	old, exists := f.s.Migrations[rec.ID]
	switch {
	case exists && req.IfAbsent:
		return fmt.Errorf("put migration %s: already exists: %w", rec.ID, ErrConflict)
	case req.IfPhase != "" && !exists:
		return fmt.Errorf("put migration %s: %w", rec.ID, ErrNotFound)
	case req.IfPhase != "" && old.Phase != req.IfPhase:
		return fmt.Errorf("put migration %s: phase is %s, not %s: %w", rec.ID, old.Phase, req.IfPhase, ErrConflict)
	case !exists && f.s.Hosts[rec.To].Cordoned:
		return fmt.Errorf("put migration %s: target %s: %w", rec.ID, rec.To, ErrCordoned)
	}
	f.s.Migrations[rec.ID] = rec.clone()
	return nil
}

func (f *fsm) applyDeleteMigration(req DeleteMigrationRequest) error {
	if _, ok := f.s.Migrations[req.ID]; !ok {
		return fmt.Errorf("delete migration %s: %w", req.ID, ErrNotFound)
	}
	delete(f.s.Migrations, req.ID)
	return nil
}

func (f *fsm) applyAcquireLock(req AcquireLockRequest) error {
	if req.Name == "" || req.Holder == "" {
		return fmt.Errorf("acquire lock %q for %q: %w", req.Name, req.Holder, ErrInvalid)
	}
	l, ok := f.s.Locks[req.Name]
	if !ok {
		l = Lock{Name: req.Name, Holders: map[string]LockHolder{}}
	} else {
		l = l.clone()
	}
	l.Limit = max(req.Limit, 1)
	if _, held := l.Holders[req.Holder]; !held && len(l.Holders) >= l.Limit {
		return fmt.Errorf("acquire lock %s for %s: %d of %d held: %w", req.Name, req.Holder, len(l.Holders), l.Limit, ErrLockHeld)
	}
	l.Holders[req.Holder] = LockHolder{Holder: req.Holder, Reason: req.Reason, AcquiredAt: req.At}
	f.s.Locks[req.Name] = l
	return nil
}

func (f *fsm) applyReleaseLock(req ReleaseLockRequest) error {
	l, ok := f.s.Locks[req.Name]
	if _, held := l.Holders[req.Holder]; !ok || !held {
		return fmt.Errorf("release lock %s for %s: %w", req.Name, req.Holder, ErrNotFound)
	}
	l = l.clone()
	delete(l.Holders, req.Holder)
	if len(l.Holders) == 0 {
		delete(f.s.Locks, req.Name)
		return nil
	}
	f.s.Locks[req.Name] = l
	return nil
}

func (f *fsm) applyAppendEvent(index uint64, req AppendEventRequest) error {
	ev := req.Event
	if ev.ID == "" || ev.Kind == "" {
		return fmt.Errorf("append event: id and kind are required: %w", ErrInvalid)
	}
	if slices.ContainsFunc(f.s.Events, func(e Event) bool { return e.ID == ev.ID }) {
		return fmt.Errorf("append event %s: %w", ev.ID, ErrDuplicate)
	}
	ev.Index, ev.Data = index, maps.Clone(ev.Data)
	f.s.Events = append(f.s.Events, ev)
	if n := len(f.s.Events); n > maxEvents {
		f.s.Events = slices.Delete(f.s.Events, 0, n-maxEvents)
	}
	return nil
}

func (f *fsm) applyPutSnapshot(req PutSnapshotRequest) error {
	rec := req.Record
	if rec.ID == "" || rec.StoreHost == "" || rec.File == "" || rec.SHA256 == "" {
		return fmt.Errorf("put snapshot %q: id, store host, file and sha256 are required: %w", rec.ID, ErrInvalid)
	}
	if _, ok := f.s.Snapshots[rec.ID]; ok {
		return fmt.Errorf("put snapshot %s: already exists: %w", rec.ID, ErrConflict)
	}
	f.s.Snapshots[rec.ID] = rec
	return nil
}

func (f *fsm) applyDeleteSnapshots(req DeleteSnapshotsRequest) error {
	for _, id := range req.IDs {
		delete(f.s.Snapshots, id)
	}
	return nil
}

// Snapshot implements raft.FSM: it clones the state under the lock, and
// Persist writes the clone while Apply goes on.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &fsmSnapshot{s: f.s.clone()}, nil
}

// Restore implements raft.FSM.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	s, err := unmarshalState(b)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	f.mu.Lock()
	f.s = s
	f.mu.Unlock()
	return nil
}

type fsmSnapshot struct{ s *state }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	b, err := s.s.marshal()
	if err == nil {
		_, err = sink.Write(b)
	}
	if err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

// Reads. Every one returns copies.

func (f *fsm) hosts() []Host {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := slices.Collect(maps.Values(f.s.Hosts))
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (f *fsm) host(name string) (Host, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	h, ok := f.s.Hosts[name]
	return h, ok
}

func (f *fsm) migrations() []MigrationRecord {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]MigrationRecord, 0, len(f.s.Migrations))
	for _, m := range f.s.Migrations {
		out = append(out, m.clone())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (f *fsm) migration(id string) (MigrationRecord, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	m, ok := f.s.Migrations[id]
	if !ok {
		return MigrationRecord{}, fmt.Errorf("migration %s: %w", id, ErrNotFound)
	}
	return m.clone(), nil
}

func (f *fsm) locks() []Lock {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]Lock, 0, len(f.s.Locks))
	for _, l := range f.s.Locks {
		out = append(out, l.clone())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// events returns the events with a raft index above since, oldest first.
func (f *fsm) events(since uint64) []Event {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []Event
	for _, e := range f.s.Events {
		if e.Index > since {
			e.Data = maps.Clone(e.Data)
			out = append(out, e)
		}
	}
	return out
}

// snapshots returns the snapshot records, oldest first (ties by ID).
func (f *fsm) snapshots() []SnapshotRecord {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := slices.Collect(maps.Values(f.s.Snapshots))
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		return a.At.Before(b.At) || a.At.Equal(b.At) && a.ID < b.ID
	})
	return out
}

func (f *fsm) snapshot(id string) (SnapshotRecord, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s, ok := f.s.Snapshots[id]
	if !ok {
		return SnapshotRecord{}, fmt.Errorf("snapshot %s: %w", id, ErrNotFound)
	}
	return s, nil
}

// PutSnapshot records a stored forensic snapshot. The caller stamps At.
func (c *Cluster) PutSnapshot(ctx context.Context, rec SnapshotRecord) error {
	return c.apply(ctx, PutSnapshotType, PutSnapshotRequest{Record: rec})
}

// DeleteSnapshots forgets snapshot records; unknown IDs are ignored.
func (c *Cluster) DeleteSnapshots(ctx context.Context, ids []string) error {
	return c.apply(ctx, DeleteSnapshotsType, DeleteSnapshotsRequest{IDs: ids})
}

// Snapshots returns the snapshot records of the local replica, oldest first.
func (c *Cluster) Snapshots() []SnapshotRecord { return c.fsm.snapshots() }

// Snapshot returns one snapshot record (ErrNotFound).
func (c *Cluster) Snapshot(id string) (SnapshotRecord, error) { return c.fsm.snapshot(id) }
