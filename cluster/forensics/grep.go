package forensics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine/archive"
)

// GrepRequest is POST /v1/snapshots/grep (and, per store host,
// /v1/agent/forensics/grep): search the memory of every stored snapshot
// where it is stored; no archive moves.
type GrepRequest struct {
	Pattern string `json:"pattern"`
	Regexp  bool   `json:"regexp,omitempty"`
	// Context and MaxMatches are per snapshot; zero takes the defaults.
	Context    int `json:"context,omitempty"`
	MaxMatches int `json:"max_matches,omitempty"`
	// Snapshots limits the search to these IDs; empty means all.
	Snapshots []string `json:"snapshots,omitempty"`
}

// GrepMatch is one match, tagged with where it was found.
type GrepMatch struct {
	Snapshot  string    `json:"snapshot"`
	Container string    `json:"container"` // the container's name
	Host      string    `json:"host"`      // where the container ran
	StoreHost string    `json:"store_host"`
	At        time.Time `json:"at"` // when the snapshot was taken
	archive.Match
}

// GrepHostResult is one store host's answer.
type GrepHostResult struct {
	Matches []GrepMatch `json:"matches"`
	// Truncated lists snapshots whose search stopped at MaxMatches.
	Truncated []string `json:"truncated,omitempty"`
	// Errors are per snapshot: a damaged archive does not stop the rest.
	Errors   map[string]string `json:"errors,omitempty"`
	Searched int               `json:"searched"` // snapshots searched
	Bytes    int64             `json:"bytes"`    // memory bytes read
}

// GrepResult is the fleet-wide answer.
type GrepResult struct {
	GrepHostResult
	// HostErrors are store hosts that did not answer.
	HostErrors map[string]string `json:"host_errors,omitempty"`
}

// GrepLimits bound the analysis of each stored archive on its store host.
type GrepLimits struct {
	// MaxMemory caps what the analysis of one archive holds (archive.Config).
	MaxMemory int64 `json:"max_memory,omitempty"`
	// Timeout bounds one store host's whole search.
	Timeout time.Duration `json:"timeout,omitempty"`
}

// DefaultGrepLimits: 256 MiB per archive, 10 minutes per host.
func DefaultGrepLimits() GrepLimits {
	return GrepLimits{MaxMemory: 256 << 20, Timeout: 10 * time.Minute}
}

func (g GrepLimits) or(d GrepLimits) GrepLimits {
	if g.MaxMemory <= 0 {
		g.MaxMemory = d.MaxMemory
	}
	if g.Timeout <= 0 {
		g.Timeout = d.Timeout
	}
	return g
}

func (r GrepRequest) query() (archive.Query, error) {
	q := archive.Query{Pattern: r.Pattern, Context: r.Context, MaxMatches: r.MaxMatches}
	if r.Pattern == "" {
		return q, fmt.Errorf("%w: grep needs a pattern", cluster.ErrInvalid)
	}
	if r.Regexp {
		re, err := regexp.Compile(r.Pattern)
		if err != nil {
			return q, fmt.Errorf("%w: pattern: %v", cluster.ErrInvalid, err)
		}
		q.Regexp = re
	}
	return q, nil
}

// grep searches the snapshots stored on this host, one archive at a time
// (each read in place: the store keeps uncompressed tars).
func (a *Agent) grep(w http.ResponseWriter, r *http.Request) {
	var req GrepRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		cluster.WriteError(w, fmt.Errorf("%w: want a grep request", cluster.ErrInvalid))
		return
	}
	res, err := a.Grep(r.Context(), req)
	if err != nil {
		cluster.WriteError(w, err)
		return
	}
	cluster.WriteJSON(w, http.StatusOK, res)
}

// Grep searches the snapshots this host stores.
func (a *Agent) Grep(ctx context.Context, req GrepRequest) (GrepHostResult, error) {
	q, err := req.query()
	if err != nil {
		return GrepHostResult{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Grep.Timeout)
	defer cancel()
	want := map[string]bool{}
	for _, id := range req.Snapshots {
		want[id] = true
	}
	res := GrepHostResult{Matches: []GrepMatch{}}
	for _, rec := range a.c.Snapshots() {
		if rec.StoreHost != a.cfg.Host || len(want) > 0 && !want[rec.ID] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("grep snapshots on %s: %w", a.cfg.Host, err)
		}
		cfg := archive.DefaultConfig()
		cfg.MaxMemory = a.cfg.Grep.MaxMemory
		cfg.TempDir = a.st.dir
		ar, err := archive.Open(a.st.path(rec.ID), cfg)
		if err != nil {
			if res.Errors == nil {
				res.Errors = map[string]string{}
			}
			res.Errors[rec.ID] = err.Error()
			continue
		}
		sr, err := ar.Search(q)
		ar.Close()
		res.Searched++
		res.Bytes += sr.Searched
		if err != nil {
			if res.Errors == nil {
				res.Errors = map[string]string{}
			}
			res.Errors[rec.ID] = err.Error()
		}
		if sr.Truncated {
			res.Truncated = append(res.Truncated, rec.ID)
		}
		for _, m := range sr.Matches {
			res.Matches = append(res.Matches, GrepMatch{Snapshot: rec.ID, Container: rec.Name, Host: rec.Host, StoreHost: rec.StoreHost, At: rec.At, Match: m})
		}
	}
	return res, nil
}

// grep fans a search out to every store host that holds a snapshot, in
// parallel; each searches its own files.
func (s *Service) grep(w http.ResponseWriter, r *http.Request) {
	var req GrepRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		cluster.WriteError(w, fmt.Errorf("%w: want a grep request", cluster.ErrInvalid))
		return
	}
	if _, err := req.query(); err != nil {
		cluster.WriteError(w, err)
		return
	}
	hosts := map[string]bool{}
	for _, rec := range s.c.Snapshots() {
		hosts[rec.StoreHost] = true
	}
	res := GrepResult{GrepHostResult: GrepHostResult{Matches: []GrepMatch{}}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var hr GrepHostResult
			cl, err := s.c.PeerClient(h)
			if err == nil {
				err = cl.Do(r.Context(), http.MethodPost, "/v1/agent/forensics/grep", req, &hr)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if res.HostErrors == nil {
					res.HostErrors = map[string]string{}
				}
				res.HostErrors[h] = err.Error()
				return
			}
			res.Matches = append(res.Matches, hr.Matches...)
			res.Truncated = append(res.Truncated, hr.Truncated...)
			for id, e := range hr.Errors {
				if res.Errors == nil {
					res.Errors = map[string]string{}
				}
				res.Errors[id] = e
			}
			res.Searched += hr.Searched
			res.Bytes += hr.Bytes
		}()
	}
	wg.Wait()
	sort.SliceStable(res.Matches, func(i, j int) bool {
		a, b := res.Matches[i], res.Matches[j]
		if !a.At.Equal(b.At) {
			return a.At.Before(b.At)
		}
		return a.Snapshot < b.Snapshot
	})
	sort.Strings(res.Truncated)
	if len(hosts) > 0 && len(res.HostErrors) == len(hosts) {
		cluster.WriteError(w, fmt.Errorf("grep snapshots: no store host answered: %w", errors.New(fmt.Sprint(res.HostErrors))))
		return
	}
	cluster.WriteJSON(w, http.StatusOK, res)
}

// GrepSnapshots searches every stored snapshot, through the agent at cl.
func GrepSnapshots(ctx context.Context, cl *cluster.Client, req GrepRequest) (GrepResult, error) {
	var res GrepResult
	return res, cl.Do(ctx, http.MethodPost, "/v1/snapshots/grep", req, &res)
}
