package cluster

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"
)

func snap(id string, at time.Time) SnapshotRecord {
	return SnapshotRecord{ID: id, Container: "c-" + id, Name: "web", Host: "h1", StoreHost: "h2", File: id + ".tar", At: at, Size: 42, SHA256: "ab"}
}

func TestFSMSnapshotRecords(t *testing.T) {
	tests := []struct {
		name    string
		typ     MessageType
		req     any
		wantErr error
		want    []string // IDs after the step, oldest first
	}{
		{"put first", PutSnapshotType, PutSnapshotRequest{Record: snap("s2", t0.Add(time.Second))}, nil, []string{"s2"}},
		{"put older one sorts first", PutSnapshotType, PutSnapshotRequest{Record: snap("s1", t0)}, nil, []string{"s1", "s2"}},
		{"duplicate id conflicts", PutSnapshotType, PutSnapshotRequest{Record: snap("s1", t0)}, ErrConflict, []string{"s1", "s2"}},
		{"missing sha256 is invalid", PutSnapshotType, PutSnapshotRequest{Record: SnapshotRecord{ID: "x", StoreHost: "h", File: "x.tar"}}, ErrInvalid, []string{"s1", "s2"}},
		{"missing store host is invalid", PutSnapshotType, PutSnapshotRequest{Record: SnapshotRecord{ID: "x", File: "x.tar", SHA256: "ab"}}, ErrInvalid, []string{"s1", "s2"}},
		{"put third", PutSnapshotType, PutSnapshotRequest{Record: snap("s3", t0.Add(2*time.Second))}, nil, []string{"s1", "s2", "s3"}},
		{"delete some, unknown ignored", DeleteSnapshotsType, DeleteSnapshotsRequest{IDs: []string{"s1", "nope", "s3"}}, nil, []string{"s2"}},
		{"delete again is harmless", DeleteSnapshotsType, DeleteSnapshotsRequest{IDs: []string{"s1"}}, nil, []string{"s2"}},
	}
	f := newFSM()
	for i, tc := range tests {
		err := apply(f, uint64(i+1), cmd(t, tc.typ, tc.req))
		if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
			t.Fatalf("%s: err = %v, want %v", tc.name, err, tc.wantErr)
		}
		var got []string
		for _, s := range f.snapshots() {
			got = append(got, s.ID)
		}
		if len(got) != len(tc.want) {
			t.Fatalf("%s: records %v, want %v", tc.name, got, tc.want)
		}
		for j := range got {
			if got[j] != tc.want[j] {
				t.Fatalf("%s: records %v, want %v", tc.name, got, tc.want)
			}
		}
	}
	if s, err := f.snapshot("s2"); err != nil || s.Size != 42 || s.StoreHost != "h2" {
		t.Fatalf("snapshot s2 = %+v, %v", s, err)
	}
	if _, err := f.snapshot("s1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted snapshot: %v", err)
	}
}

// TestFSMSnapshotRecordsSurviveSnapshotRestore: raft snapshots carry the
// records, and state persisted before they existed restores with none.
func TestFSMSnapshotRecordsSurviveSnapshotRestore(t *testing.T) {
	f := newFSM()
	if err := apply(f, 1, cmd(t, PutSnapshotType, PutSnapshotRequest{Record: snap("s1", t0)})); err != nil {
		t.Fatal(err)
	}
	fs, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := fs.(*fsmSnapshot).s.marshal()
	if err != nil {
		t.Fatal(err)
	}
	g := newFSM()
	if err := g.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
		t.Fatal(err)
	}
	if s := g.snapshots(); len(s) != 1 || s[0].ID != "s1" || !s[0].At.Equal(t0) {
		t.Fatalf("restored records: %+v", s)
	}
	old := newFSM()
	if err := old.Restore(io.NopCloser(bytes.NewReader([]byte(`{"hosts":{},"migrations":{},"locks":{},"events":[]}`)))); err != nil {
		t.Fatal(err)
	}
	if err := apply(old, 2, cmd(t, PutSnapshotType, PutSnapshotRequest{Record: snap("s9", t0)})); err != nil {
		t.Fatalf("put after restoring old state: %v", err)
	}
}
