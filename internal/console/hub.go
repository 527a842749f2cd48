package console

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
)

// hub polls the agent while pages listen and fans the result out to them.
// It owns one goroutine (run); pages subscribe and unsubscribe from their
// SSE handlers.
type hub struct {
	cfg  Config
	wake chan struct{} // a new page, or an action: poll now

	mu      sync.Mutex
	subs    map[*sub]struct{}
	view    []byte            // the last View sent, JSON
	ps      *cluster.PSResult // the last good container list
	forcePS bool
}

// sub is one listening page. Updates coalesce: a slow page gets the latest
// view and tick, never a queue.
type sub struct {
	notify chan struct{} // cap 1
	mu     sync.Mutex
	view   []byte
	tick   []byte
}

func (s *sub) set(view, tick []byte) {
	s.mu.Lock()
	if view != nil {
		s.view = view
	}
	if tick != nil {
		s.tick = tick
	}
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func (s *sub) take() (view, tick []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	view, tick, s.view, s.tick = s.view, s.tick, nil, nil
	return view, tick
}

func newHub(cfg Config) *hub {
	return &hub{cfg: cfg, wake: make(chan struct{}, 1), subs: map[*sub]struct{}{}}
}

func (h *hub) subscribe() *sub {
	s := &sub{notify: make(chan struct{}, 1)}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	if h.view != nil {
		s.set(h.view, nil)
	}
	h.mu.Unlock()
	h.poke(false)
	return s
}

func (h *hub) unsubscribe(s *sub) {
	h.mu.Lock()
	delete(h.subs, s)
	h.mu.Unlock()
}

// poke asks for a poll now; withPS also lists containers (after an action).
func (h *hub) poke(withPS bool) {
	if withPS {
		h.mu.Lock()
		h.forcePS = true
		h.mu.Unlock()
	}
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

func (h *hub) listening() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs) > 0
}

// run polls every cfg.Poll while any page listens, until ctx ends. The
// container list (a fan-out to every host) is read every
// cfg.ContainersEvery polls, and at once after an action.
func (h *hub) run(ctx context.Context) {
	t := time.NewTicker(h.cfg.Poll)
	defer t.Stop()
	n := 0
	for {
		if h.listening() {
			h.mu.Lock()
			withPS := n%h.cfg.ContainersEvery == 0 || h.forcePS || h.ps == nil
			h.forcePS = false
			h.mu.Unlock()
			h.poll(ctx, withPS)
			n++
		} else {
			n = 0
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-h.wake:
		}
	}
}

// tick is sent on every poll: the page shows how fresh its data is.
type tick struct {
	At       time.Time `json:"at"`
	OK       bool      `json:"ok"`
	TookMS   int64     `json:"took_ms"`
	Problems int       `json:"problems"`
}

func (h *hub) poll(ctx context.Context, withPS bool) {
	start := h.cfg.Now()
	raw := h.read(ctx, withPS)
	h.mu.Lock()
	if raw.PS != nil {
		h.ps = raw.PS
	} else {
		raw.PS = h.ps
	}
	h.mu.Unlock()
	b, err := json.Marshal(BuildView(raw, h.cfg.DowntimeWindow))
	if err != nil { // a View always marshals; keep the last one if not
		h.cfg.Logger.Error("console view", "err", err)
		return
	}
	tb, _ := json.Marshal(tick{At: h.cfg.Now().UTC(), OK: len(raw.Problems) == 0, TookMS: h.cfg.Now().Sub(start).Milliseconds(), Problems: len(raw.Problems)})
	h.mu.Lock()
	defer h.mu.Unlock()
	var view []byte
	if !bytes.Equal(b, h.view) {
		h.view, view = b, b
	}
	for s := range h.subs {
		s.set(view, tb)
	}
}

// read asks the agent for everything at once. A part that fails is left
// empty and named in Problems; the page shows them.
func (h *hub) read(ctx context.Context, withPS bool) Raw {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.ReadTimeout)
	defer cancel()
	var raw Raw
	rd := &reader{ctx: ctx, agent: h.cfg.Agent}
	readPart(rd, "/v1/status", &raw.Status)
	readPart(rd, "/v1/members", &raw.Members)
	readPart(rd, "/v1/hosts", &raw.Hosts)
	readPart(rd, "/v1/migrations", &raw.Migrations)
	readPart(rd, "/v1/events", &raw.Events)
	readPart(rd, "/v1/snapshots", &raw.Snapshots)
	if withPS {
		readPart(rd, "/v1/ps", &raw.PS)
	}
	rd.wg.Wait()
	raw.Problems = rd.problems
	slices.Sort(raw.Problems)
	return raw
}

// reader runs one poll's reads in parallel.
type reader struct {
	ctx      context.Context
	agent    Agent
	wg       sync.WaitGroup
	mu       sync.Mutex
	problems []string
}

// readPart reads path into *dst in the background; *dst is written only
// when the whole answer decoded.
func readPart[T any](rd *reader, path string, dst *T) {
	rd.wg.Add(1)
	go func() {
		defer rd.wg.Done()
		var v T
		err := rd.agent.Do(rd.ctx, http.MethodGet, path, nil, &v)
		rd.mu.Lock()
		defer rd.mu.Unlock()
		if err != nil {
			rd.problems = append(rd.problems, fmt.Sprintf("read %s: %v", path, err))
			return
		}
		*dst = v
	}()
}
