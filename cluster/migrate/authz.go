package migrate

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/transfer"
)

// Authority answers what the replicated state allows this host to do
// (cluster.Cluster). A member proves who it is with the cluster secret and
// its SSH key; what it may ask for follows from the migration records the
// leader wrote and from the leader's step signature:
//
//   - migrate-out, push-image, abort, resume and remove are steps only the
//     current leader orders (LeaderStep), and each acts only as the named
//     migration record says: on that record's container, on the host the
//     record names for that role, in a phase where the step belongs;
//   - a restore, image or pre-copy stream is accepted only while a
//     migration record names this host as its target and the stream's
//     sender (authenticated by its SSH client key) as its source, before
//     Confirming;
//   - the target's transfer address comes from the member list, never from
//     the caller.
type Authority interface {
	// LeaderStep wraps the handler of a step only the current leader may
	// order.
	LeaderStep(h http.HandlerFunc) http.HandlerFunc
	// Migration returns the local replica's record.
	Migration(id string) (cluster.MigrationRecord, error)
	// Member returns gossip's view of a host.
	Member(name string) (cluster.Member, bool)
}

var _ Authority = (*cluster.Cluster)(nil)

// SetAuthority sets what authorises the steps; call before Register. An
// agent without one refuses every step and stream that needs authorising.
func (a *Agent) SetAuthority(auth Authority) { a.auth = auth }

// defaultRecordWait is how long a step waits for this host's replica to
// show the record as the step needs it: the leader writes a record, then
// asks, and this replica may be a moment behind.
const defaultRecordWait = 3 * time.Second

// errNoAuthority: the agent was started without an Authority.
var errNoAuthority = fmt.Errorf("%w: this agent authorises no steps", cluster.ErrForbidden)

// leaderStep wraps h with the authority's leader check.
func (a *Agent) leaderStep(h http.HandlerFunc) http.HandlerFunc {
	if a.auth == nil {
		return func(w http.ResponseWriter, r *http.Request) { writeErr(w, errNoAuthority) }
	}
	return a.auth.LeaderStep(h)
}

// authorised returns migration id's record once why(record) is "" (the
// record allows the step), waiting up to a.recordWait for the replica;
// otherwise an error wrapping cluster.ErrForbidden that says why not.
func (a *Agent) authorised(ctx context.Context, step, id string, why func(m cluster.MigrationRecord) string) (cluster.MigrationRecord, error) {
	if a.auth == nil {
		return cluster.MigrationRecord{}, errNoAuthority
	}
	if id == "" {
		return cluster.MigrationRecord{}, fmt.Errorf("%w: %s names no migration", cluster.ErrForbidden, step)
	}
	deadline := time.Now().Add(a.recordWait)
	for {
		m, err := a.auth.Migration(id)
		reason := ""
		switch {
		case errors.Is(err, cluster.ErrNotFound):
			reason = "no such migration record here"
		case err != nil:
			return m, err
		default:
			reason = why(m)
		}
		if reason == "" {
			return m, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			a.log.Warn("refused a step the records do not call for", "step", step, "migration", id, "why", reason)
			return m, fmt.Errorf("%w: %s for migration %s on %s: %s", cluster.ErrForbidden, step, id, a.host, reason)
		}
		if !sleepCtx(ctx, 50*time.Millisecond) {
			return m, ctx.Err()
		}
	}
}

// asSource checks that this host is the record's source, for container.
func (a *Agent) asSource(container string, phases ...string) func(cluster.MigrationRecord) string {
	return func(m cluster.MigrationRecord) string {
		switch {
		case m.From != a.host:
			return fmt.Sprintf("its source is %s", m.From)
		case container != "" && m.Container != container:
			return fmt.Sprintf("it moves container %s, not %s", short(m.Container), short(container))
		case !inPhase(m.Phase, phases):
			return "it is " + m.Phase
		}
		return ""
	}
}

// asTarget checks that this host is the record's target, for container.
func (a *Agent) asTarget(container string, phases ...string) func(cluster.MigrationRecord) string {
	return func(m cluster.MigrationRecord) string {
		switch {
		case m.To != a.host:
			return fmt.Sprintf("its target is %s", m.To)
		case container != "" && m.Container != container:
			return fmt.Sprintf("it moves container %s, not %s", short(m.Container), short(container))
		case !inPhase(m.Phase, phases):
			return "it is " + m.Phase
		}
		return ""
	}
}

// fromSource adds to asTarget that the stream's sender is the record's
// source.
func (a *Agent) fromSource(ctx context.Context, container string, phases ...string) func(cluster.MigrationRecord) string {
	peer := senderName(ctx)
	target := a.asTarget(container, phases...)
	return func(m cluster.MigrationRecord) string {
		if why := target(m); why != "" {
			return why
		}
		if peer == "" || peer != m.From {
			return fmt.Sprintf("the stream comes from %q, its source is %s", peer, m.From)
		}
		return ""
	}
}

func inPhase(phase string, phases []string) bool {
	for _, p := range phases {
		if p == phase {
			return true
		}
	}
	return false
}

// The phases each step belongs to.
var (
	outPhases     = []string{Planned, Checkpointing, Transferring, Restoring}
	receivePhases = outPhases
	abortPhases   = []string{RollingBack, RolledBack}
	resumePhases  = []string{RollingBack}
	removePhases  = []string{Confirming, Done}
	imagePhases   = []string{Planned}
)

// targetAddr is the target's transfer address as gossip has it.
func (a *Agent) targetAddr(host string) (string, error) {
	m, ok := a.auth.Member(host)
	if !ok || m.TransferAddr == "" {
		return "", fmt.Errorf("target %s publishes no transfer address: %w", host, cluster.ErrNotFound)
	}
	return m.TransferAddr, nil
}

// senderName is the member a stream comes from, as the transfer server
// bound it to its SSH client key ("" when unknown).
func senderName(ctx context.Context) string {
	s, _ := transfer.Sender(ctx)
	return s
}
