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
// Every field has a name and a type; fields are added, never repurposed, so
// that agents of two versions read each other's records.
type MigrationRecord struct {
	ID        string        `json:"id"`
	Container string        `json:"container"` // container ID
	From      string        `json:"from"`
	To        string        `json:"to"`
	Phase     string        `json:"phase"`
	History   []PhaseChange `json:"history,omitempty"`

	// The plan, fixed when the record is created.
	Name  string `json:"name,omitempty"`  // container name
	Image string `json:"image,omitempty"` // image ID the target must hold
	// Batch groups the records of one drain, evacuation or rebalance; at
	// most Parallel of a batch are under way at once.
	Batch    string `json:"batch,omitempty"`
	Parallel int    `json:"parallel,omitempty"`
	// Drain is the host a drain empties; Rebalance marks a rebalancing move.
	Drain     string `json:"drain,omitempty"`
	Rebalance bool   `json:"rebalance,omitempty"`
	// Deadline: a record not started by then rolls back untouched; it also
	// bounds pre-copy.
	Deadline time.Time `json:"deadline,omitzero"`
	// Method is the transfer method (the source's TransferMethod): the one
	// asked for when the record is created, or, when none was, the source's
	// default once it ran. Its variants are in its report (Precopy.Method:
	// direct, precopy-content, full-after-precopy).
	Method string `json:"method,omitempty"`

	// What happened.
	// SourceAsked: the leader has asked the source to migrate out; from
	// then on a rollback must undo whatever the source did.
	SourceAsked bool          `json:"source_asked,omitempty"`
	Bytes       int64         `json:"bytes,omitempty"`
	Compression string        `json:"compression,omitempty"`
	Downtime    time.Duration `json:"downtime,omitempty"` // measured on one host's clock
	Checkpoint  engine.Stats  `json:"checkpoint_stats"`
	Restore     engine.Stats  `json:"restore_stats"`
	// Precopy is what the source's pre-copy did (rounds, bytes saved).
	Precopy *PrecopyReport `json:"precopy,omitempty"`
	// FrozenAt is when the leader learnt of the freeze, on its clock
	// (informational: downtime is never computed across two clocks).
	FrozenAt time.Time `json:"frozen_at,omitzero"`
	// Untouched: the rollback has nothing to undo (the container was never
	// frozen and no copy was sent).
	Untouched  bool      `json:"untouched,omitempty"`
	Error      string    `json:"error,omitempty"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
}

// PrecopyReport is what a source's content pre-copy did, for the record.
type PrecopyReport struct {
	Method string `json:"method"`
	Reason string `json:"reason,omitempty"`
	// EnginePreCopy: the engine reports kernel dirty tracking (soft-dirty).
	EnginePreCopy bool            `json:"engine_precopy"`
	LinkBps       float64         `json:"link_bytes_per_s,omitempty"`
	Rounds        []PrecopyRound  `json:"rounds,omitempty"`
	Final         *PrecopyRound   `json:"final,omitempty"`
	BytesSaved    int64           `json:"bytes_saved,omitempty"` // final archive minus final delta
	WireBytes     int64           `json:"wire_bytes,omitempty"`  // all rounds and the final, as sent
	Fallback      string          `json:"fallback,omitempty"`    // why a full transfer ended it
	ExtraFreezes  []time.Duration `json:"extra_freezes,omitempty"`

	// PreDump is the sha256 of the pre-dump archive the target holds, when
	// CRIU pre-copied (method precopy-criu, cluster/migrate/precopy_engine.go).
	PreDump string `json:"pre_dump,omitempty"`
	// Pages is what the page path did, or why it did not run
	// (cluster/migrate/fastpath.go).
	Pages *PageReport `json:"pages,omitempty"`
}

// PageReport is what the page path did: memory pages sent while CRIU dumps,
// then a metadata archive.
type PageReport struct {
	PageBytes    int64         `json:"page_bytes"`            // page session bytes CRIU sent
	Pages        int64         `json:"pages"`                 // memory pages carried
	WireBytes    int64         `json:"wire_bytes,omitempty"`  // on the channel, after delta and zstd
	ArchiveBytes int64         `json:"archive_bytes"`         // the metadata archive
	Session      time.Duration `json:"session"`               // from CRIU's connect to its CLOSE answered
	Fallback     string        `json:"fallback,omitempty"`    // why the page path did not run
	DeltaSaved   int64         `json:"delta_saved,omitempty"` // page bytes not sent thanks to the base
	Link         string        `json:"link,omitempty"`        // what carried the pages: "page-link" (a sealed TCP link of its own) or "ssh"
}

// PrecopyRound is one pre-copy round's numbers.
type PrecopyRound struct {
	Round        int           `json:"round"`
	ArchiveBytes int64         `json:"archive_bytes"`
	LiteralBytes int64         `json:"literal_bytes"`
	DeltaBytes   int64         `json:"delta_bytes"`
	WireBytes    int64         `json:"wire_bytes"`
	Frozen       time.Duration `json:"frozen"`     // CRIU's frozen time
	Checkpoint   time.Duration `json:"checkpoint"` // the engine call
	Duration     time.Duration `json:"duration"`   // the whole round
}

func (r *PrecopyReport) clone() *PrecopyReport {
	if r == nil {
		return nil
	}
	c := *r
	c.Rounds = slices.Clone(r.Rounds)
	c.ExtraFreezes = slices.Clone(r.ExtraFreezes)
	if r.Final != nil {
		f := *r.Final
		c.Final = &f
	}
	if r.Pages != nil {
		p := *r.Pages
		c.Pages = &p
	}
	return &c
}

func (m MigrationRecord) clone() MigrationRecord {
	m.History = slices.Clone(m.History)
	m.Precopy = m.Precopy.clone()
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
	// TermKey is the newest leader's public step key (termkey.go).
	TermKey *TermKey `json:"term_key,omitempty"`
	// Containers is each host's last container report (inventory.go).
	Containers map[string]HostContainers `json:"containers,omitempty"`
	// ReportsWanted is the raft index of the latest report request by
	// host ("" for every host).
	ReportsWanted map[string]uint64 `json:"reports_wanted,omitempty"`

	// eventIDs indexes Events by ID for deduplication; nil until first
	// needed, and after events are dropped (see hasEvent).
	eventIDs map[string]bool
}

// hasEvent reports whether an event with this ID is in the log. Events
// dropped by retention no longer deduplicate.
func (s *state) hasEvent(id string) bool {
	if s.eventIDs == nil {
		s.eventIDs = make(map[string]bool, len(s.Events))
		for _, e := range s.Events {
			s.eventIDs[e.ID] = true
		}
	}
	return s.eventIDs[id]
}

func newState() *state {
	return &state{Hosts: map[string]Host{}, Migrations: map[string]MigrationRecord{}, Locks: map[string]Lock{}, Snapshots: map[string]SnapshotRecord{},
		Containers: map[string]HostContainers{}, ReportsWanted: map[string]uint64{}}
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
	if s.TermKey != nil {
		k := *s.TermKey
		k.PublicKey = slices.Clone(k.PublicKey)
		c.TermKey = &k
	}
	for k, h := range s.Containers {
		c.Containers[k] = h.clone()
	}
	maps.Copy(c.ReportsWanted, s.ReportsWanted)
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
	if s.Containers == nil { // state written before container reports existed
		s.Containers = map[string]HostContainers{}
	}
	if s.ReportsWanted == nil {
		s.ReportsWanted = map[string]uint64{}
	}
	return s, nil
}
