package migrate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os/exec"
	"strings"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/policy"
)

// LockStore is the replicated state the policy agent needs.
type LockStore interface {
	AcquireLock(ctx context.Context, req cluster.AcquireLockRequest) error
	ReleaseLock(ctx context.Context, name, holder string) error
	AppendEvent(ctx context.Context, ev cluster.Event) error
	SetHost(ctx context.Context, req cluster.SetHostRequest) error
}

// Acker acknowledges a provider's event once the evacuation is done (Azure
// Scheduled Events).
type Acker interface {
	Ack(ctx context.Context, eventID string) error
}

// RebootLock is the cluster-wide lock that bounds concurrent reboots.
const RebootLock = "reboot"

// PolicyAgent runs on every host: it watches the host's own notice source
// and pending-reboot checker, reports triggers to the leader, and runs the
// reboot sequence for its host. It owns its goroutines until Run returns.
type PolicyAgent struct {
	Host  string
	Store LockStore
	Lead  Leadership
	Log   *slog.Logger

	// Spot is the notice watcher; nil when policy.spot.provider is none.
	Spot policy.Source
	// Reboot is the reboot policy; Checker decides whether one is pending.
	Reboot        policy.RebootConfig
	Checker       policy.Checker
	CheckInterval time.Duration
	// RetryAfter is how long a reboot waits after a drain that did not
	// finish before trying again.
	RetryAfter time.Duration
}

// Run watches until ctx ends.
func (p *PolicyAgent) Run(ctx context.Context) error {
	if p.Log == nil {
		p.Log = slog.Default()
	}
	if p.RetryAfter <= 0 {
		p.RetryAfter = 5 * time.Minute
	}
	done := make(chan struct{}, 3)
	n := 0
	if p.Reboot.Enabled {
		n++
		go func() { defer func() { done <- struct{}{} }(); p.runReboot(ctx) }()
	}
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
	if data == nil {
		data = map[string]string{}
	}
	data["action"], data["result"] = action, result
	now := time.Now().UTC()
	err := p.Store.AppendEvent(ctx, cluster.Event{ID: cluster.EventID(p.Host, kind, action, now.Format(time.RFC3339Nano)),
		Kind: kind, Host: p.Host, At: now, Message: action + ": " + result, Data: data})
	if err != nil {
		p.Log.Warn("could not record event", "kind", kind, "action", action, "err", err)
	}
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
	cl, err := p.Lead.LeaderClient()
	if err == nil && len(ids) > 0 {
		_, err = Wait(ctx, cl, ids, time.Second, nil)
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

// holdsRebootLock asks the leader (the local replica may still be
// catching up right after a restart) whether this host holds the lock.
func (p *PolicyAgent) holdsRebootLock(ctx context.Context) bool {
	for attempt := 0; ; attempt++ {
		cl, err := p.Lead.LeaderClient()
		var locks []cluster.Lock
		if err == nil {
			err = cl.Do(ctx, http.MethodGet, "/v1/locks", nil, &locks)
		}
		if err == nil {
			for _, l := range locks {
				if l.Name == RebootLock {
					_, ok := l.Holders[p.Host]
					return ok
				}
			}
			return false
		}
		if !sleepCtx(ctx, min(backoff(attempt), time.Second)) {
			return false
		}
	}
}

func (p *PolicyAgent) runReboot(ctx context.Context) {
	// Back from a reboot (or from a crash mid-sequence): the lock we hold
	// says this host was drained for it. Make it schedulable and free the
	// slot for the next host.
	if p.holdsRebootLock(ctx) {
		p.finishReboot(ctx, "agent started after the reboot")
	}
	src := &policy.RebootSource{Checker: p.Checker, Host: p.Host, Interval: p.CheckInterval, Logger: p.Log}
	ch := make(chan policy.Trigger)
	go func() { _ = src.Run(ctx, ch) }()
	for {
		select {
		case <-ctx.Done():
			return
		case t := <-ch:
			p.event(ctx, EventTrigger+"/"+t.Kind, "reboot pending", t.Detail, map[string]string{"trigger": t.ID})
			for !p.rebootSequence(ctx, t) {
				if !sleepCtx(ctx, p.RetryAfter) {
					return
				}
				if pending, _, err := p.Checker.RebootRequired(ctx); err == nil && !pending {
					break
				}
			}
		}
	}
}

func (p *PolicyAgent) finishReboot(ctx context.Context, why string) {
	no := false
	for attempt := 0; ; attempt++ {
		err := p.Store.SetHost(ctx, cluster.SetHostRequest{Name: p.Host, Cordoned: &no, Draining: &no, Reason: "reboot finished", At: time.Now().UTC()})
		if err == nil {
			err = p.Store.ReleaseLock(ctx, RebootLock, p.Host)
		}
		if err == nil || errors.Is(err, cluster.ErrNotFound) {
			break
		}
		if !sleepCtx(ctx, backoff(attempt)) {
			return
		}
	}
	p.event(ctx, EventReboot, "uncordon and release lock", why, nil)
}

// rebootSequence takes the reboot lock, drains the host and runs the reboot
// command. It reboots only when every container that should move moved;
// otherwise it records why, undoes the cordon and the lock, and returns
// false so the caller retries later.
func (p *PolicyAgent) rebootSequence(ctx context.Context, t policy.Trigger) bool {
	if p.Reboot.Window != "" {
		w, err := policy.ParseWindow(p.Reboot.Window)
		if err == nil && !w.Contains(time.Now()) {
			next := w.Next(time.Now())
			p.event(ctx, EventReboot, "wait for window", fmt.Sprintf("%s opens at %s", p.Reboot.Window, next.Format(time.RFC3339)), nil)
			if !sleepCtx(ctx, time.Until(next)) {
				return true
			}
		}
	}
	for attempt := 0; ; attempt++ {
		err := p.Store.AcquireLock(ctx, cluster.AcquireLockRequest{Name: RebootLock, Holder: p.Host, Limit: p.Reboot.Concurrency,
			Reason: t.Detail, At: time.Now().UTC()})
		if err == nil {
			break
		}
		if attempt == 0 {
			p.Log.Info("waiting for the reboot lock", "err", err)
		}
		if !sleepCtx(ctx, min(backoff(attempt), 2*time.Second)) {
			return true
		}
	}
	p.event(ctx, EventReboot, "lock acquired", t.Detail, nil)
	var res DrainResult
	if err := p.leaderCall(ctx, "/v1/drain", DrainRequest{Host: p.Host, Reason: "reboot: " + t.Detail}, &res); err != nil {
		p.abortReboot(ctx, "drain failed: "+err.Error())
		return ctx.Err() != nil
	}
	var ids []string
	var stuck []string
	for _, m := range res.Moves {
		switch {
		case m.Migration != "":
			ids = append(ids, m.Migration)
		case !strings.HasPrefix(m.Skipped, policy.LabelMigrate):
			stuck = append(stuck, m.Name+" ("+m.Skipped+")")
		}
	}
	if cl, err := p.Lead.LeaderClient(); err == nil && len(ids) > 0 {
		recs, err := Wait(ctx, cl, ids, time.Second, nil)
		if err != nil {
			p.abortReboot(ctx, "waiting for the drain: "+err.Error())
			return ctx.Err() != nil
		}
		for _, m := range recs {
			if m.Phase != Done {
				stuck = append(stuck, recName(m)+" ("+m.Error+")")
			}
		}
	}
	if len(stuck) > 0 {
		p.abortReboot(ctx, "drain did not finish: "+strings.Join(stuck, ", "))
		return false
	}
	p.event(ctx, EventReboot, "reboot", strings.Join(p.Reboot.Command, " "), nil)
	p.Log.Warn("rebooting", "command", p.Reboot.Command)
	// Not tied to ctx: the command's job is to end this process.
	out, err := exec.Command(p.Reboot.Command[0], p.Reboot.Command[1:]...).CombinedOutput()
	if err != nil {
		p.abortReboot(ctx, fmt.Sprintf("reboot command failed: %v: %s", err, strings.TrimSpace(string(out))))
		return false
	}
	return true
}

func (p *PolicyAgent) abortReboot(ctx context.Context, why string) {
	p.Log.Warn("not rebooting", "why", why)
	p.event(ctx, EventReboot, "not rebooting", why, nil)
	p.finishReboot(ctx, "reboot cancelled")
}

func recName(m cluster.MigrationRecord) string {
	if m.Name != "" {
		return m.Name
	}
	return short(m.Container)
}
