package migrate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/reboot"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/policy"
)

// LocalStore keeps containers on this host's disk across a local reboot
// (reboot.Store).
type LocalStore interface {
	Plan(ctx context.Context) (reboot.Plan, error)
	Save(ctx context.Context, report func(reboot.Progress)) (reboot.Manifest, error)
	Restore(ctx context.Context, report func(reboot.Progress)) (reboot.Result, error)
	Saved() bool
	Pending() bool
	Manifest() (reboot.Manifest, bool, error)
	Kept() ([]reboot.Entry, error)
	RetryKept(ctx context.Context, id string) (engine.Container, error)
}

var _ LocalStore = (*reboot.Store)(nil)

// RebootLock is the cluster-wide lock that bounds concurrent reboots.
const RebootLock = "reboot"

func (p *PolicyAgent) init() {
	if p.Log == nil {
		p.Log = slog.Default()
	}
	if p.RetryAfter <= 0 {
		p.RetryAfter = 5 * time.Minute
	}
	if p.CheckInterval <= 0 {
		p.CheckInterval = time.Minute
	}
	if p.Now == nil {
		p.Now = time.Now
	}
	if p.Reboot.Timeout <= 0 {
		p.Reboot.Timeout = policy.DefaultRebootConfig().Timeout
	}
	if p.Reboot.Mode == "" {
		p.Reboot.Mode = policy.RebootModeDrain
	}
	if p.Rebooter == nil {
		p.Rebooter = func(cmd []string) policy.Rebooter { return policy.CommandRebooter{Command: cmd} }
	}
	p.seqMu.Lock()
	if p.wake == nil {
		p.wake = make(chan struct{}, 1)
	}
	p.seqMu.Unlock()
}

// sequence returns a copy of the current sequence record (nil: none).
func (p *PolicyAgent) sequence() *reboot.Sequence {
	p.seqMu.Lock()
	defer p.seqMu.Unlock()
	if p.seq == nil {
		return nil
	}
	s := *p.seq
	s.Moves = slices.Clone(s.Moves)
	return &s
}

// setSequence records s durably, then makes it current. A sequence that
// cannot be recorded does not go on: the next pass tries again.
func (p *PolicyAgent) setSequence(s *reboot.Sequence) error {
	if p.Dir != "" {
		if err := reboot.SaveSequence(p.Dir, s); err != nil {
			p.Log.Error("could not record the reboot sequence", "err", err)
			return fmt.Errorf("record the reboot sequence: %w", err)
		}
	}
	p.seqMu.Lock()
	p.seq = s
	p.seqMu.Unlock()
	return nil
}

// runReboot is the level-triggered reboot loop. It first carries on what
// the last run left (a local reboot's containers are restored right away,
// before the cluster is even up), then, on every pass, observes the host
// and the cluster, asks policy.NextRebootAction what to do, and does it.
func (p *PolicyAgent) runReboot(ctx context.Context) {
	if p.Dir != "" {
		s, err := reboot.LoadSequence(p.Dir)
		if err != nil {
			p.Log.Error("could not read the reboot sequence; starting without it", "err", err)
		}
		if s.Active() && s.Phase == reboot.PhaseRebooting {
			s.Phase, s.BackAt, s.BackBoot = reboot.PhaseBack, p.Now().UTC(), reboot.BootID()
			booted := "the host rebooted"
			if s.BackBoot != "" && s.BackBoot == s.BootID {
				booted = "the host did not reboot (same boot)"
			}
			_ = p.setSequence(s)
			p.eventAsync(ctx, "back after the reboot command", booted)
		} else if s != nil {
			_ = p.setSequence(s)
		}
	}
	if s := p.sequence(); p.Local != nil && p.Local.Pending() && !(s.Active() && s.Phase == reboot.PhaseActive) {
		p.restoreLocal(ctx)
	}
	for {
		next := p.pass(ctx)
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-p.wake:
			t.Stop()
		case <-t.C:
		}
	}
}

// pass takes one step and returns how long to wait before the next.
func (p *PolicyAgent) pass(ctx context.Context) time.Duration {
	idle := p.CheckInterval - time.Duration(rand.Int64N(int64(p.CheckInterval)/5+1))
	seq := p.sequence()
	st, reason, err := p.observe(ctx, seq)
	if err != nil {
		if ctx.Err() == nil {
			p.Log.Debug("reboot: cannot observe; trying again", "err", err)
		}
		return min(idle, 2*time.Second)
	}
	action, why := policy.NextRebootAction(st)
	if action != policy.RebootIdle && action != policy.RebootWait {
		p.Log.Info("reboot step", "action", action.String(), "why", why)
	}
	switch action {
	case policy.RebootIdle:
		if seq.Active() {
			p.finish(ctx, seq, false)
		}
		return idle
	case policy.RebootWait:
		p.note(ctx, "waiting: "+why)
		return min(idle, 5*time.Second)
	case policy.RebootAcquireLock:
		if !p.acquire(ctx, seq, reason) {
			return 2 * time.Second // another host holds the slot: ask again later, not every pass
		}
	case policy.RebootChooseMode:
		p.chooseMode(ctx, seq)
	case policy.RebootDrain:
		p.drain(ctx, seq)
		return time.Second
	case policy.RebootSave:
		p.save(ctx, seq)
	case policy.RebootNow:
		p.rebootNow(ctx, seq)
	case policy.RebootAbort:
		p.abort(ctx, seq)
	case policy.RebootFinish:
		p.finish(ctx, seq, true)
	}
	return 200 * time.Millisecond
}

// observe gathers the RebootState. An observation it cannot make (no
// leader to ask about the lock, a failing check) is an error: the pass is
// skipped, never decided on a guess.
func (p *PolicyAgent) observe(ctx context.Context, seq *reboot.Sequence) (policy.RebootState, string, error) {
	var s policy.RebootState
	reason := ""
	switch {
	case seq.Active() && seq.Phase == reboot.PhaseBack:
		// The reboot happened (or was given up on): finish.
	case seq.Active() && seq.Manual:
		s.Required, reason = true, seq.Reason
	case p.Reboot.Enabled && p.Checker != nil:
		req, why, err := p.Checker.RebootRequired(ctx)
		if err != nil {
			return s, "", fmt.Errorf("reboot check: %w", err)
		}
		if req && !seq.Active() && p.Now().Before(p.retryAt) {
			req = false // the last attempt did not finish: wait before the next
		}
		if req && !seq.Active() && p.clearedBefore(seq, why) {
			p.note(ctx, "still required after the reboot ("+why+"); not rebooting again in this boot")
			req = false
		}
		s.Required, reason = req, why
		if seq.Active() && req {
			reason = seq.Reason
		}
	}
	s.WindowOpen = true
	if p.Reboot.Window != "" && !(seq.Active() && seq.Manual) {
		w, err := policy.ParseWindow(p.Reboot.Window)
		if err != nil {
			return s, "", fmt.Errorf("reboot.window: %w", err)
		}
		s.WindowOpen = w.Contains(p.Now())
	}
	if !s.Required && !seq.Active() {
		// Idle unless a lock is held with no record of why (an agent that
		// lost its data directory): then finish, as the old agent would.
		held, err := p.lockHeld(ctx)
		s.LockHeld = err == nil && held
		return s, reason, nil
	}
	if p.Blocker != nil {
		blocked, why, err := p.Blocker.IsBlocked(ctx)
		if err != nil {
			return s, "", fmt.Errorf("reboot blocker: %w", err)
		}
		if blocked {
			p.note(ctx, "blocked: "+why)
		}
		s.Blocked = blocked
	}
	held, err := p.lockHeld(ctx)
	if err != nil {
		return s, "", err
	}
	s.LockHeld = held
	if seq.Active() {
		s.Mode, s.Stuck = seq.Mode, seq.Stuck != ""
	}
	switch s.Mode {
	case policy.RebootModeDrain:
		ds, err := p.drainState(ctx)
		if err != nil {
			return s, "", err
		}
		s.Drained = ds.Drained
	case policy.RebootModeLocal:
		s.Saved = p.Local != nil && p.Local.Saved()
	}
	return s, reason, nil
}

// clearedBefore: the last sequence rebooted this host for the same reason,
// and this is the boot it came back in. Rebooting again would not help.
func (p *PolicyAgent) clearedBefore(seq *reboot.Sequence, why string) bool {
	return seq != nil && seq.Phase == reboot.PhaseDone && strings.HasPrefix(seq.Outcome, "rebooted") &&
		seq.Reason == why && seq.BackBoot == reboot.BootID()
}

// lockHeld asks the leader (the local replica may lag right after a
// restart) whether this host holds a reboot slot.
func (p *PolicyAgent) lockHeld(ctx context.Context) (bool, error) {
	cl, err := p.Lead.LeaderClient()
	if err != nil {
		return false, err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var locks []cluster.Lock
	if err := cl.Do(cctx, http.MethodGet, "/v1/locks", nil, &locks); err != nil {
		return false, err
	}
	for _, l := range locks {
		if l.Name == RebootLock {
			_, ok := l.Holders[p.Host]
			return ok, nil
		}
	}
	return false, nil
}

// note records a waiting reason once (until it changes).
func (p *PolicyAgent) note(ctx context.Context, what string) {
	p.seqMu.Lock()
	same := p.noted == what
	p.noted = what
	p.seqMu.Unlock()
	if !same {
		p.Log.Info("reboot: "+what, "host", p.Host)
		p.event(ctx, EventReboot, "wait", what, nil)
	}
}

// acquire starts a sequence (recorded before anything is done for it) and
// takes a reboot slot; false when it could not.
func (p *PolicyAgent) acquire(ctx context.Context, seq *reboot.Sequence, reason string) bool {
	if !seq.Active() {
		seq = &reboot.Sequence{Reason: reason, Requested: p.Reboot.Mode, Phase: reboot.PhaseActive, Started: p.Now().UTC()}
		if p.setSequence(seq) != nil {
			return false
		}
		p.event(ctx, EventTrigger+"/"+policy.KindRebootPending, "reboot pending", reason, nil)
	}
	err := p.Store.AcquireLock(ctx, cluster.AcquireLockRequest{Name: RebootLock, Holder: p.Host, Limit: p.Reboot.Concurrency,
		Reason: seq.Reason, At: p.Now().UTC()})
	if err != nil {
		p.note(ctx, "waiting for the reboot lock: "+err.Error())
		return false
	}
	p.event(ctx, EventReboot, "lock acquired", seq.Reason, nil)
	return true
}

// chooseMode fixes the sequence's mode; auto asks the leader for a drain
// plan and drains only when every container that must move has a place.
func (p *PolicyAgent) chooseMode(ctx context.Context, seq *reboot.Sequence) {
	mode := seq.Requested
	if mode == "" {
		mode = p.Reboot.Mode
	}
	why := "configured"
	if seq.Manual {
		why = "asked for"
	}
	if mode == policy.RebootModeAuto {
		var res DrainResult
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := p.leaderCall(cctx, "/v1/drain", DrainRequest{Host: p.Host, DryRun: true, Reason: "reboot plan"}, &res)
		cancel()
		if err != nil {
			p.note(ctx, "cannot plan a drain yet: "+err.Error())
			return
		}
		unplaced := Unplaced(res)
		mode = policy.ChooseRebootMode(mode, len(unplaced))
		why = "auto: every container has a place elsewhere"
		if len(unplaced) > 0 {
			why = "auto: no host can take " + strings.Join(unplaced, ", ")
		}
	}
	if mode == policy.RebootModeLocal && p.Local == nil {
		seq.Stuck = "a local reboot needs an engine on this host"
	}
	seq.Mode = mode
	if p.setSequence(seq) == nil {
		p.event(ctx, EventReboot, "mode "+string(mode), why, nil)
	}
}

// Unplaced names the containers a drain plan could not place (not those
// that opted out).
func Unplaced(res DrainResult) []string {
	var out []string
	for _, m := range res.Moves {
		if m.Migration == "" && m.To == "" && !strings.HasPrefix(m.Skipped, policy.LabelMigrate) {
			out = append(out, m.Name)
		}
	}
	return out
}

// DrainState is what the host looks like to a reboot by drain.
type DrainState struct {
	Cordoned bool
	InFlight int      // migrations from this host not yet ended
	Left     []string // movable containers still running here
	Drained  bool
}

// ObserveDrain decides, from this host's containers, its record in the
// replicated state and the migration records, whether it is drained: a
// pure function.
func ObserveDrain(host string, hosts []cluster.Host, cs []engine.Container, recs []cluster.MigrationRecord) DrainState {
	var d DrainState
	for _, h := range hosts {
		if h.Name == host {
			d.Cordoned = h.Cordoned
		}
	}
	for _, r := range recs {
		if r.From == host && !Terminal(r.Phase) {
			d.InFlight++
		}
	}
	for _, c := range cs {
		if c.Running && !policy.OptedOut(c.Labels) {
			d.Left = append(d.Left, c.Name)
		}
	}
	slices.Sort(d.Left)
	d.Drained = d.Cordoned && d.InFlight == 0 && len(d.Left) == 0
	return d
}

func (p *PolicyAgent) drainState(ctx context.Context) (DrainState, error) {
	if p.Containers == nil {
		return ObserveDrain(p.Host, p.Store.Hosts(), nil, p.Store.Migrations()), nil
	}
	cs, err := p.Containers.List(ctx)
	if err != nil {
		return DrainState{}, fmt.Errorf("list containers: %w", err)
	}
	return ObserveDrain(p.Host, p.Store.Hosts(), cs, p.Store.Migrations()), nil
}

// maxDrains bounds how often one sequence asks for a drain before it gives
// up for now (RetryAfter).
const maxDrains = 2

// drain asks the leader to drain this host, and again when a drain ended
// with containers left here; migrations in flight are waited for. The
// drain follows the leader: a failover mid-drain is just another pass.
func (p *PolicyAgent) drain(ctx context.Context, seq *reboot.Sequence) {
	ds, err := p.drainState(ctx)
	if err != nil || ds.InFlight > 0 {
		return
	}
	if seq.Drains >= maxDrains {
		why := "drain did not finish"
		if len(ds.Left) > 0 {
			why += ": still here: " + strings.Join(ds.Left, ", ")
		}
		seq.Stuck = why
		_ = p.setSequence(seq)
		return
	}
	seq.Drains++
	if p.setSequence(seq) != nil {
		return
	}
	var res DrainResult
	if err := p.leaderCall(ctx, "/v1/drain", DrainRequest{Host: p.Host, Reason: "reboot: " + seq.Reason}, &res); err != nil {
		if ctx.Err() == nil {
			seq.Stuck = "drain failed: " + err.Error()
			_ = p.setSequence(seq)
		}
		return
	}
	for _, m := range res.Moves {
		if m.Migration != "" {
			seq.Moves = append(seq.Moves, reboot.Move{Container: m.Container, Name: m.Name, To: m.To, Migration: m.Migration})
		}
	}
	_ = p.setSequence(seq)
	p.event(ctx, EventReboot, "drain", fmt.Sprintf("%d to move, %d staying", countMoves(res), len(res.Moves)-countMoves(res)), nil)
}

// save cordons the host (nothing new lands on it) and checkpoints its
// containers to its disk. A failed save makes the sequence stuck: it
// aborts, bringing back what was saved.
func (p *PolicyAgent) save(ctx context.Context, seq *reboot.Sequence) {
	yes := true
	if err := p.Store.SetHost(ctx, cluster.SetHostRequest{Name: p.Host, Cordoned: &yes, Reason: "local reboot: " + seq.Reason, At: p.Now().UTC()}); err != nil {
		p.note(ctx, "cannot cordon for the local reboot yet: "+err.Error())
		return
	}
	plan, err := p.Local.Plan(ctx)
	if err == nil && len(plan.Skipped) > 0 {
		var s []string
		for _, k := range plan.Skipped {
			s = append(s, k.Name+" ("+k.Reason+")")
		}
		p.event(ctx, EventReboot, "local reboot leaves alone", strings.Join(s, "; "), nil)
	}
	start := p.Now()
	m, err := p.Local.Save(ctx, func(pr reboot.Progress) {
		if pr.Err != nil {
			p.event(ctx, EventReboot, "checkpoint failed", fmt.Sprintf("%s: %v", pr.Entry.Name, pr.Err), map[string]string{"container": pr.Entry.Name})
		}
	})
	if err != nil {
		if ctx.Err() == nil {
			seq.Stuck = "local save failed: " + err.Error()
			_ = p.setSequence(seq)
		}
		return
	}
	n := 0
	for _, e := range m.Entries {
		if e.State == reboot.StateSaved {
			n++
		}
	}
	p.event(ctx, EventReboot, "saved locally", fmt.Sprintf("%d container(s) in %s", n, p.Now().Sub(start).Round(time.Millisecond)), nil)
}

// rebootNow records that the reboot command runs (durably, first), runs
// it, and waits for the host to go down. A command that fails, or a host
// that is still up after reboot.timeout, makes the sequence stuck.
func (p *PolicyAgent) rebootNow(ctx context.Context, seq *reboot.Sequence) {
	cmd := p.Reboot.Command
	if len(seq.Command) > 0 {
		cmd = seq.Command
	}
	if seq.Mode == policy.RebootModeDrain {
		seq.Moves = p.movesSince(seq)
	}
	seq.Phase, seq.RebootAt, seq.BootID = reboot.PhaseRebooting, p.Now().UTC(), reboot.BootID()
	if p.setSequence(seq) != nil {
		return
	}
	ectx, cancel := context.WithTimeout(ctx, 3*time.Second)
	p.event(ectx, EventReboot, "reboot", strings.Join(cmd, " "), map[string]string{"mode": string(seq.Mode)})
	cancel()
	p.Log.Warn("rebooting", "command", cmd, "mode", seq.Mode)
	// Not tied to ctx: the command's job is to end this process.
	if err := p.Rebooter(cmd).Reboot(context.WithoutCancel(ctx)); err != nil {
		seq.Phase, seq.Stuck = reboot.PhaseActive, "reboot command failed: "+err.Error()
		_ = p.setSequence(seq)
		return
	}
	t := time.NewTimer(p.Reboot.Timeout)
	defer t.Stop()
	select {
	case <-ctx.Done(): // going down: the next start carries on
		return
	case <-t.C:
	}
	seq.Phase, seq.Stuck = reboot.PhaseActive, fmt.Sprintf("the host was still up %s after the reboot command", p.Reboot.Timeout)
	_ = p.setSequence(seq)
}

// movesSince lists the migrations off this host that finished during this
// sequence: what may return after the reboot. Names come from the drain's
// answers; the records are the truth about where each container went.
func (p *PolicyAgent) movesSince(seq *reboot.Sequence) []reboot.Move {
	names := map[string]string{}
	for _, m := range seq.Moves {
		names[m.Container] = m.Name
	}
	latest := map[string]cluster.MigrationRecord{}
	for _, r := range p.Store.Migrations() {
		if r.From != p.Host || r.Phase != Done || r.StartedAt.Before(seq.Started) {
			continue
		}
		if cur, ok := latest[r.Container]; !ok || r.StartedAt.After(cur.StartedAt) {
			latest[r.Container] = r
		}
	}
	var out []reboot.Move
	for id, r := range latest {
		name := names[id]
		if name == "" {
			name = short(id)
		}
		out = append(out, reboot.Move{Container: id, Name: name, To: r.To, Migration: r.ID})
	}
	slices.SortFunc(out, func(a, b reboot.Move) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// abort calls a sequence off: saved containers come back, the host is
// uncordoned, the lock released, and the next attempt waits RetryAfter.
func (p *PolicyAgent) abort(ctx context.Context, seq *reboot.Sequence) {
	p.Log.Warn("not rebooting", "why", seq.Stuck)
	p.event(ctx, EventReboot, "not rebooting", seq.Stuck, nil)
	if p.Local != nil && p.Local.Pending() {
		p.restoreLocal(ctx)
	}
	if !p.release(ctx, "reboot cancelled") {
		return
	}
	seq.Phase, seq.Outcome, seq.DoneAt = reboot.PhaseDone, "aborted: "+seq.Stuck, p.Now().UTC()
	_ = p.setSequence(seq)
	p.retryAt = p.Now().Add(p.RetryAfter)
}

// finish ends a sequence: the containers of a local reboot are back (or
// kept), the host is uncordoned and its slot released, and after a drain
// the containers that left come back when reboot.return asks for it.
func (p *PolicyAgent) finish(ctx context.Context, seq *reboot.Sequence, holding bool) {
	if p.Local != nil && p.Local.Pending() {
		p.restoreLocal(ctx)
	}
	why := "reboot no longer required"
	if seq.Active() && seq.Phase == reboot.PhaseBack {
		why = "agent started after the reboot"
	}
	if (holding || seq.Active()) && !p.release(ctx, why) {
		return
	}
	if !seq.Active() {
		return
	}
	outcome := "cancelled: no longer required"
	if seq.Phase == reboot.PhaseBack {
		outcome = "rebooted"
		if p.Reboot.Return && seq.Mode == policy.RebootModeDrain && len(seq.Moves) > 0 {
			outcome += "; " + p.returnMoves(ctx, seq.Moves)
		}
	}
	seq.Phase, seq.Outcome, seq.DoneAt = reboot.PhaseDone, outcome, p.Now().UTC()
	_ = p.setSequence(seq)
}

// release uncordons the host and gives back its reboot slot; it retries
// (following the leader) until both are done or ctx ends.
func (p *PolicyAgent) release(ctx context.Context, why string) bool {
	no := false
	for attempt := 0; ; attempt++ {
		err := p.Store.SetHost(ctx, cluster.SetHostRequest{Name: p.Host, Cordoned: &no, Draining: &no, Reason: "reboot finished", At: p.Now().UTC()})
		if err == nil {
			err = p.Store.ReleaseLock(ctx, RebootLock, p.Host)
		}
		if err == nil || errors.Is(err, cluster.ErrNotFound) {
			break
		}
		if !sleepCtx(ctx, backoff(attempt)) {
			return false
		}
	}
	p.event(ctx, EventReboot, "uncordon and release lock", why, nil)
	return true
}

// restoreLocal brings back this host's locally saved containers. It needs
// only the engine and the disk, so it runs as soon as the agent starts;
// events are recorded in the background once a leader is there.
func (p *PolicyAgent) restoreLocal(ctx context.Context) {
	start := p.Now()
	res, err := p.Local.Restore(ctx, func(pr reboot.Progress) {
		data := map[string]string{"container": pr.Entry.Name, "checkpoint": pr.Entry.ID}
		if pr.Err != nil {
			p.eventAsync(ctx, "restore failed; checkpoint kept", fmt.Sprintf("%s: %v (retry: orchestrate restore %s --host %s)", pr.Entry.Name, pr.Err, pr.Entry.ID, p.Host), data)
			return
		}
		p.eventAsync(ctx, "restored", pr.Entry.Name, data)
	})
	if err != nil {
		if ctx.Err() == nil {
			p.Log.Error("local restore", "err", err)
		}
		return
	}
	if n := len(res.Restored) + len(res.Failed); n > 0 {
		p.Log.Info("local restore done", "restored", len(res.Restored), "failed", len(res.Failed), "duration", p.Now().Sub(start))
		p.eventAsync(ctx, "local restore done", fmt.Sprintf("%d restored, %d kept after a failure, in %s",
			len(res.Restored), len(res.Failed), p.Now().Sub(start).Round(time.Millisecond)))
	}
}

// eventAsync records an event without waiting for it: at start there may
// be no leader yet. It gives up after a few minutes.
func (p *PolicyAgent) eventAsync(ctx context.Context, action, result string, data ...map[string]string) {
	var d map[string]string
	if len(data) > 0 {
		d = data[0]
	}
	at := p.Now().UTC()
	go func() {
		ectx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		for attempt := 0; ; attempt++ {
			if p.appendEvent(ectx, EventReboot, action, result, d, at) == nil {
				return
			}
			if !sleepCtx(ectx, backoff(attempt)) {
				p.Log.Warn("could not record event", "action", action, "result", result)
				return
			}
		}
	}()
}

// returnMoves live-migrates containers that left for the reboot back here,
// each only if it still runs where it went and placement allows it (the
// leader checks, as for any migration). It returns a summary.
func (p *PolicyAgent) returnMoves(ctx context.Context, moves []reboot.Move) string {
	ps := p.Store.PS(ctx)
	where := map[string]string{}
	for _, c := range ps.Containers {
		if c.State == "running" {
			where[c.ID] = c.Host
		}
	}
	back, skipped := 0, 0
	for _, mv := range moves {
		if at := where[mv.Container]; at != mv.To {
			now := "is gone"
			if at != "" {
				now = "runs on " + at + " now"
			}
			p.event(ctx, EventReboot, "not returned", fmt.Sprintf("%s: left for %s, %s", mv.Name, mv.To, now), map[string]string{"container": mv.Name})
			skipped++
			continue
		}
		var rec cluster.MigrationRecord
		err := p.returnOne(ctx, mv, &rec)
		if err == nil {
			var recs []cluster.MigrationRecord
			recs, err = WaitVia(ctx, p.Lead.LeaderClient, []string{rec.ID}, 500*time.Millisecond, nil)
			if err == nil && recs[0].Phase != Done {
				err = errors.New(recs[0].Error)
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			p.event(ctx, EventReboot, "not returned", fmt.Sprintf("%s: %v", mv.Name, err), map[string]string{"container": mv.Name})
			skipped++
			continue
		}
		back++
		p.event(ctx, EventReboot, "returned", fmt.Sprintf("%s from %s", mv.Name, mv.To), map[string]string{"container": mv.Name, "migration": rec.ID})
	}
	return fmt.Sprintf("%d returned, %d stayed", back, skipped)
}

// returnWait bounds how long a return is retried while placement refuses
// it: right after the boot, this host's gossiped facts (engine, CRIU
// version, memory) may not have reached the leader yet.
const returnWait = 2 * time.Minute

func (p *PolicyAgent) returnOne(ctx context.Context, mv reboot.Move, rec *cluster.MigrationRecord) error {
	until := p.Now().Add(returnWait)
	for attempt := 0; ; attempt++ {
		err := p.leaderCall(ctx, "/v1/migrate", MigrateRequest{Container: mv.Container, To: p.Host}, rec)
		if err == nil || !errors.Is(err, cluster.ErrInvalid) && !errors.Is(err, cluster.ErrCordoned) || p.Now().After(until) {
			return err
		}
		if attempt == 0 {
			p.Log.Info("return refused for now; retrying", "container", mv.Name, "err", err)
		}
		if !sleepCtx(ctx, 2*time.Second) {
			return ctx.Err()
		}
	}
}
