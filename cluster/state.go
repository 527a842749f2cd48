package cluster

import (
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"time"

	"github.com/edgemigrate/orchestrate/engine"
)

// Sentinel errors that callers act on. They survive forwarding to the leader:
// the API carries a code and the client maps it back (see errorCodes).
var (
	ErrNotLeader = errors.New("not the leader")
	ErrNoLeader  = errors.New("no cluster leader")
	ErrNotFound  = errors.New("not found")
	ErrCordoned  = errors.New("host is cordoned")
	ErrLockHeld  = errors.New("lock is held")
	ErrDuplicate = errors.New("duplicate event")
	ErrConflict  = errors.New("conflicting update")
	ErrInvalid   = errors.New("invalid request")
	// ErrUnauthorized: the API refused our credentials (wrong cluster secret).
	ErrUnauthorized = errors.New("unauthorized: wrong cluster secret?")
)

// maxEvents bounds the replicated event log; older events are dropped (and
// their IDs no longer deduplicate).
const maxEvents = 1000

// Host is the replicated, operator-controlled state of one host. Liveness
// lives in gossip, not here.
type Host struct {
	Name      string    `json:"name"`
	Cordoned  bool      `json:"cordoned"`
	Draining  bool      `json:"draining"`
	Reason    string    `json:"reason,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// PhaseChange is one entry of a migration's phase history.
type PhaseChange struct {
	Phase string    `json:"phase"`
	At    time.Time `json:"at"`
	Note  string    `json:"note,omitempty"`
}

// MigrationRecord is what the leader decided about one migration. The FSM
// stores it exactly as given: the migration state machine computes it.
type MigrationRecord struct {
	ID          string         `json:"id"`
	Container   string         `json:"container"`
	From        string         `json:"from"`
	To          string         `json:"to"`
	Phase       string         `json:"phase"`
	History     []PhaseChange  `json:"history,omitempty"`
	Bytes       int64          `json:"bytes,omitempty"`
	Compression string         `json:"compression,omitempty"`
	Downtime    time.Duration  `json:"downtime,omitempty"`
	Checkpoint  engine.Stats   `json:"checkpoint_stats"`
	Restore     engine.Stats   `json:"restore_stats"`
	Error       string         `json:"error,omitempty"`
	StartedAt   time.Time      `json:"started_at"`
	FinishedAt  time.Time      `json:"finished_at"`
	Extra       map[string]any `json:"extra,omitempty"` // for fields the FSM does not interpret
}

func (m MigrationRecord) clone() MigrationRecord {
	m.History = slices.Clone(m.History)
	m.Extra = maps.Clone(m.Extra)
	return m
}

// LockHolder is one holder of a counted lock.
type LockHolder struct {
	Holder     string    `json:"holder"`
	Reason     string    `json:"reason,omitempty"`
	AcquiredAt time.Time `json:"acquired_at"`
}

// Lock is a counted lock (e.g. "reboot" with Limit 1: one reboot at a time).
type Lock struct {
	Name    string                `json:"name"`
	Limit   int                   `json:"limit"`
	Holders map[string]LockHolder `json:"holders"`
}

func (l Lock) clone() Lock {
	l.Holders = maps.Clone(l.Holders)
	return l
}

// Event is one entry of the event log: a policy trigger or an action. ID is
// a dedup key (e.g. a content hash of the trigger).
type Event struct {
	ID      string            `json:"id"`
	Kind    string            `json:"kind"`
	Host    string            `json:"host,omitempty"`
	Message string            `json:"message,omitempty"`
	Data    map[string]string `json:"data,omitempty"`
	At      time.Time         `json:"at"`
	Index   uint64            `json:"index"` // raft index, set by the FSM
}

// SnapshotRecord is one forensic snapshot in the cluster's snapshot store:
// a checkpoint archive of Container, taken on Host, kept as File under the
// snapshot directory of StoreHost. The store host's agent owns the file and
// removes it together with the record.
type SnapshotRecord struct {
	ID           string        `json:"id"`
	Container    string        `json:"container"` // container ID
	Name         string        `json:"name,omitempty"`
	Host         string        `json:"host"` // where the container ran
	StoreHost    string        `json:"store_host"`
	File         string        `json:"file"` // name within the store directory
	At           time.Time     `json:"at"`
	Size         int64         `json:"size"`
	SHA256       string        `json:"sha256"`
	Reason       string        `json:"reason,omitempty"`
	LeaveRunning bool          `json:"leave_running"`
	FrozenTime   time.Duration `json:"frozen_time,omitempty"` // CRIU's
	WallTime     time.Duration `json:"wall_time,omitempty"`   // the engine's checkpoint call
}

// state is the FSM's data. It is not safe for concurrent use; fsm guards it.
type state struct {
	Hosts      map[string]Host            `json:"hosts"`
	Migrations map[string]MigrationRecord `json:"migrations"`
	Locks      map[string]Lock            `json:"locks"`
	Events     []Event                    `json:"events"`
	Snapshots  map[string]SnapshotRecord  `json:"snapshots,omitempty"`
}

func newState() *state {
	return &state{Hosts: map[string]Host{}, Migrations: map[string]MigrationRecord{}, Locks: map[string]Lock{}, Snapshots: map[string]SnapshotRecord{}}
}

func (s *state) clone() *state {
	c := newState()
	maps.Copy(c.Hosts, s.Hosts)
	for k, m := range s.Migrations {
		c.Migrations[k] = m.clone()
	}
	for k, l := range s.Locks {
		c.Locks[k] = l.clone()
	}
	maps.Copy(c.Snapshots, s.Snapshots)
	c.Events = make([]Event, len(s.Events))
	for i, e := range s.Events {
		e.Data = maps.Clone(e.Data)
		c.Events[i] = e
	}
	return c
}

func (s *state) marshal() ([]byte, error) { return json.Marshal(s) }

func unmarshalState(b []byte) (*state, error) {
	s := newState()
	if err := json.Unmarshal(b, s); err != nil {
		return nil, err
	}
	if s.Hosts == nil {
		s.Hosts = map[string]Host{}
	}
	if s.Migrations == nil {
		s.Migrations = map[string]MigrationRecord{}
	}
	if s.Locks == nil {
		s.Locks = map[string]Lock{}
	}
	if s.Snapshots == nil { // state written before snapshot records existed
		s.Snapshots = map[string]SnapshotRecord{}
	}
	return s, nil
}
