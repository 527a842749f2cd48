package scale

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestGossipViewAt(t *testing.T) {
	log := `time=2026-11-30T20:39:07.948Z level=INFO msg="agent started" node=s040 gossip=127.0.0.49:30156
time=2026-11-30T20:39:07.950Z level=INFO msg="member alive" node=s040 member=s040 addr=127.0.0.49:30156
time=2026-11-30T20:39:09.583Z level=INFO msg="member alive" node=s040 member=s001 addr=127.0.0.10:30000
time=2026-11-30T20:39:09.600Z level=INFO msg="member alive" node=s040 member=s002 addr=127.0.0.11:30004
time=2026-11-30T20:39:10.100Z level=INFO msg="member dead" node=s040 member=s002 addr=127.0.0.11:30004
time=2026-11-30T20:39:10.200Z level=INFO msg="joined cluster" node=s040 contacted=3
time=2026-11-30T20:39:11.250Z level=INFO msg="member alive" node=s040 member=s002 addr=127.0.0.11:30004
time=2026-11-30T20:39:12.000Z level=WARN msg="gossip metadata update failed" node=s040 err="timeout waiting for update broadcast"
`
	a := &Agent{Name: "s040", LogFile: filepath.Join(t.TempDir(), "agent.log")}
	if err := os.WriteFile(a.LogFile, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := GossipViewAt(a, 3)
	want := time.Date(2026, 11, 30, 20, 39, 11, 250e6, time.UTC)
	if err != nil || !got.Equal(want) {
		t.Fatalf("GossipViewAt = %v, %v; want %v (the second time it reached 3, after s002 came back)", got, err, want)
	}
	if _, err := GossipViewAt(a, 4); err == nil {
		t.Fatal("a log that never reaches 4 alive: no error")
	}
}
