package migrate

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
)

var allPhases = []string{Planned, Checkpointing, Transferring, Restoring, Confirming, Done, RollingBack, RolledBack}

var allEvents = []EventKind{EvImageSent, EvAsked, EvFrozen, EvStreaming, EvReceived, EvRunning, EvSourceRemoved, EvFailed, EvResumed}

// TestNextTable checks every (phase, event) pair against the protocol.
func TestNextTable(t *testing.T) {
	// want[phase][event] = resulting phase; absent means the event is refused.
	want := map[string]map[EventKind]string{
		Planned: {EvImageSent: Planned, EvAsked: Planned, EvFrozen: Checkpointing, EvStreaming: Transferring, EvReceived: Restoring,
			EvRunning: Confirming, EvFailed: RollingBack},
		Checkpointing: {EvFrozen: Checkpointing, EvStreaming: Transferring, EvReceived: Restoring, EvRunning: Confirming, EvFailed: RollingBack},
		Transferring:  {EvStreaming: Transferring, EvReceived: Restoring, EvRunning: Confirming, EvFailed: RollingBack},
		Restoring:     {EvReceived: Restoring, EvRunning: Confirming, EvFailed: RollingBack},
		Confirming:    {EvRunning: Confirming, EvSourceRemoved: Done},
		Done:          {},
		RollingBack:   {EvResumed: RolledBack},
		RolledBack:    {},
	}
	at := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	for _, ph := range allPhases {
		for _, ev := range allEvents {
			t.Run(fmt.Sprintf("%s/%s", ph, ev), func(t *testing.T) {
				m := cluster.MigrationRecord{ID: "m1", Phase: ph, History: []cluster.PhaseChange{{Phase: ph, At: at}}}
				n, err := Next(m, Event{Kind: ev, At: at.Add(time.Second), Err: "boom", Untouched: true})
				exp, ok := want[ph][ev]
				if !ok {
					if !errors.Is(err, ErrTransition) {
						t.Fatalf("got %s, %v; want ErrTransition", n.Phase, err)
					}
					if n.Phase != ph || len(n.History) != 1 {
						t.Fatalf("a refused event changed the record: %+v", n)
					}
					return
				}
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if n.Phase != exp {
					t.Fatalf("phase %s, want %s", n.Phase, exp)
				}
				if len(m.History) != 1 {
					t.Fatal("Next modified its input")
				}
				if Terminal(exp) != !n.FinishedAt.IsZero() {
					t.Fatalf("finished at %v in %s", n.FinishedAt, exp)
				}
				if ev == EvFailed && n.Error != "boom" {
					t.Fatalf("error %q not recorded", n.Error)
				}
				// Only a record still Planned can roll back untouched.
				if ev == EvFailed && n.Untouched != (ph == Planned) {
					t.Fatalf("untouched %v after a failure in %s", n.Untouched, ph)
				}
				if ev == EvAsked && !n.SourceAsked {
					t.Fatal("asked not recorded")
				}
			})
		}
	}
}

func TestHappyPathDowntime(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	m := cluster.MigrationRecord{ID: "m1", Phase: Planned, StartedAt: t0}
	steps := []Event{
		{Kind: EvImageSent, At: t0.Add(1 * time.Second)},
		{Kind: EvFrozen, At: t0.Add(2 * time.Second)},
		{Kind: EvStreaming, At: t0.Add(2100 * time.Millisecond), Compression: "zstd"},
		{Kind: EvReceived, At: t0.Add(2500 * time.Millisecond), Bytes: 1 << 20},
		{Kind: EvRunning, At: t0.Add(3 * time.Second), Downtime: 750 * time.Millisecond},
		{Kind: EvSourceRemoved, At: t0.Add(4 * time.Second)},
	}
	var err error
	for _, ev := range steps {
		if m, err = Next(m, ev); err != nil {
			t.Fatal(err)
		}
	}
	if m.Phase != Done || m.Downtime != 750*time.Millisecond || m.Bytes != 1<<20 || m.Compression != "zstd" || !m.FinishedAt.Equal(t0.Add(4*time.Second)) {
		t.Fatalf("%+v", m)
	}
	var phases []string
	for _, h := range m.History {
		phases = append(phases, h.Phase)
	}
	if fmt.Sprint(phases) != "[Planned Checkpointing Transferring Restoring Confirming Done]" {
		t.Fatalf("history %v", phases)
	}
}

// Downtime is the source's own measurement: without it the record says
// nothing, rather than subtracting one host's clock from another's.
func TestDowntimeNeverAcrossClocks(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	m := cluster.MigrationRecord{ID: "m1", Phase: Planned, StartedAt: t0}
	// The source's clock runs 30 s ahead of the leader's.
	m, _ = Next(m, Event{Kind: EvFrozen, At: t0.Add(32 * time.Second)})
	m, err := Next(m, Event{Kind: EvRunning, At: t0.Add(3 * time.Second)})
	if err != nil || m.Downtime != 0 {
		t.Fatalf("downtime %s (%v), want unknown (0)", m.Downtime, err)
	}
}
