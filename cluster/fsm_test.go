package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func cmd(t *testing.T, mt MessageType, req any) []byte {
	t.Helper()
	b, err := encodeCommand(mt, req)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ptr[T any](v T) *T { return &v }

// rec is a valid migration record of container web from h1 to h2.
func rec(id, phase string) MigrationRecord {
	return MigrationRecord{ID: id, Container: "web", From: "h1", To: "h2", Phase: phase, StartedAt: t0}
}

func withHistory(m MigrationRecord, h ...PhaseChange) MigrationRecord {
	m.History = h
	return m
}

// apply runs one command through the FSM like raft would.
func apply(f *fsm, index uint64, b []byte) error {
	resp := f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: b})
	if resp == nil {
		return nil
	}
	return resp.(error)
}

func TestFSMApply(t *testing.T) {
	type step struct {
		typ     MessageType
		req     any
		wantErr error
	}
	tests := []struct {
		name  string
		steps []step
		check func(t *testing.T, f *fsm)
	}{
		{
			name: "cordon then uncordon keeps draining",
			steps: []step{
				{SetHostType, SetHostRequest{Name: "h1", Cordoned: ptr(true), Draining: ptr(true), Reason: "reboot", At: t0}, nil},
				{SetHostType, SetHostRequest{Name: "h1", Cordoned: ptr(false), At: t0.Add(time.Second)}, nil},
			},
			check: func(t *testing.T, f *fsm) {
				h, _ := f.host("h1")
				if h.Cordoned || !h.Draining || !h.UpdatedAt.Equal(t0.Add(time.Second)) {
					t.Errorf("host = %+v", h)
				}
			},
		},
		{
			name:  "host needs a name",
			steps: []step{{SetHostType, SetHostRequest{}, ErrInvalid}},
		},
		{
			name: "migration put, conditional update, conflict, delete",
			steps: []step{
				{PutMigrationType, PutMigrationRequest{Record: MigrationRecord{ID: "m1", Container: "web", From: "h1", To: "h2", Phase: "Planned", StartedAt: t0}, IfAbsent: true}, nil},
				{PutMigrationType, PutMigrationRequest{Record: rec("m1", "Planned"), IfAbsent: true}, ErrConflict},
				{PutMigrationType, PutMigrationRequest{Record: withHistory(rec("m1", "Checkpointing"), PhaseChange{Phase: "Planned", At: t0}), IfPhase: "Planned"}, nil},
				{PutMigrationType, PutMigrationRequest{Record: rec("m1", "Done"), IfPhase: "Planned"}, ErrConflict},
				{PutMigrationType, PutMigrationRequest{Record: rec("nope", "Done"), IfPhase: "Planned"}, ErrNotFound},
				{DeleteMigrationType, DeleteMigrationRequest{ID: "gone"}, ErrNotFound},
			},
			check: func(t *testing.T, f *fsm) {
				m, err := f.migration("m1")
				if err != nil || m.Phase != "Checkpointing" || len(m.History) != 1 {
					t.Errorf("migration = %+v, %v", m, err)
				}
			},
		},
		{
			name: "no new migration to a cordoned host",
			steps: []step{
				{SetHostType, SetHostRequest{Name: "h2", Cordoned: ptr(true), At: t0}, nil},
				{PutMigrationType, PutMigrationRequest{Record: rec("m2", "Planned")}, ErrCordoned},
			},
		},
		{
			name:  "migration needs an id",
			steps: []step{{PutMigrationType, PutMigrationRequest{}, ErrInvalid}},
		},
		{
			name: "counted lock",
			steps: []step{
				{AcquireLockType, AcquireLockRequest{Name: "reboot", Holder: "h1", Limit: 1, At: t0}, nil},
				{AcquireLockType, AcquireLockRequest{Name: "reboot", Holder: "h1", Limit: 1, At: t0}, nil}, // re-acquire
				{AcquireLockType, AcquireLockRequest{Name: "reboot", Holder: "h2", Limit: 1, At: t0}, ErrLockHeld},
				{ReleaseLockType, ReleaseLockRequest{Name: "reboot", Holder: "h2"}, ErrNotFound},
				{ReleaseLockType, ReleaseLockRequest{Name: "reboot", Holder: "h1"}, nil},
				{AcquireLockType, AcquireLockRequest{Name: "reboot", Holder: "h2", Limit: 2, At: t0}, nil},
				{AcquireLockType, AcquireLockRequest{Name: "reboot", Holder: "h3", Limit: 2, At: t0}, nil},
				{AcquireLockType, AcquireLockRequest{Name: "reboot", Holder: "h4", Limit: 2, At: t0}, ErrLockHeld},
				{AcquireLockType, AcquireLockRequest{Name: "", Holder: "h4"}, ErrInvalid},
			},
			check: func(t *testing.T, f *fsm) {
				ls := f.locks()
				if len(ls) != 1 || len(ls[0].Holders) != 2 || ls[0].Limit != 2 {
					t.Errorf("locks = %+v", ls)
				}
			},
		},
		{
			name: "event dedup",
			steps: []step{
				{AppendEventType, AppendEventRequest{Event: Event{ID: "e1", Kind: "trigger", Host: "h1", At: t0}}, nil},
				{AppendEventType, AppendEventRequest{Event: Event{ID: "e1", Kind: "trigger", Host: "h1", At: t0}}, ErrDuplicate},
				{AppendEventType, AppendEventRequest{Event: Event{ID: "e2", Kind: "action", At: t0}}, nil},
				{AppendEventType, AppendEventRequest{Event: Event{Kind: "action"}}, ErrInvalid},
			},
			check: func(t *testing.T, f *fsm) {
				evs := f.events(0)
				if len(evs) != 2 || evs[0].Index != 1 || evs[1].Index != 3 {
					t.Errorf("events = %+v", evs)
				}
				if got := f.events(1); len(got) != 1 || got[0].ID != "e2" {
					t.Errorf("events since 1 = %+v", got)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFSM()
			for i, s := range tt.steps {
				err := apply(f, uint64(i+1), cmd(t, s.typ, s.req))
				if (s.wantErr == nil) != (err == nil) || (s.wantErr != nil && !errors.Is(err, s.wantErr)) {
					t.Fatalf("step %d (%s): err = %v, want %v", i, s.typ, err, s.wantErr)
				}
			}
			if tt.check != nil {
				tt.check(t, f)
			}
		})
	}
}

// Without any prune from a leader, the FSM still bounds the event log at
// maxHistory (the backstop); the oldest events go first.
func TestFSMEventLogBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("applies 100,000 entries")
	}
	f := newFSM()
	for i := range maxHistory + 10 {
		if err := apply(f, uint64(i+1), cmd(t, AppendEventType, AppendEventRequest{Event: Event{ID: fmt.Sprintf("e%d", i), Kind: "k"}})); err != nil {
			t.Fatal(err)
		}
	}
	evs := f.events(0)
	if len(evs) != maxHistory || evs[0].Index != 11 {
		t.Fatalf("kept %d events, first index %d", len(evs), evs[0].Index)
	}
	// Dropped IDs no longer deduplicate; kept ones still do.
	if err := apply(f, maxHistory+11, cmd(t, AppendEventType, AppendEventRequest{Event: Event{ID: "e0", Kind: "k"}})); err != nil {
		t.Errorf("a dropped ID is refused: %v", err)
	}
	if err := apply(f, maxHistory+12, cmd(t, AppendEventType, AppendEventRequest{Event: Event{ID: "e20", Kind: "k"}})); !errors.Is(err, ErrDuplicate) {
		t.Errorf("a kept ID is accepted again: %v", err)
	}
}

// Whatever bytes reach Apply, it never panics: an entry that does not
// decode or validate is refused with ErrInvalid and leaves the state as it
// was; an unknown type is refused, or skipped when it carries
// IgnoreUnknownTypeFlag. Known types apply with the flag set too.
func TestFSMNeverPanics(t *testing.T) {
	good := cmd(t, AppendEventType, AppendEventRequest{Event: Event{ID: "e1", Kind: "k"}})
	for _, tc := range []struct {
		name    string
		data    []byte
		wantErr bool
		applied bool
	}{
		{"bad json", append([]byte{byte(SetHostType)}, "{"...), true, false},
		{"wrong json type", append([]byte{byte(PutMigrationType)}, `{"record": 7}`...), true, false},
		{"json null", append([]byte{byte(AppendEventType)}, "null"...), true, false},
		{"type byte only", []byte{byte(PutMigrationType)}, true, false},
		{"invalid record", cmd(t, PutMigrationType, PutMigrationRequest{Record: MigrationRecord{ID: "m1"}}), true, false},
		{"control characters", cmd(t, SetHostType, SetHostRequest{Name: "h\x00"}), true, false},
		{"unknown type", append([]byte{99}, "{}"...), true, false},
		{"unknown type, ignore flag", append([]byte{99 | byte(IgnoreUnknownTypeFlag)}, "{not json"...), false, false},
		{"known type, ignore flag", append([]byte{byte(AppendEventType | IgnoreUnknownTypeFlag)}, good[1:]...), false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFSM()
			var err error
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("Apply panicked: %v", r)
					}
				}()
				err = apply(f, 1, tc.data)
			}()
			if (err != nil) != tc.wantErr || (err != nil && !errors.Is(err, ErrInvalid)) {
				t.Fatalf("err = %v, want error %v (ErrInvalid)", err, tc.wantErr)
			}
			if applied := len(f.events(0)) > 0; applied != tc.applied {
				t.Fatalf("applied = %v", applied)
			}
			if len(f.migrations()) != 0 || len(f.hosts()) != 0 {
				t.Fatal("a refused entry changed the state")
			}
		})
	}
}

// FuzzFSMApply: no input makes Apply panic; what it refuses leaves the
// state unchanged.
func FuzzFSMApply(f *testing.F) {
	f.Add([]byte{byte(PutMigrationType)})
	f.Add(append([]byte{byte(PutMigrationType)}, `{"record":{"id":"m","container":"c","from":"a","to":"b","phase":"Planned"}}`...))
	f.Add(append([]byte{byte(AcquireLockType)}, `{"name":"l","holder":"h","limit":-1}`...))
	f.Fuzz(func(t *testing.T, b []byte) {
		m := newFSM()
		before, _ := m.s.marshal()
		if err, _ := m.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: b}).(error); err != nil {
			if after, _ := m.s.marshal(); !bytes.Equal(before, after) {
				t.Fatalf("refused entry %q changed the state", b)
			}
		}
	})
}

// Commands other agents forward through POST /v1/apply are validated in
// full, and migration records are never accepted that way.
func TestCheckForwarded(t *testing.T) {
	rec := MigrationRecord{ID: "m1", Container: "c", From: "h1", To: "h2", Phase: "Planned"}
	for _, tc := range []struct {
		name string
		data []byte
		ok   bool
	}{
		{"event", cmd(t, AppendEventType, AppendEventRequest{Event: Event{ID: "e", Kind: "k"}}), true},
		{"lock", cmd(t, AcquireLockType, AcquireLockRequest{Name: "reboot", Holder: "h1", Limit: 1}), true},
		{"migration record", cmd(t, PutMigrationType, PutMigrationRequest{Record: rec}), false},
		{"delete migration", cmd(t, DeleteMigrationType, DeleteMigrationRequest{ID: "m1"}), false},
		{"garbage", []byte("\x06{"), false},
		{"empty", nil, false},
		{"unknown", []byte("\x63{}"), false},
		{"lock limit", cmd(t, AcquireLockType, AcquireLockRequest{Name: "reboot", Holder: "h1", Limit: 1 << 30}), false},
	} {
		err := checkForwarded(tc.data)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

func TestFSMReadsReturnCopies(t *testing.T) {
	f := newFSM()
	rec := MigrationRecord{ID: "m1", Container: "c", From: "h1", To: "h2", Phase: "Planned", History: []PhaseChange{{Phase: "Planned"}},
		Precopy: &PrecopyReport{Rounds: []PrecopyRound{{Round: 1}}}}
	if err := apply(f, 1, cmd(t, PutMigrationType, PutMigrationRequest{Record: rec})); err != nil {
		t.Fatal(err)
	}
	if err := apply(f, 2, cmd(t, AcquireLockType, AcquireLockRequest{Name: "l", Holder: "h1"})); err != nil {
		t.Fatal(err)
	}
	m, _ := f.migration("m1")
	m.History[0].Phase = "mutated"
	m.Precopy.Rounds[0].Round = 9
	f.locks()[0].Holders["h9"] = LockHolder{}
	if m2, _ := f.migration("m1"); m2.History[0].Phase != "Planned" || m2.Precopy.Rounds[0].Round != 1 {
		t.Errorf("migration changed through a read: %+v", m2)
	}
	if len(f.locks()[0].Holders) != 1 {
		t.Error("lock changed through a read")
	}
}

type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { return nil }

func TestFSMSnapshotRestore(t *testing.T) {
	f := newFSM()
	steps := []struct {
		typ MessageType
		req any
	}{
		{SetHostType, SetHostRequest{Name: "h1", Cordoned: ptr(true), Reason: "maintenance", At: t0}},
		{PutMigrationType, PutMigrationRequest{Record: MigrationRecord{ID: "m1", Container: "web", From: "h1", To: "h2", Phase: "Done",
			History: []PhaseChange{{Phase: "Planned", At: t0}, {Phase: "Done", At: t0.Add(time.Second)}}, Bytes: 1 << 20,
			Compression: "zstd", Downtime: 1500 * time.Millisecond, StartedAt: t0, FinishedAt: t0.Add(2 * time.Second)}}},
		{AcquireLockType, AcquireLockRequest{Name: "reboot", Holder: "h1", Limit: 1, At: t0}},
		{AppendEventType, AppendEventRequest{Event: Event{ID: "e1", Kind: "trigger", Data: map[string]string{"k": "v"}, At: t0}}},
	}
	for i, s := range steps {
		if err := apply(f, uint64(i+1), cmd(t, s.typ, s.req)); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Writes after the snapshot must not leak into it.
	if err := apply(f, 10, cmd(t, DeleteMigrationType, DeleteMigrationRequest{ID: "m1"})); err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	g := newFSM()
	if err := g.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	if len(g.migrations()) != 1 {
		t.Fatalf("restored migrations = %+v", g.migrations())
	}
	f.mu.Lock()
	f.s.Migrations = g.s.Migrations // put back what the snapshot saw, then compare all
	want := f.s.clone()
	f.mu.Unlock()
	if !reflect.DeepEqual(want, g.s) {
		t.Errorf("restored state differs:\n got %+v\nwant %+v", g.s, want)
	}
}
