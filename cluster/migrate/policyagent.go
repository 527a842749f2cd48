package migrate

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/reboot"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/policy"
)

// LockStore is the replicated state the policy agent needs: writes go to
// the leader (whichever it is at the time), reads come from this agent's
// replica.
type LockStore interface {
	AcquireLock(ctx context.Context, req cluster.AcquireLockRequest) error
	ReleaseLock(ctx context.Context, name, holder string) error
	AppendEvent(ctx context.Context, ev cluster.Event) error
	SetHost(ctx context.Context, req cluster.SetHostRequest) error
	Hosts() []cluster.Host
	Migrations() []cluster.MigrationRecord
	// PS lists the containers of every alive host.
	PS(ctx context.Context) cluster.PSResult
}

// Acker acknowledges a provider's event once the evacuation is done (Azure
// Scheduled Events).
type Acker interface {
	Ack(ctx context.Context, eventID string) error
}

// PolicyAgent runs on every host: it watches the host's own notice source
// and pending-reboot checker, reports triggers to the leader, and runs the
// reboot sequence for its host (rebootagent.go), automatic or asked for by
// an operator. It owns its goroutines until Run returns.
//
// Everything it waits for follows the leader: each call to the leader
// looks the leader up again, and the reboot sequence re-reads the state it
// decides on at every pass, so a failover in the middle of a drain or an
// evacuation delays the sequence instead of ending it.
type PolicyAgent struct {
	Host  string
	Store LockStore
	Lead  Leadership
	Log   *slog.Logger
	// Steps verifies the leader's signature on the steps it orders here
	// (the retry of a kept checkpoint); nil refuses them.
	Steps StepGuard

	// Spot is the notice watcher; nil when policy.spot.provider is none.
	Spot policy.Source
	// Reboot is the reboot policy; Checker decides whether one is pending
	// (only when Reboot.Enabled), Blocker whether it must wait (nil: never).
	Reboot        policy.RebootConfig
	Checker       policy.Checker
	Blocker       policy.Blocker
	CheckInterval time.Duration
	// RetryAfter is how long a reboot waits after a drain or a save that
	// did not finish before trying again.
	RetryAfter time.Duration
	// Dir is <node.data_dir>/reboot: the sequence record survives the
	// reboot there.
	Dir string
	// Local saves and restores containers on this host's disk; Containers
	// lists them. Both nil on a host without an engine (a local reboot is
	// then refused).
	Local      LocalStore
	Containers engine.Lister
	// Rebooter returns what reboots the host with cmd; nil runs cmd
	// (policy.CommandRebooter).
	Rebooter func(cmd []string) policy.Rebooter
	// Now is the clock; nil is time.Now.
	Now func() time.Time

	seqMu   sync.Mutex
	seq     *reboot.Sequence
	wake    chan struct{}
	retryAt time.Time
	noted   string
}

// Run watches until ctx ends. The reboot sequence always runs: it
// restores a local reboot's containers at start and serves `orchestrate
// reboot`, even when automatic reboots are off.
func (p *PolicyAgent) Run(ctx context.Context) error {
	p.init()
	done := make(chan struct{}, 3)
	n := 1
	go func() { defer func() { done <- struct{}{} }(); p.runReboot(ctx) }()
	if p.Spot != nil {
		n++
		go func() { defer func() { done <- struct{}{} }(); p.runSpot(ctx) }()
	}
	for ; n > 0; n-- {
		<-done
	}
	return nil
}

func (p *PolicyAgent) event(ctx context.Context, kind, action, result string, data map[string]string) {
	if err := p.appendEvent(ctx, kind, action, result, data, time.Now().UTC()); err != nil {
		p.Log.Warn("could not record event", "kind", kind, "action", action, "err", err)
	}
}

func (p *PolicyAgent) appendEvent(ctx context.Context, kind, action, result string, data map[string]string, at time.Time) error {
	d := map[string]string{}
	for k, v := range data {
		d[k] = v
	}
	d["action"], d["result"] = action, result
	return p.Store.AppendEvent(ctx, cluster.Event{ID: cluster.EventID(p.Host, kind, action, result, at.Format(time.RFC3339Nano)),
		Kind: kind, Host: p.Host, At: at, Message: action + ": " + result, Data: d})
}

// leaderCall posts to the leader, retrying while there is none or it is
// unreachable, until ctx ends.
func (p *PolicyAgent) leaderCall(ctx context.Context, path string, in, out any) error {
	for attempt := 0; ; attempt++ {
		cl, err := p.Lead.LeaderClient()
		if err == nil {
			err = cl.Do(ctx, http.MethodPost, path, in, out)
		}
		if err == nil {
			return nil
		}
		if errors.Is(err, cluster.ErrInvalid) || errors.Is(err, cluster.ErrNotFound) || errors.Is(err, cluster.ErrUnauthorized) {
			return err
		}
		p.Log.Warn("leader call failed; retrying", "path", path, "err", err)
		if !sleepCtx(ctx, backoff(attempt)) {
			return ctx.Err()
		}
	}
}

func (p *PolicyAgent) runSpot(ctx context.Context) {
	ch := make(chan policy.Trigger)
	go func() {
		if err := p.Spot.Run(ctx, ch); err != nil && ctx.Err() == nil {
			p.Log.Error("notice watcher stopped", "source", p.Spot.Name(), "err", err)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case t := <-ch:
			p.Log.Warn("notice", "kind", t.Kind, "deadline", t.Deadline, "id", t.ID)
			var res TriggerResult
			if err := p.leaderCall(ctx, "/v1/policy/trigger", TriggerRequest{Trigger: t}, &res); err != nil {
				p.Log.Error("could not report notice", "id", t.ID, "err", err)
				continue
			}
			if res.Duplicate || res.Drain == nil {
				continue
			}
			go p.ackWhenEvacuated(ctx, t, *res.Drain)
		}
	}
}

// ackWhenEvacuated waits for the evacuation's migrations, then acknowledges
// the provider's event (Azure) so the platform may proceed early. Only the
// affected host's agent does this, so exactly one agent acknowledges.
func (p *PolicyAgent) ackWhenEvacuated(ctx context.Context, t policy.Trigger, res DrainResult) {
	acker, ok := p.Spot.(Acker)
	if !ok || t.EventID == "" {
		return
	}
	var ids []string
	for _, m := range res.Moves {
		if m.Migration != "" {
			ids = append(ids, m.Migration)
		}
	}
	var err error
	if len(ids) > 0 {
		// Follows the leader: a failover mid-evacuation delays the
		// acknowledgement, it does not lose it.
		_, err = WaitVia(ctx, p.Lead.LeaderClient, ids, time.Second, nil)
	}
	if err == nil {
		err = acker.Ack(ctx, t.EventID)
	}
	result := "acknowledged"
	if err != nil {
		result = "failed: " + err.Error()
	}
	p.event(ctx, EventTrigger+"/"+t.Kind, "ack "+t.EventID, result, map[string]string{"trigger": t.ID})
}
