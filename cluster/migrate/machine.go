// Package migrate owns the live-migration protocol: the pure state machine
// a migration record moves through (Next), the leader's coordinator that
// drives records to an end, and the agent-side steps (checkpoint and stream
// on the source, restore on the target, resume or remove afterwards).
//
// Data flow: the leader plans a Move, records it Planned in raft, sends the
// image ahead if the target lacks it, then asks the source agent to migrate
// out. The source checkpoints (the container freezes, Keep: true so it can
// roll back) and streams the archive through the transfer layer into the
// target agent's restore handler; the target answers once the container
// runs. The leader confirms on the target, then tells the source to remove
// its stopped copy. Every step is a phase change stamped by the leader and
// applied through raft, so a new leader can resume or roll back from the
// record: before Confirming, rollback removes any copy on the target and
// resumes the source in place; from Confirming on, it only rolls forward.
package migrate

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
)

// Phases of a migration record.
const (
	Planned       = "Planned"
	Checkpointing = "Checkpointing"
	Transferring  = "Transferring"
	Restoring     = "Restoring"
	Confirming    = "Confirming"
	Done          = "Done"
	RollingBack   = "RollingBack"
	RolledBack    = "RolledBack"
)

// EventKind is what happened to a migration.
type EventKind string

// Events, in the order of the happy path.
const (
	// EvImageSent: the target lacked the image and now has it (no phase change).
	EvImageSent EventKind = "image-sent"
	// EvAsked: the leader is about to ask the source to migrate out (no
	// phase change). From here a rollback must undo whatever the source
	// may have done: the record can no longer roll back untouched.
	EvAsked EventKind = "asked"
	// EvFrozen: the source started the checkpoint; the container is frozen.
	EvFrozen EventKind = "frozen"
	// EvStreaming: archive bytes are flowing to the target.
	EvStreaming EventKind = "streaming"
	// EvReceived: the target has the whole archive and is restoring.
	EvReceived EventKind = "received"
	// EvRunning: the target reports the container running.
	EvRunning EventKind = "running"
	// EvSourceRemoved: the source removed its stopped copy.
	EvSourceRemoved EventKind = "source-removed"
	// EvFailed: a step failed; before Confirming this starts a rollback.
	EvFailed EventKind = "failed"
	// EvResumed: rollback finished; the container runs on the source again.
	EvResumed EventKind = "resumed"
)

// Event is one input to Next. At is stamped by the leader, on its own
// clock, before the result goes through raft, so replaying the log gives
// the same record.
type Event struct {
	Kind EventKind
	At   time.Time
	Note string
	// Optional data carried by some events.
	Bytes       int64
	Compression string
	Checkpoint  *engine.Stats
	Restore     *engine.Stats
	Err         string
	// Untouched (with EvFailed): the container was never frozen, so the
	// rollback has nothing to undo.
	Untouched bool
	// Downtime (with EvRunning) as the source measured it on its own
	// clock, from the freeze until the target answered that it runs.
	Downtime time.Duration
	// Method and Precopy: the transfer method that ran (recorded when the
	// record names none) and its pre-copy report, when known.
	Method  string
	Precopy *cluster.PrecopyReport
}

// ErrTransition is returned for an event that is not allowed in a phase.
var ErrTransition = errors.New("invalid migration transition")

// Terminal reports whether phase is an end state.
func Terminal(phase string) bool { return phase == Done || phase == RolledBack }

// BeforeConfirm reports whether a failure in phase still rolls back: the
// target has not been confirmed, so the source's copy is the one to keep.
func BeforeConfirm(phase string) bool {
	switch phase {
	case Planned, Checkpointing, Transferring, Restoring:
		return true
	}
	return false
}

// order of the forward phases, so events may skip phases that streaming
// overlapped (a fast migration reports running before anyone saw bytes).
var order = map[string]int{Planned: 0, Checkpointing: 1, Transferring: 2, Restoring: 3, Confirming: 4, Done: 5}

// forward gives the phase an event moves to on the happy path.
var forward = map[EventKind]string{
	EvFrozen:        Checkpointing,
	EvStreaming:     Transferring,
	EvReceived:      Restoring,
	EvRunning:       Confirming,
	EvSourceRemoved: Done,
}

// Next returns the record after ev. It is pure: the same record and event
// always give the same result, and m is not modified. It returns an error
// (wrapping ErrTransition) for an event the phase does not allow; the
// caller then keeps the record as it was.
func Next(m cluster.MigrationRecord, ev Event) (cluster.MigrationRecord, error) {
	if Terminal(m.Phase) {
		return m, fmt.Errorf("migration %s is %s: %w: %s", m.ID, m.Phase, ErrTransition, ev.Kind)
	}
	n := m
	n.History = slices.Clone(m.History)
	if ev.Bytes > 0 {
		n.Bytes = ev.Bytes
	}
	if ev.Compression != "" {
		n.Compression = ev.Compression
	}
	if ev.Checkpoint != nil {
		n.Checkpoint = *ev.Checkpoint
	}
	if ev.Restore != nil {
		n.Restore = *ev.Restore
	}
	if ev.Method != "" && n.Method == "" {
		n.Method = ev.Method // the source's default, when none was asked for
	}
	if ev.Precopy != nil {
		n.Precopy = ev.Precopy
	}
	to := ""
	switch ev.Kind {
	case EvAsked:
		if m.Phase != Planned {
			return m, fmt.Errorf("migration %s: %w: %s in %s", m.ID, ErrTransition, ev.Kind, m.Phase)
		}
		n.SourceAsked = true
		return n, nil
	case EvImageSent:
		if m.Phase != Planned {
			return m, fmt.Errorf("migration %s: %w: %s in %s", m.ID, ErrTransition, ev.Kind, m.Phase)
		}
		n.History = append(n.History, cluster.PhaseChange{Phase: m.Phase, At: ev.At, Note: noteOr(ev.Note, "image sent to "+m.To)})
		return n, nil
	case EvFailed:
		if !BeforeConfirm(m.Phase) {
			return m, fmt.Errorf("migration %s: %w: failure in %s rolls forward, not back", m.ID, ErrTransition, m.Phase)
		}
		to = RollingBack
		n.Error = ev.Err
		// A container that was frozen (any phase past Planned) always has
		// something to undo.
		n.Untouched = ev.Untouched && m.Phase == Planned
	case EvResumed:
		if m.Phase != RollingBack {
			return m, fmt.Errorf("migration %s: %w: %s in %s", m.ID, ErrTransition, ev.Kind, m.Phase)
		}
		to = RolledBack
	default:
		f, ok := forward[ev.Kind]
		if !ok {
			return m, fmt.Errorf("migration %s: %w: unknown event %q", m.ID, ErrTransition, ev.Kind)
		}
		cur, fwd := order[m.Phase]
		if !fwd || order[f] < cur {
			return m, fmt.Errorf("migration %s: %w: %s in %s", m.ID, ErrTransition, ev.Kind, m.Phase)
		}
		// Done needs the target confirmed first: never remove the source's
		// copy of a container nobody saw running on the target.
		if ev.Kind == EvSourceRemoved && m.Phase != Confirming {
			return m, fmt.Errorf("migration %s: %w: source removed before the target was confirmed", m.ID, ErrTransition)
		}
		if order[f] == cur {
			return n, nil // a repeated progress report
		}
		to = f
	}
	if ev.Kind == EvFrozen && n.FrozenAt.IsZero() {
		n.FrozenAt = ev.At
	}
	// Downtime is never computed across two clocks: it is the source's own
	// measurement, or unknown (a new leader rolled forward without it).
	if ev.Kind == EvRunning && ev.Downtime > 0 {
		n.Downtime = ev.Downtime
	}
	n.Phase = to
	n.History = append(n.History, cluster.PhaseChange{Phase: to, At: ev.At, Note: ev.Note})
	if Terminal(to) {
		n.FinishedAt = ev.At
	}
	return n, nil
}

func noteOr(note, def string) string {
	if note != "" {
		return note
	}
	return def
}
