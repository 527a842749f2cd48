package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

// IgnoreUnknownTypeFlag, set in an entry's type byte, tells an FSM that does
// not know the type to skip the entry (and log it) instead of refusing it: a
// writer sets it on entries that older agents may safely ignore, so that
// agents of two versions can share a log during a rolling upgrade (nomad's
// IgnoreUnknownTypeFlag). Known types are applied with or without it.
const IgnoreUnknownTypeFlag MessageType = 128

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
	switch t &^ IgnoreUnknownTypeFlag {
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
	case PutTermKeyType:
		return "put-term-key"
	case PruneType:
		return "prune"
	case ReportContainersType:
		return "report-containers"
	case RequestReportsType:
		return "request-reports"
	}
	return fmt.Sprintf("type-%d", uint8(t))
}

// command is a decoded FSM command. validate checks what can be checked
// without the state; it runs before an entry reaches raft and again in
// Apply, so a malformed entry is neither committed nor applied.
type command interface {
	validate() error
}

// commandSpec describes one message type: how to decode it, and whether
// any member may write it through another agent (POST /v1/apply). Records
// that authorise steps on other hosts (migration records) are written only
// by the leader's own coordinator: a member holding the API token must not
// be able to forge one.
type commandSpec struct {
	new        func() command
	forwarding bool
}

var commands = map[MessageType]commandSpec{
	SetHostType:         {func() command { return &SetHostRequest{} }, true},
	PutMigrationType:    {func() command { return &PutMigrationRequest{} }, false},
	DeleteMigrationType: {func() command { return &DeleteMigrationRequest{} }, false},
	AcquireLockType:     {func() command { return &AcquireLockRequest{} }, true},
	ReleaseLockType:     {func() command { return &ReleaseLockRequest{} }, true},
	AppendEventType:     {func() command { return &AppendEventRequest{} }, true},
	PutSnapshotType:     {func() command { return &PutSnapshotRequest{} }, true},
	DeleteSnapshotsType: {func() command { return &DeleteSnapshotsRequest{} }, true},
	// Written by the leader's housekeeping (retention.go).
	PruneType: {func() command { return &PruneRequest{} }, false},
	// Each agent reports its own containers (inventory.go).
	ReportContainersType: {func() command { return &ReportContainersRequest{} }, true},
	RequestReportsType:   {func() command { return &RequestReportsRequest{} }, false},
}

// errUnknownType: the entry's type is not one this agent knows.
var errUnknownType = errors.New("unknown command type")

// decodeCommand decodes and validates a framed command (type byte + JSON).
// Every error wraps ErrInvalid; an unknown type also wraps errUnknownType.
func decodeCommand(b []byte) (MessageType, command, error) {
	if len(b) == 0 {
		return 0, nil, fmt.Errorf("empty command: %w", ErrInvalid)
	}
	t := MessageType(b[0])
	spec, ok := commands[t&^IgnoreUnknownTypeFlag]
	if !ok {
		return t, nil, fmt.Errorf("%w %d: %w", errUnknownType, uint8(t), ErrInvalid)
	}
	cmd := spec.new()
	if err := json.Unmarshal(b[1:], cmd); err != nil {
		return t, nil, fmt.Errorf("decode %s: %w: %v", t, ErrInvalid, err)
	}
	if err := cmd.validate(); err != nil {
		return t, nil, fmt.Errorf("%s: %w", t, err)
	}
	return t, cmd, nil
}

// checkForwarded validates a command another agent sent to be applied here
// (POST /v1/apply) before anything reaches raft: it must decode, validate,
// and be of a type members may write through the API, and not a form of
// it that only the leader writes (leaderOnlyForm).
func checkForwarded(b []byte) error {
	t, cmd, err := decodeCommand(b)
	if err != nil {
		return err
	}
	if !commands[t&^IgnoreUnknownTypeFlag].forwarding {
		return fmt.Errorf("%s is written only by the leader itself: %w", t, ErrInvalid)
	}
	if lo, ok := cmd.(leaderOnlyForm); ok && lo.leaderOnly() {
		return fmt.Errorf("this form of %s is written only by the leader itself: %w", t, ErrInvalid)
	}
	return nil
}

// leaderOnlyForm is a command of a type members may forward, some of whose
// forms only the leader writes (and never forwards).
type leaderOnlyForm interface {
	leaderOnly() bool
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

// maxName bounds names and IDs in commands.
const maxName = 253

func checkName(what, v string) error {
	if v == "" || len(v) > maxName {
		return fmt.Errorf("%s %q: empty or longer than %d bytes: %w", what, v, maxName, ErrInvalid)
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%s %q: control character: %w", what, v, ErrInvalid)
		}
	}
	return nil
}

func (r *SetHostRequest) validate() error { return checkName("host", r.Name) }

func (r *PutMigrationRequest) validate() error {
	m := r.Record
	for _, f := range []struct{ what, v string }{{"migration id", m.ID}, {"container", m.Container}, {"source", m.From}, {"target", m.To}, {"phase", m.Phase}} {
		if err := checkName(f.what, f.v); err != nil {
			return fmt.Errorf("put migration %q: %w", m.ID, err)
		}
	}
	if m.From == m.To {
		return fmt.Errorf("put migration %s: source and target are both %s: %w", m.ID, m.From, ErrInvalid)
	}
	if m.Parallel < 0 {
		return fmt.Errorf("put migration %s: parallel %d: %w", m.ID, m.Parallel, ErrInvalid)
	}
	return nil
}

func (r *DeleteMigrationRequest) validate() error { return checkName("migration id", r.ID) }

func (r *AcquireLockRequest) validate() error {
	if err := checkName("lock", r.Name); err != nil {
		return err
	}
	if r.Limit < 0 || r.Limit > 1000 {
		return fmt.Errorf("lock %s: limit %d: %w", r.Name, r.Limit, ErrInvalid)
	}
	return checkName("lock holder", r.Holder)
}

func (r *ReleaseLockRequest) validate() error {
	if err := checkName("lock", r.Name); err != nil {
		return err
	}
	return checkName("lock holder", r.Holder)
}

func (r *AppendEventRequest) validate() error {
	if r.Event.ID == "" || r.Event.Kind == "" {
		return fmt.Errorf("append event: id and kind are required: %w", ErrInvalid)
	}
	if err := checkName("event id", r.Event.ID); err != nil {
		return err
	}
	return checkName("event kind", r.Event.Kind)
}

func (r *PutSnapshotRequest) validate() error {
	rec := r.Record
	if rec.ID == "" || rec.StoreHost == "" || rec.File == "" || rec.SHA256 == "" {
		return fmt.Errorf("put snapshot %q: id, store host, file and sha256 are required: %w", rec.ID, ErrInvalid)
	}
	return nil
}

func (r *DeleteSnapshotsRequest) validate() error {
	if len(r.IDs) > 100000 {
		return fmt.Errorf("delete snapshots: %d ids: %w", len(r.IDs), ErrInvalid)
	}
	return nil
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
	mu  sync.RWMutex
	s   *state
	log *slog.Logger
	// changed is poked (without blocking) after every applied entry, for
	// the leader's reconciler.
	changed chan struct{}
	// watchers are poked likewise, for other readers (see watch).
	watchers []chan struct{}
}

var _ raft.FSM = (*fsm)(nil)

func newFSM() *fsm {
	return &fsm{s: newState(), log: slog.New(slog.DiscardHandler), changed: make(chan struct{}, 1)}
}

// Apply implements raft.FSM. The response is nil or an error. It never
// panics on an entry's content: an entry that does not decode or validate
// is refused (an error, the state unchanged, the same on every replica), an
// unknown type is refused too unless it carries IgnoreUnknownTypeFlag, in
// which case it is skipped. Both are logged. Writers validate before Apply,
// so such entries come only from a newer version or a corrupt log.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand || len(l.Data) == 0 {
		return nil
	}
	t, cmd, err := decodeCommand(l.Data)
	if err != nil {
		if errors.Is(err, errUnknownType) && t&IgnoreUnknownTypeFlag != 0 {
			f.log.Warn("skipping a log entry of a type this agent does not know (written by a newer version?)", "type", uint8(t), "index", l.Index)
			return nil
		}
		f.log.Error("refusing a malformed log entry", "index", l.Index, "err", err)
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	defer f.poke()
	switch req := cmd.(type) {
	case *SetHostRequest:
		return f.applySetHost(*req)
	case *PutMigrationRequest:
		return f.applyPutMigration(*req)
	case *DeleteMigrationRequest:
		return f.applyDeleteMigration(*req)
	case *AcquireLockRequest:
		return f.applyAcquireLock(*req)
	case *ReleaseLockRequest:
		return f.applyReleaseLock(*req)
	case *AppendEventRequest:
		return f.applyAppendEvent(l.Index, *req)
	case *PutSnapshotRequest:
		return f.applyPutSnapshot(*req)
	case *DeleteSnapshotsRequest:
		return f.applyDeleteSnapshots(*req)
	case *PutTermKeyRequest:
		return f.applyPutTermKey(l.Term, *req)
	case *PruneRequest:
		return f.applyPrune(*req)
	case *ReportContainersRequest:
		return f.applyReportContainers(l.Index, *req)
	case *RequestReportsRequest:
		return f.applyRequestReports(l.Index, *req)
	}
	return fmt.Errorf("%s: no apply function: %w", t, ErrInvalid)
}

func (f *fsm) poke() {
	pokeChan(f.changed)
	for _, ch := range f.watchers {
		pokeChan(ch)
	}
}

func pokeChan(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// watch returns a channel poked (at most one pending) after every applied
// entry and restore. Call it only before raft starts (New): watchers are
// read without the lock.
func (f *fsm) watch() <-chan struct{} {
	ch := make(chan struct{}, 1)
	f.watchers = append(f.watchers, ch)
	return ch
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
	f.s.backstop()
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
	if f.s.hasEvent(ev.ID) {
		return fmt.Errorf("append event %s: %w", ev.ID, ErrDuplicate)
	}
	ev.Index, ev.Data = index, maps.Clone(ev.Data)
	f.s.Events = append(f.s.Events, ev)
	f.s.eventIDs[ev.ID] = true
	f.s.backstop()
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
	f.poke()
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
