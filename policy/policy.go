// Package policy owns orchestrate's automatic reasons to move containers:
// what counts as a reason (a Trigger), where reasons come from (Sources),
// and the pure decisions that follow from them (rebalance and evacuation
// plans, the reboot sequence, maintenance windows).
//
// Triggers flow one way: a Source watches something outside orchestrate (a
// cloud metadata service in policy/spot, a cron schedule, a reboot sentinel)
// and sends normalised Trigger values on a channel that the caller owns. The
// leader (package cluster) reads that channel, deduplicates by Trigger.ID
// across hosts, and reacts (cordon, drain, rebalance) using the planners here.
// policy never acts on the cluster itself and imports nothing from
// orchestrate, so every decision can be tested as a table.
package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// Trigger kinds. Kind says what will happen to Host; Detail carries the
// provider's own words for logs and operators.
const (
	// KindSpotTerminate: the cloud will reclaim (terminate) a spot or
	// preemptible instance at Deadline.
	KindSpotTerminate = "spot-terminate"
	// KindSpotStop: the cloud will stop the spot instance at Deadline.
	KindSpotStop = "spot-stop"
	// KindSpotHibernate: the cloud will hibernate the spot instance at Deadline.
	KindSpotHibernate = "spot-hibernate"
	// KindRebalanceRecommendation: the cloud says the spot instance is at
	// elevated risk of interruption. No deadline.
	KindRebalanceRecommendation = "rebalance-recommendation"
	// KindMaintenance: scheduled host maintenance (reboot, retirement,
	// redeploy, live migration, freeze); Detail names the provider's event type.
	KindMaintenance = "maintenance"
	// KindRebootPending: the host itself needs a reboot (new kernel, sentinel).
	KindRebootPending = "reboot-pending"
	// KindRebalanceSchedule: the rebalance schedule fired; Host is empty
	// because the whole cluster is concerned.
	KindRebalanceSchedule = "rebalance-schedule"
)

// Trigger is one normalised reason to move containers, whatever its source.
type Trigger struct {
	// ID is a content hash (see TriggerID): the same notice seen twice, or
	// by two watchers, has the same ID, so consumers dedup on it.
	ID   string
	Kind string
	// Host is the orchestrate host concerned; empty for cluster-wide triggers.
	Host string
	// Deadline is when the host is expected to go away; zero when unknown or
	// when there is none (rebalance recommendation, schedule).
	Deadline time.Time
	// Source is the Name of the Source that produced the trigger.
	Source string
	// Detail is free text for logs: the provider's event type, code, id.
	Detail string
	// EventID is the provider's own event id when it has one (Azure's
	// EventId, needed for spot.AzureWatcher.Ack; AWS's maintenance EventId).
	EventID string
}

// Source watches one origin of triggers.
//
// Run sends each distinct trigger once on out, which the caller owns and
// never closes while Run is running. Run blocks until ctx ends and then
// returns nil; transient failures (unreachable metadata service, bad
// answers) are logged and retried with backoff rather than returned, so a
// Source never ends the errgroup it runs in because the cloud hiccupped.
// A non-nil error means the Source cannot work at all (bad configuration).
type Source interface {
	Name() string
	Run(ctx context.Context, out chan<- Trigger) error
}

// TriggerID is the content hash used as Trigger.ID: sha256 over provider,
// kind, host, deadline (RFC 3339, UTC; empty when zero) and the provider's
// own event id, hex-encoded and truncated to 32 characters (128 bits).
func TriggerID(provider, kind, host string, deadline time.Time, eventID string) string {
	var d string
	if !deadline.IsZero() {
		d = deadline.UTC().Format(time.RFC3339Nano)
	}
	h := sha256.New()
	for _, s := range []string{provider, kind, host, d, eventID} {
		h.Write([]byte(s))
		h.Write([]byte{0}) // separator: ("ab","c") and ("a","bc") must differ
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// Checker says whether this host needs a reboot. A failure to find out is an
// error, never a silent "no".
type Checker interface {
	RebootRequired(ctx context.Context) (required bool, reason string, err error)
}

// Blocker says whether a disruptive action must wait (an alert firing, a
// pod that must not move). A failure to find out is an error, never a
// silent "not blocked".
type Blocker interface {
	IsBlocked(ctx context.Context) (blocked bool, reason string, err error)
}

// Rebooter reboots this host. It returns once the reboot has been
// requested; on success the process is usually killed shortly after.
type Rebooter interface {
	Reboot(ctx context.Context) error
}
