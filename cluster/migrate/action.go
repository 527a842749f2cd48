package migrate

import (
	"fmt"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
)

// ActionKind is what the leader does next for one migration.
type ActionKind string

// Actions. Every one that asks a host for something is idempotent on that
// host: asking twice is harmless, so the leader simply asks again after a
// failed call, a failed write or a change of leader.
const (
	// ActWait: nothing to do until something changes (a step is in flight,
	// the batch is full, a host must come back).
	ActWait ActionKind = "wait"
	// ActFail records EvFailed with Reason (and Untouched): the rollback
	// starts.
	ActFail ActionKind = "fail"
	// ActCheckImage asks the target whether it holds the record's image.
	ActCheckImage ActionKind = "check-image"
	// ActPushImage asks the source to send the image to the target, then
	// records EvImageSent.
	ActPushImage ActionKind = "push-image"
	// ActMigrateOut asks the source to migrate the container out. A source
	// already doing so for this migration attaches the caller to that run
	// (or replays its outcome) instead of checkpointing again.
	ActMigrateOut ActionKind = "migrate-out"
	// ActInspectTarget looks at the container on the target once the
	// source's step ended (it waits for the target's container lock, so a
	// restore in flight ends first).
	ActInspectTarget ActionKind = "inspect-target"
	// ActConfirm records EvRunning: the target runs the container.
	ActConfirm ActionKind = "confirm"
	// ActRemoveSource asks the source to remove its stopped copy, then
	// records EvSourceRemoved.
	ActRemoveSource ActionKind = "remove-source"
	// ActAbortTarget asks the target to remove any copy it holds.
	ActAbortTarget ActionKind = "abort-target"
	// ActResumeSource asks the source to run the container again from its
	// kept checkpoint (a running container is left alone), then records
	// EvResumed.
	ActResumeSource ActionKind = "resume-source"
	// ActRolledBack records EvResumed without asking anyone: the container
	// was never touched.
	ActRolledBack ActionKind = "rolled-back"
)

// Action is NextAction's answer.
type Action struct {
	Kind      ActionKind
	Reason    string // why, for ActFail and ActWait
	Untouched bool   // for ActFail: the container was never frozen
}

// Outcome is what the leader learnt from the source's migrate-out this term.
type Outcome int

// Outcomes of migrate-out.
const (
	// OutNone: not asked this term.
	OutNone Outcome = iota
	// OutRunning: the call is in flight.
	OutRunning
	// OutRestored: the source reports the target restored the container.
	OutRestored
	// OutFailed: the source reports a failure.
	OutFailed
	// OutLost: the call failed or ended without an outcome (the source or
	// the link went away).
	OutLost
)

// TargetState is what the leader saw of the container on the target.
type TargetState int

// Target observations.
const (
	// TargetUnknown: not looked at since the source's step ended.
	TargetUnknown TargetState = iota
	TargetRunning
	TargetNotRunning
	// TargetUnreachable: the target's agent did not answer, or could not
	// tell (its engine failed).
	TargetUnreachable
)

// Observation is what the leader knows about a migration besides its
// record: gossip, the clock, and what it learnt from hosts this term. A new
// leader starts with zero values and learns again (every step is safe to
// repeat).
type Observation struct {
	Now         time.Time
	SourceAlive bool
	TargetAlive bool
	// TargetDeadFor is how long the target has not been alive (0 when
	// alive).
	TargetDeadFor time.Duration
	// MayStart: the record's batch has room for one more migration.
	MayStart bool
	// Busy: a step for this record is in flight.
	Busy bool
	// ImageChecked and TargetHasImage: what the target said about the image.
	ImageChecked   bool
	TargetHasImage bool
	// Out is the outcome of this term's migrate-out; OutErr its failure and
	// OutUntouched whether the source says the container was never frozen.
	Out          Outcome
	OutErr       string
	OutUntouched bool
	// Target is the container's state on the target, looked at after Out
	// ended; TargetTries counts the looks that got no answer.
	Target      TargetState
	TargetTries int
	// TargetAborted: the target confirmed it holds no copy (this term).
	TargetAborted bool
}

// TargetTries is how many times the leader asks a target that does not
// answer whether it runs the container, before it rolls back (the rollback
// then waits for the target to confirm it holds no copy).
const TargetTries = 3

// DeadTargetGrace is how long a rollback waits for a target that is not
// alive before it resumes the source without the target's word: a target
// host that is gone for good must not keep the container from running. The
// target's agent removes its copy when it comes back (Agent.Reconcile).
const DeadTargetGrace = 2 * time.Minute

// NextAction decides the next step for migration m from what the leader
// observed. It is pure: the leader's reconciler calls it for every
// unfinished record on every pass and carries out what it returns, so a
// failed call or write is simply decided again on the next pass, and a new
// leader carries on from the record.
//
// Before Confirming a failure rolls back; the target decides between back
// and forward once the source's step has ended: a target that runs the
// container is confirmed, whatever the source said. From Confirming on the
// leader only rolls forward.
func NextAction(m cluster.MigrationRecord, o Observation) Action {
	if Terminal(m.Phase) {
		return Action{Kind: ActWait, Reason: "finished"}
	}
	if o.Busy {
		return Action{Kind: ActWait, Reason: "a step is in flight"}
	}
	switch m.Phase {
	case Planned, Checkpointing, Transferring, Restoring:
		return beforeConfirm(m, o)
	case Confirming:
		return Action{Kind: ActRemoveSource}
	case RollingBack:
		if m.Untouched {
			return Action{Kind: ActRolledBack}
		}
		if !o.TargetAborted {
			switch {
			case o.TargetAlive:
				return Action{Kind: ActAbortTarget}
			case o.TargetDeadFor < DeadTargetGrace:
				return Action{Kind: ActWait, Reason: fmt.Sprintf("target %s must confirm it holds no copy first", m.To)}
			}
			// Gone too long: resume anyway (its agent cleans up on return).
		}
		return Action{Kind: ActResumeSource}
	}
	return Action{Kind: ActWait, Reason: "unknown phase " + m.Phase}
}

func beforeConfirm(m cluster.MigrationRecord, o Observation) Action {
	switch o.Out {
	case OutRunning:
		return Action{Kind: ActWait, Reason: "the source is migrating out"}
	case OutRestored, OutFailed, OutLost:
		if o.Out != OutRestored && o.OutUntouched {
			return Action{Kind: ActFail, Reason: o.OutErr, Untouched: true}
		}
		reason := o.OutErr
		if o.Out == OutRestored {
			reason = fmt.Sprintf("target %s does not run %s after the restore", m.To, nameOf(m))
		} else if reason == "" {
			reason = fmt.Sprintf("the source %s stopped answering mid-migration", m.From)
		}
		switch o.Target {
		case TargetUnknown:
			return Action{Kind: ActInspectTarget}
		case TargetRunning:
			return Action{Kind: ActConfirm}
		case TargetUnreachable:
			if !o.TargetAlive {
				return Action{Kind: ActFail, Reason: reason + fmt.Sprintf("; the target %s is not alive to confirm it", m.To)}
			}
			if o.TargetTries < TargetTries {
				return Action{Kind: ActInspectTarget}
			}
			return Action{Kind: ActFail, Reason: reason + fmt.Sprintf("; the target %s cannot tell whether it runs the container", m.To)}
		}
		return Action{Kind: ActFail, Reason: reason}
	}
	// Not asked this term. A new record starts; one a previous leader left
	// mid-flight asks the source again, which attaches to its run, replays
	// the outcome, or refuses a container that no longer runs there.
	if m.Phase != Planned || m.SourceAsked {
		return Action{Kind: ActMigrateOut}
	}
	switch {
	case !m.Deadline.IsZero() && o.Now.After(m.Deadline):
		return Action{Kind: ActFail, Untouched: true, Reason: "drain deadline passed before this migration started; the container was not touched"}
	case !o.TargetAlive:
		return Action{Kind: ActFail, Untouched: true, Reason: fmt.Sprintf("target %s is not alive", m.To)}
	case !o.SourceAlive:
		return Action{Kind: ActWait, Reason: fmt.Sprintf("source %s is not alive", m.From)}
	case !o.MayStart:
		return Action{Kind: ActWait, Reason: "the batch is full"}
	case m.Image != "" && !o.ImageChecked:
		return Action{Kind: ActCheckImage}
	case m.Image != "" && !o.TargetHasImage:
		return Action{Kind: ActPushImage}
	}
	return Action{Kind: ActMigrateOut}
}

func nameOf(m cluster.MigrationRecord) string {
	if m.Name != "" {
		return m.Name
	}
	return short(m.Container)
}
