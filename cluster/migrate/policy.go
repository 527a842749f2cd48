package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/policy"
)

// Event kinds the coordinator and the policy agent write to the replicated
// event log. Data carries "action" and "result".
const (
	EventTrigger   = "trigger"
	EventEvacuate  = "evacuate"
	EventReboot    = "reboot"
	EventRebalance = "rebalance"
)

// TriggerRequest is POST /v1/policy/trigger: an agent reports a trigger for
// its own host; the leader acts on it once per trigger ID.
type TriggerRequest struct {
	Trigger policy.Trigger `json:"trigger"`
}

// TriggerResult answers a trigger.
type TriggerResult struct {
	Duplicate bool         `json:"duplicate"`
	Drain     *DrainResult `json:"drain,omitempty"`
}

// maxEvacuationParallel caps how many migrations an evacuation runs at once.
const maxEvacuationParallel = 8

// Snapshotter keeps a forensic snapshot of a container before it is moved
// (policy.forensics.before_evacuation). Nil means no snapshots.
type Snapshotter interface {
	Snapshot(ctx context.Context, host, container, reason string) error
}

// HandleTrigger acts on a policy trigger. A spot or maintenance notice
// evacuates its host before the deadline: the host is cordoned, moves are
// ordered by orchestrate.priority then size, and parallelism is raised to
// fit the time left. A trigger ID already in the event log is ignored.
func (co *Coordinator) HandleTrigger(ctx context.Context, t policy.Trigger) (TriggerResult, error) {
	if !co.leading() {
		return TriggerResult{}, ErrNotLeader
	}
	if t.ID == "" || t.Host == "" {
		return TriggerResult{}, fmt.Errorf("%w: a trigger needs an id and a host", cluster.ErrInvalid)
	}
	err := co.store.AppendEvent(ctx, cluster.Event{ID: t.ID, Kind: EventTrigger + "/" + t.Kind, Host: t.Host, At: co.cfg.Now().UTC(),
		Message: t.Detail, Data: map[string]string{"source": t.Source, "deadline": fmtTime(t.Deadline), "action": "received"}})
	if errors.Is(err, cluster.ErrDuplicate) {
		return TriggerResult{Duplicate: true}, nil
	}
	if err != nil {
		return TriggerResult{}, fmt.Errorf("record trigger %s: %w", t.ID, err)
	}
	co.Metrics.trigger(t.Kind)
	switch t.Kind {
	case policy.KindSpotTerminate, policy.KindSpotStop, policy.KindSpotHibernate, policy.KindMaintenance, policy.KindRebalanceRecommendation:
	default:
		return TriggerResult{}, nil
	}
	if co.Snapshots != nil {
		co.snapshotBefore(ctx, t)
	}
	req := DrainRequest{Host: t.Host, Parallel: maxEvacuationParallel, Auto: true, Reason: t.Kind + " notice " + t.ID}
	if !t.Deadline.IsZero() {
		req.Deadline = t.Deadline.Sub(co.cfg.Now())
		if req.Deadline <= 0 {
			req.Deadline = time.Second // late: start everything now
		}
	}
	res, err := co.Drain(ctx, req)
	result := fmt.Sprintf("%d to move, %d at a time", countMoves(res), res.Parallel)
	if err != nil {
		result = "failed: " + err.Error()
	}
	_ = co.store.AppendEvent(ctx, cluster.Event{ID: cluster.EventID(t.ID, "evacuate"), Kind: EventEvacuate, Host: t.Host, At: co.cfg.Now().UTC(),
		Message: result, Data: map[string]string{"trigger": t.ID, "batch": res.Batch, "action": "evacuate", "result": result}})
	if err != nil {
		return TriggerResult{}, err
	}
	co.watchBatch(res, t)
	return TriggerResult{Drain: &res}, nil
}

// snapshotBefore keeps a forensic snapshot of every container on the host,
// in parallel and within a share of the time to the notice's deadline
// (evacsnap.go); each outcome is an event, and none holds up the
// evacuation past that share.
func (co *Coordinator) snapshotBefore(ctx context.Context, t policy.Trigger) {
	b := DefaultSnapshotBudget()
	if sb, ok := co.Snapshots.(SnapshotBudgeter); ok {
		b = sb.SnapshotBudget()
	}
	// What the host runs now, not what it last reported.
	if err := co.store.RefreshReports(ctx, []string{t.Host}, drainReportWait); err != nil {
		co.log.Warn("fresh container report before the snapshots", "host", t.Host, "err", err)
	}
	var targets []snapTarget
	for _, l := range co.snapshot(ctx).containers {
		if l.host == t.Host && l.c.Running {
			targets = append(targets, snapTarget{host: l.host, id: l.c.ID, name: l.c.Name})
		}
	}
	window := snapshotWindow(co.cfg.Now(), t.Deadline, b)
	co.recordSnapshots(ctx, t, runSnapshots(ctx, co.Snapshots, targets, window, b.Parallel, "before evacuation: "+t.Kind))
}

func countMoves(res DrainResult) int {
	n := 0
	for _, m := range res.Moves {
		if m.Migration != "" {
			n++
		}
	}
	return n
}

// watchBatch records in the event log how an evacuation ended.
func (co *Coordinator) watchBatch(res DrainResult, t policy.Trigger) {
	co.mu.Lock()
	ctx, wg := co.termCtx, co.wg
	co.mu.Unlock()
	if ctx == nil {
		return
	}
	ids := map[string]bool{}
	for _, m := range res.Moves {
		if m.Migration != "" {
			ids[m.Migration] = true
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			done, moved, failed := 0, 0, 0
			var last time.Time
			for _, m := range co.store.Migrations() {
				if !ids[m.ID] || !Terminal(m.Phase) {
					continue
				}
				done++
				if m.Phase == Done {
					moved++
				} else {
					failed++
				}
				if m.FinishedAt.After(last) {
					last = m.FinishedAt
				}
			}
			if done == len(ids) {
				result := fmt.Sprintf("%d moved, %d rolled back", moved, failed)
				if !t.Deadline.IsZero() && !last.IsZero() {
					result += fmt.Sprintf(", last finished %.1fs before the deadline", t.Deadline.Sub(last).Seconds())
				}
				_ = co.store.AppendEvent(ctx, cluster.Event{ID: cluster.EventID(t.ID, "evacuated"), Kind: EventEvacuate, Host: t.Host,
					At: co.cfg.Now().UTC(), Message: result,
					Data: map[string]string{"trigger": t.ID, "batch": res.Batch, "action": "evacuated", "result": result, "finished": fmtTime(last)}})
				return
			}
			if !sleepCtx(ctx, 500*time.Millisecond) {
				return
			}
		}
	}()
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// RebalanceRequest is POST /v1/rebalance.
type RebalanceRequest struct {
	DryRun bool `json:"dry_run,omitempty"`
}

// RebalanceResult answers a rebalance.
type RebalanceResult struct {
	SpreadBefore float64     `json:"spread_before"`
	SpreadAfter  float64     `json:"spread_after"` // as planned
	Moves        []DrainMove `json:"moves"`
}

// Rebalance plans moves that reduce the spread of memory use across hosts
// (policy.PlanRebalance with the configured threshold and max moves) and,
// unless dryRun, runs them one at a time.
func (co *Coordinator) Rebalance(ctx context.Context, dryRun bool) (RebalanceResult, error) {
	if !co.leading() {
		return RebalanceResult{}, ErrNotLeader
	}
	v := co.snapshot(ctx)
	var infos []policy.ContainerInfo
	byID := map[string]located{}
	for _, l := range v.containers {
		if l.c.Running && !co.busy(l.c.ID) {
			infos = append(infos, info(l))
			byID[l.c.ID] = l
		}
	}
	moves := policy.PlanRebalance(v.hosts, infos, co.cfg.Rebalance.Threshold, co.cfg.Rebalance.MaxMoves)
	res := RebalanceResult{SpreadBefore: policy.Spread(v.hosts), SpreadAfter: policy.Spread(v.hosts)}
	after := append([]policy.HostLoad(nil), v.hosts...)
	for _, mv := range moves {
		for i := range after {
			if after[i].Name == mv.From {
				after[i].MemoryUsed -= mv.Bytes
			}
			if after[i].Name == mv.To {
				after[i].MemoryUsed += mv.Bytes
			}
		}
	}
	res.SpreadAfter = policy.Spread(after)
	batch := newID()
	var refused map[string]string
	if !dryRun { // the targets confirm before anything is recorded (accept.go)
		_, refused = co.confirmMoves(ctx, v, "", moves, v.hosts, nil)
	}
	for _, mv := range moves {
		l := byID[mv.Container]
		dm := DrainMove{Container: mv.Container, Name: l.c.Name, To: mv.To}
		if why, ok := refused[mv.Container]; ok {
			dm.Skipped = why
		} else if !dryRun {
			rec, err := co.record(ctx, l, mv.To, cluster.MigrationRecord{Batch: batch, Parallel: 1, Rebalance: true})
			if err != nil {
				dm.Skipped = err.Error()
			} else {
				dm.Migration = rec.ID
				co.poke()
			}
		}
		res.Moves = append(res.Moves, dm)
	}
	if !dryRun {
		_ = co.store.AppendEvent(ctx, cluster.Event{ID: cluster.EventID("rebalance", batch), Kind: EventRebalance, At: co.cfg.Now().UTC(),
			Message: fmt.Sprintf("spread %.2f -> %.2f, %d moves", res.SpreadBefore, res.SpreadAfter, len(res.Moves)),
			Data:    map[string]string{"action": "rebalance", "result": fmt.Sprintf("%d moves", len(res.Moves))}})
	}
	return res, nil
}

// runSchedule runs scheduled rebalancing for the term.
func (co *Coordinator) runSchedule(ctx context.Context) {
	if co.cfg.Rebalance.Schedule == "" {
		return
	}
	src, err := policy.NewScheduleSource(co.cfg.Rebalance.Schedule, co.log)
	if err != nil {
		co.log.Error("rebalance schedule", "err", err)
		return
	}
	ch := make(chan policy.Trigger)
	go func() { _ = src.Run(ctx, ch) }()
	for {
		select {
		case <-ctx.Done():
			return
		case t := <-ch:
			res, err := co.Rebalance(ctx, false)
			if err != nil {
				co.log.Warn("scheduled rebalance failed", "trigger", t.ID, "err", err)
				continue
			}
			co.log.Info("scheduled rebalance", "moves", len(res.Moves), "spread", res.SpreadBefore)
		}
	}
}

// RegisterPolicy adds the policy routes (forwarded to the leader):
//
//	POST /v1/policy/trigger  TriggerRequest   -> TriggerResult
//	POST /v1/rebalance       RebalanceRequest -> RebalanceResult
func (co *Coordinator) RegisterPolicy(mux Mux, lead Leadership) {
	mux.HandleFunc("POST /v1/policy/trigger", forwarded(lead, func(w http.ResponseWriter, r *http.Request) {
		var req TriggerRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeErr(w, fmt.Errorf("%w: %v", cluster.ErrInvalid, err))
			return
		}
		res, err := co.HandleTrigger(r.Context(), req.Trigger)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, res)
	}))
	mux.HandleFunc("POST /v1/rebalance", forwarded(lead, func(w http.ResponseWriter, r *http.Request) {
		var req RebalanceRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeErr(w, fmt.Errorf("%w: %v", cluster.ErrInvalid, err))
			return
		}
		res, err := co.Rebalance(r.Context(), req.DryRun)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, res)
	}))
}
