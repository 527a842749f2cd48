package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/reboot"
	"github.com/edgemigrate/orchestrate/policy"
)

// RebootRequest is POST /v1/agent/reboot: an operator reboots the host
// whose agent serves the request (`orchestrate reboot`).
type RebootRequest struct {
	// Mode is drain, local or auto; empty means policy.reboot.mode.
	Mode   policy.RebootMode `json:"mode,omitempty"`
	DryRun bool              `json:"dry_run,omitempty"`
	// Command replaces policy.reboot.command for this reboot (e.g. a
	// kexec). It is accepted only over the agent's local socket.
	Command []string `json:"command,omitempty"`
	Reason  string   `json:"reason,omitempty"`
}

// RebootPlan answers a RebootRequest: what the reboot does.
type RebootPlan struct {
	Host string `json:"host"`
	// Mode is the mode asked for; Chosen the one the sequence runs (auto
	// resolved from the drain plan).
	Mode   policy.RebootMode `json:"mode"`
	Chosen policy.RebootMode `json:"chosen"`
	Why    string            `json:"why,omitempty"`
	// Local is the local reboot's plan: order, containers left alone, disk.
	Local *reboot.Plan `json:"local,omitempty"`
	// Drain is the drain's dry run.
	Drain   *DrainResult `json:"drain,omitempty"`
	Command []string     `json:"command"`
	DryRun  bool         `json:"dry_run"`
	Started bool         `json:"started"`
}

// RebootStatus is GET /v1/agent/reboot: this host's sequence, its local
// save, and the checkpoints kept after failed restores.
type RebootStatus struct {
	Host     string           `json:"host"`
	Sequence *reboot.Sequence `json:"sequence,omitempty"`
	Save     *reboot.Manifest `json:"save,omitempty"`
	Kept     []reboot.Entry   `json:"kept,omitempty"`
}

// KeptRequest is POST /v1/agent/checkpoints/restore.
type KeptRequest struct {
	ID string `json:"id"`
}

// StepGuard lets through only the steps the current leader signed
// (cluster.Cluster.LeaderStep).
type StepGuard interface {
	LeaderStep(h http.HandlerFunc) http.HandlerFunc
}

// RegisterReboot adds the host's reboot routes:
//
//	POST /v1/agent/reboot               RebootRequest -> RebootPlan
//	GET  /v1/agent/reboot               RebootStatus
//	GET  /v1/agent/checkpoints          []reboot.Entry (kept after a failed restore)
//	POST /v1/agent/checkpoints/restore  KeptRequest -> engine.Container
//
// Who may call them: a reboot of this host (anything but a dry run) is
// asked for over the agent's local socket only, by root on this host; over
// the cluster's TLS API the token proves membership, and no member may
// reboot another host. Retrying a kept checkpoint is a step the leader
// orders (`orchestrate restore ID` from any host goes through it) and
// carries its signature (p.Steps). The GET routes change nothing.
func (p *PolicyAgent) RegisterReboot(mux Mux) {
	p.init()
	mux.HandleFunc("POST /v1/agent/reboot", func(w http.ResponseWriter, r *http.Request) {
		var req RebootRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeErr(w, fmt.Errorf("%w: %v", cluster.ErrInvalid, err))
			return
		}
		if len(req.Command) > 0 && !localSocket(r) {
			writeErr(w, fmt.Errorf("%w: a reboot command can only be given over the agent's local socket", cluster.ErrInvalid))
			return
		}
		if !req.DryRun && !localSocket(r) {
			writeErr(w, fmt.Errorf("%w: a reboot of %s is asked for over its agent's local socket (orchestrate reboot on the host), not over the cluster's API", cluster.ErrForbidden, p.Host))
			return
		}
		plan, err := p.Request(r.Context(), req)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, plan)
	})
	mux.HandleFunc("GET /v1/agent/reboot", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, p.Status())
	})
	mux.HandleFunc("GET /v1/agent/checkpoints", func(w http.ResponseWriter, r *http.Request) {
		var kept []reboot.Entry
		if p.Local != nil {
			var err error
			if kept, err = p.Local.Kept(); err != nil {
				writeErr(w, err)
				return
			}
		}
		writeJSON(w, emptyIfNil(kept))
	})
	mux.HandleFunc("POST /v1/agent/checkpoints/restore", p.leaderStep(func(w http.ResponseWriter, r *http.Request) {
		var req KeptRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.ID == "" {
			writeErr(w, fmt.Errorf("%w: want {\"id\": CHECKPOINT}", cluster.ErrInvalid))
			return
		}
		if p.Local == nil {
			writeErr(w, fmt.Errorf("%w: host %s runs no engine", cluster.ErrNotFound, p.Host))
			return
		}
		c, err := p.Local.RetryKept(r.Context(), req.ID)
		if errors.Is(err, reboot.ErrNoKept) {
			err = fmt.Errorf("%w: %w on %s", cluster.ErrNotFound, err, p.Host)
		}
		if err != nil {
			p.event(r.Context(), EventReboot, "restore of a kept checkpoint failed", fmt.Sprintf("%s: %v", req.ID, err), map[string]string{"checkpoint": req.ID})
			writeErr(w, err)
			return
		}
		p.event(r.Context(), EventReboot, "kept checkpoint restored", c.Name, map[string]string{"checkpoint": req.ID, "container": c.Name})
		writeJSON(w, c)
	}))
}

// leaderStep wraps h with p.Steps; without one every call is refused.
func (p *PolicyAgent) leaderStep(h http.HandlerFunc) http.HandlerFunc {
	if p.Steps == nil {
		return func(w http.ResponseWriter, r *http.Request) { writeErr(w, errNoAuthority) }
	}
	return p.Steps.LeaderStep(h)
}

func emptyIfNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// localSocket reports whether r came in over a unix socket (root on this
// host), not over the cluster's TLS API.
func localSocket(r *http.Request) bool {
	addr, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	return addr != nil && addr.Network() == "unix"
}

// Status reports this host's reboot state.
func (p *PolicyAgent) Status() RebootStatus {
	st := RebootStatus{Host: p.Host, Sequence: p.sequence()}
	if p.Local != nil {
		if m, ok, err := p.Local.Manifest(); err == nil && ok {
			st.Save = &m
		}
		st.Kept, _ = p.Local.Kept()
	}
	return st
}

// Request plans an operator's reboot and, unless it is a dry run, starts
// it: the request is recorded in the sequence, so it survives the agent
// and is carried out by the same loop as automatic reboots (lock, mode,
// drain or save, command), ignoring the maintenance window.
func (p *PolicyAgent) Request(ctx context.Context, req RebootRequest) (RebootPlan, error) {
	p.init()
	mode := req.Mode
	if mode == "" {
		mode = p.Reboot.Mode
	}
	if _, err := policy.ParseRebootMode(string(mode)); err != nil {
		return RebootPlan{}, fmt.Errorf("%w: %v", cluster.ErrInvalid, err)
	}
	if seq := p.sequence(); seq.Active() {
		return RebootPlan{}, fmt.Errorf("%w: a reboot of %s is already under way (%s, since %s)", cluster.ErrConflict, p.Host, seq.Phase, seq.Started.Format(time.RFC3339))
	}
	cmd := p.Reboot.Command
	if len(req.Command) > 0 {
		cmd = req.Command
	}
	plan := RebootPlan{Host: p.Host, Mode: mode, Chosen: mode, Command: cmd, DryRun: req.DryRun}
	if mode == policy.RebootModeLocal && p.Local == nil {
		return plan, fmt.Errorf("%w: a local reboot needs an engine on %s", cluster.ErrInvalid, p.Host)
	}
	if mode != policy.RebootModeDrain && p.Local != nil {
		lp, err := p.Local.Plan(ctx)
		if err != nil {
			return plan, err
		}
		plan.Local = &lp
	}
	if mode != policy.RebootModeLocal {
		var res DrainResult
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err := p.leaderCall(cctx, "/v1/drain", DrainRequest{Host: p.Host, DryRun: true, Reason: "reboot plan"}, &res)
		cancel()
		switch {
		case err == nil:
			plan.Drain = &res
			unplaced := Unplaced(res)
			plan.Chosen = policy.ChooseRebootMode(mode, len(unplaced))
			if len(unplaced) > 0 {
				plan.Why = "no host can take " + strings.Join(unplaced, ", ")
			}
		case mode == policy.RebootModeDrain || p.Local == nil:
			return plan, fmt.Errorf("plan the drain of %s: %w", p.Host, err)
		default:
			plan.Chosen, plan.Why = policy.RebootModeLocal, "cannot plan a drain: "+err.Error()
		}
	}
	if plan.Chosen == policy.RebootModeLocal && plan.Local != nil {
		if why := plan.Local.Problem(); why != "" {
			if plan.Why != "" {
				plan.Why += "; "
			}
			plan.Why += why
			if !req.DryRun {
				return plan, fmt.Errorf("%w: local reboot of %s: %s", cluster.ErrInvalid, p.Host, why)
			}
		}
	}
	if req.DryRun {
		return plan, nil
	}
	reason := "operator request"
	if req.Reason != "" {
		reason += ": " + req.Reason
	}
	seq := &reboot.Sequence{Reason: reason, Manual: true, Requested: plan.Chosen, Command: req.Command, Phase: reboot.PhaseActive, Started: p.Now().UTC()}
	if err := p.setSequence(seq); err != nil {
		return plan, err
	}
	p.event(ctx, EventReboot, "reboot requested", fmt.Sprintf("%s (%s)", reason, plan.Chosen), nil)
	select {
	case p.wake <- struct{}{}:
	default:
	}
	plan.Started = true
	return plan, nil
}
