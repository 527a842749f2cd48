package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/policy"
)

// Placement plans from the replicated container reports and the gossiped
// memory use, which may be seconds old (see cluster/inventory.go). Before a
// planner commits a migration record, it asks the chosen target to accept:
// the target checks its own engine and memory now. A refusal sends the
// planner to the next candidate; it never costs a migration that starts
// and rolls back.

// ErrRefused: the chosen target refused the containers.
var ErrRefused = fmt.Errorf("%w: the target refused", cluster.ErrConflict)

// AcceptItem is one container planned for a target.
type AcceptItem struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	ImageID     string `json:"image_id,omitempty"`
	MemoryBytes int64  `json:"memory_bytes,omitempty"`
}

// AcceptRequest is POST /v1/agent/accept: will this host take these
// containers from From?
type AcceptRequest struct {
	From       string       `json:"from"`
	Containers []AcceptItem `json:"containers"`
}

// AcceptResponse answers it. MissingImages are sent before the freeze, as
// usual; they are no reason to refuse.
type AcceptResponse struct {
	Accepted      bool     `json:"accepted"`
	Reason        string   `json:"reason,omitempty"`
	MissingImages []string `json:"missing_images,omitempty"`
}

// Acceptance is the target's decision, from what it holds now: it refuses
// containers whose ID or name it already has (a restore would collide),
// and containers whose memory does not fit in memAvailable (bytes; < 0:
// unknown, not checked).
func Acceptance(req AcceptRequest, local []engine.Container, memAvailable int64, hasImage func(string) bool) AcceptResponse {
	ids, names := map[string]bool{}, map[string]bool{}
	for _, c := range local {
		ids[c.ID], names[c.Name] = true, true
	}
	var need int64
	var clash []string
	missing := map[string]bool{}
	for _, c := range req.Containers {
		if ids[c.ID] || (c.Name != "" && names[c.Name]) {
			clash = append(clash, c.Name)
		}
		need += c.MemoryBytes
		if c.ImageID != "" && hasImage != nil && !hasImage(c.ImageID) {
			missing[c.ImageID] = true
		}
	}
	switch {
	case len(clash) > 0:
		return AcceptResponse{Reason: "already holds a container named " + strings.Join(clash, ", ")}
	case memAvailable >= 0 && need > memAvailable:
		return AcceptResponse{Reason: fmt.Sprintf("%d MiB available, %d MiB needed", memAvailable>>20, need>>20)}
	}
	res := AcceptResponse{Accepted: true}
	for img := range missing {
		res.MissingImages = append(res.MissingImages, img)
	}
	sort.Strings(res.MissingImages)
	return res
}

func (a *Agent) accept(w http.ResponseWriter, r *http.Request) {
	var req AcceptRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeErr(w, fmt.Errorf("%w: %v", cluster.ErrInvalid, err))
		return
	}
	local, err := a.eng.List(r.Context())
	if err != nil {
		writeErr(w, fmt.Errorf("list containers: %w", err))
		return
	}
	mem := int64(-1)
	if _, avail := cluster.MemInfo(); avail > 0 {
		mem = avail
	}
	hasImage := func(id string) bool {
		ok, err := a.eng.HasImage(r.Context(), id)
		return err == nil && ok
	}
	writeJSON(w, Acceptance(req, local, mem, hasImage))
}

// maxConfirming bounds the accept calls in flight at once.
const maxConfirming = 16

// confirm asks every target of plan (containers by target host) to accept
// its containers, all targets at once (at most maxConfirming calls in
// flight). It returns the refusals by target: ErrRefused with the target's
// reason, or the error of a target that did not answer.
func (co *Coordinator) confirm(ctx context.Context, from string, plan map[string][]located) map[string]error {
	out := map[string]error{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxConfirming)
	for to, ls := range plan {
		req := AcceptRequest{From: from}
		for _, l := range ls {
			req.Containers = append(req.Containers, AcceptItem{ID: l.c.ID, Name: l.c.Name, ImageID: l.c.ImageID, MemoryBytes: l.c.MemoryBytes})
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, min(co.cfg.StepTimeout, 10*time.Second))
			defer cancel()
			var res AcceptResponse
			err := co.agents.Call(cctx, to, "/v1/agent/accept", req, &res)
			switch {
			case err != nil:
				err = fmt.Errorf("%w: %s did not confirm: %v", ErrRefused, to, err)
			case !res.Accepted:
				err = fmt.Errorf("%w: %s: %s", ErrRefused, to, res.Reason)
			}
			if err != nil {
				mu.Lock()
				out[to] = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}

// refusedReason is the short reason of a refusal, for a skipped move.
func refusedReason(err error) string {
	if errors.Is(err, ErrRefused) {
		return strings.TrimPrefix(err.Error(), ErrRefused.Error()+": ")
	}
	return err.Error()
}

// confirmMoves has the targets of moves (all off from; "" when they leave
// several hosts) accept their containers. The containers of a target that
// refused are planned once more with replan (nil: not at all), without the
// targets that refused and with the accepted moves' memory already on
// their targets, and those targets are asked in turn. It returns the
// accepted moves and, by container ID, why the others were skipped.
func (co *Coordinator) confirmMoves(ctx context.Context, v view, from string, moves []policy.Move, hosts []policy.HostLoad,
	replan func(cs []policy.ContainerInfo, hosts []policy.HostLoad) []policy.Move) ([]policy.Move, map[string]string) {
	byID := map[string]located{}
	for _, l := range v.containers {
		byID[l.c.ID] = l
	}
	skipped := map[string]string{}
	var accepted []policy.Move
	for round := 0; len(moves) > 0; round++ {
		plan := map[string][]located{}
		for _, mv := range moves {
			plan[mv.To] = append(plan[mv.To], byID[mv.Container])
		}
		refusals := co.confirm(ctx, from, plan)
		var again []policy.ContainerInfo
		for _, mv := range moves {
			err, refused := refusals[mv.To]
			switch {
			case !refused:
				accepted = append(accepted, mv)
			case round == 0 && replan != nil:
				again = append(again, info(byID[mv.Container]))
			default:
				skipped[mv.Container] = "refused: " + refusedReason(err)
			}
		}
		if len(again) == 0 {
			break
		}
		for _, c := range again {
			skipped[c.ID] = "refused: " + refusedReason(refusals[plannedTo(moves, c.ID)])
		}
		hs := slices.DeleteFunc(slices.Clone(hosts), func(h policy.HostLoad) bool { _, r := refusals[h.Name]; return r })
		for i := range hs {
			for _, mv := range accepted {
				if mv.To == hs[i].Name {
					hs[i].MemoryUsed += mv.Bytes
				}
			}
		}
		moves = replan(again, hs)
		for _, mv := range moves {
			delete(skipped, mv.Container) // placed again; skipped if refused again
		}
	}
	return accepted, skipped
}

func plannedTo(moves []policy.Move, id string) string {
	for _, mv := range moves {
		if mv.Container == id {
			return mv.To
		}
	}
	return ""
}
