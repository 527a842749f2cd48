package migrate

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
)

// EventDrain is the event kind of a drain an operator (CLI, console) or a
// host's reboot asked for; a notice's evacuation is EventEvacuate.
const EventDrain = "drain"

// recordDrain writes a drain the leader carried out to the replicated
// event log: the host, the reason, and each container's move (or why it
// stays). Dry runs change nothing and are not recorded. A failed write is
// logged, not returned: the drain itself happened.
func (co *Coordinator) recordDrain(ctx context.Context, req DrainRequest, res DrainResult, err error) {
	if req.DryRun {
		return
	}
	ev := DrainEvent(req, res, err)
	ev.At = co.cfg.Now().UTC()
	ev.ID = cluster.EventID(EventDrain, req.Host, res.Batch, ev.At.Format(time.RFC3339Nano))
	if werr := co.store.AppendEvent(context.WithoutCancel(ctx), ev); werr != nil {
		co.log.Warn("record the drain", "host", req.Host, "batch", res.Batch, "err", werr)
	}
}

// DrainEvent is the event that records a drain (without its ID and time):
// "action" drain, "result" what it does (the console shows it), "reason",
// "batch", and "moves" and "skipped" listing NAME→HOST and NAME (why).
func DrainEvent(req DrainRequest, res DrainResult, err error) cluster.Event {
	var moves, skipped []string
	for _, m := range res.Moves {
		name := m.Name
		if name == "" {
			name = short(m.Container)
		}
		switch {
		case m.Migration != "":
			moves = append(moves, name+"→"+m.To)
		case m.Skipped != "":
			skipped = append(skipped, fmt.Sprintf("%s (%s)", name, m.Skipped))
		}
	}
	result := fmt.Sprintf("%d to move, %d at a time", len(moves), res.Parallel)
	if len(moves) > 0 {
		result += ": " + strings.Join(moves, ", ")
	}
	if len(skipped) > 0 {
		result += "; staying: " + strings.Join(skipped, ", ")
	}
	if err != nil {
		result = "failed: " + err.Error()
	}
	reason := req.Reason
	if reason == "" {
		reason = "operator request"
	}
	data := map[string]string{"action": "drain", "result": result, "reason": reason, "batch": res.Batch}
	if len(moves) > 0 {
		data["moves"] = strings.Join(moves, ", ")
	}
	if len(skipped) > 0 {
		data["skipped"] = strings.Join(skipped, ", ")
	}
	msg := fmt.Sprintf("drain %s (%s): %s", req.Host, reason, result)
	return cluster.Event{Kind: EventDrain, Host: req.Host, Message: msg, Data: data}
}
