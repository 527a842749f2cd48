package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
)

// Leadership tells the API whether to serve a request here or forward it.
type Leadership interface {
	IsLeader() bool
	LeaderClient() (*cluster.Client, error)
}

// Register adds the operator routes. Writes that need the leader
// (migrate, drain) are forwarded to it from any agent.
//
//	POST /v1/migrate   MigrateRequest -> MigrationRecord (Planned; poll /v1/migrations/{id})
//	POST /v1/drain     DrainRequest   -> DrainResult
//	POST /v1/cordon    {"host"}       -> Host
//	POST /v1/uncordon  {"host"}       -> Host
func (co *Coordinator) Register(mux Mux, lead Leadership) {
	mux.HandleFunc("POST /v1/migrate", forwarded(lead, func(w http.ResponseWriter, r *http.Request) {
		var req MigrateRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Container == "" {
			writeErr(w, fmt.Errorf("%w: want {\"container\": NAME, \"to\": HOST}", cluster.ErrInvalid))
			return
		}
		rec, err := co.Migrate(r.Context(), req)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, rec)
	}))
	mux.HandleFunc("POST /v1/drain", forwarded(lead, func(w http.ResponseWriter, r *http.Request) {
		var req DrainRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Host == "" {
			writeErr(w, fmt.Errorf("%w: want {\"host\": NAME}", cluster.ErrInvalid))
			return
		}
		res, err := co.Drain(r.Context(), req)
		co.recordDrain(r.Context(), req, res, err) // drainevent.go
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, res)
	}))
	mux.HandleFunc("POST /v1/cordon", co.cordon(true))
	mux.HandleFunc("POST /v1/uncordon", co.cordon(false))
}

// HostRequest names a host.
type HostRequest struct {
	Host   string `json:"host"`
	Reason string `json:"reason,omitempty"`
}

func (co *Coordinator) cordon(on bool) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		var req HostRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Host == "" {
			writeErr(w, fmt.Errorf("%w: want {\"host\": NAME}", cluster.ErrInvalid))
			return
		}
		known := false
		for _, m := range co.store.Members() {
			known = known || m.Name == req.Host
		}
		if !known {
			writeErr(w, fmt.Errorf("%w: no host %s in the cluster", cluster.ErrNotFound, req.Host))
			return
		}
		req2 := cluster.SetHostRequest{Name: req.Host, Cordoned: &on, Reason: req.Reason, At: co.cfg.Now().UTC()}
		if !on {
			off := false
			req2.Draining = &off
		}
		if err := co.store.SetHost(r.Context(), req2); err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, cluster.Host{Name: req.Host, Cordoned: on, Reason: req.Reason, UpdatedAt: req2.At})
	}
}

// forwarded serves h on the leader and proxies the request to the leader
// elsewhere.
func forwarded(lead Leadership, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if lead.IsLeader() {
			h(w, r)
			return
		}
		cl, err := lead.LeaderClient()
		if err != nil {
			writeErr(w, err)
			return
		}
		var body json.RawMessage
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			writeErr(w, fmt.Errorf("%w: %v", cluster.ErrInvalid, err))
			return
		}
		resp, err := cl.Raw(r.Context(), r.Method, r.URL.Path, body)
		if err != nil {
			writeErr(w, err)
			return
		}
		defer resp.Body.Close()
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}
}

// Peers is how ClusterAgents reaches other agents (cluster.Cluster).
type Peers interface {
	PeerClient(name string) (*cluster.Client, error)
	// StepClient is PeerClient whose requests carry this leader's step
	// signature.
	StepClient(name string) (*cluster.Client, error)
}

// ClusterAgents implements Agents over the cluster's authenticated API.
type ClusterAgents struct{ Peers Peers }

var _ Agents = ClusterAgents{}

// Call implements Agents. Requests carry the leader's step signature.
func (a ClusterAgents) Call(ctx context.Context, host, path string, in, out any) error {
	cl, err := a.Peers.StepClient(host)
	if err != nil {
		return err
	}
	return cl.Do(ctx, http.MethodPost, path, in, out)
}

// Stream implements Agents. Requests carry the leader's step signature.
func (a ClusterAgents) Stream(ctx context.Context, host, path string, in any) (io.ReadCloser, error) {
	cl, err := a.Peers.StepClient(host)
	if err != nil {
		return nil, err
	}
	resp, err := cl.Raw(ctx, http.MethodPost, path, in)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// Wait polls the agent at cl until every migration in ids has ended,
// calling each with the records on every poll (for progress). It returns
// the final records. See WaitVia: a failed poll is retried, so a CLI
// waiting on its local agent sails through a leader change or an agent
// restart.
func Wait(ctx context.Context, cl *cluster.Client, ids []string, every time.Duration, each func([]cluster.MigrationRecord)) ([]cluster.MigrationRecord, error) {
	return WaitVia(ctx, func() (*cluster.Client, error) { return cl, nil }, ids, every, each)
}

// ClientFunc returns the agent to ask now. WaitVia calls it before every
// poll, so that a caller polling the leader (Leadership.LeaderClient)
// follows it across elections.
type ClientFunc func() (*cluster.Client, error)

// WaitVia is Wait against whichever agent get returns at each poll. It ends
// when every record is terminal, when ctx ends, or on an error that asking
// again cannot cure (ErrInvalid, ErrUnauthorized, or a record still not
// found after lag). Anything else (no leader, a leader that stepped down,
// an agent that does not answer) is retried with backoff: a migration goes
// on across a leader change, so a wait for it must too.
//
// The agent polled may be a follower whose replica lags the leader by a
// moment, so a record not found yet is retried for a while.
func WaitVia(ctx context.Context, get ClientFunc, ids []string, every time.Duration, each func([]cluster.MigrationRecord)) ([]cluster.MigrationRecord, error) {
	lagUntil := time.Now().Add(10 * time.Second)
	var last []cluster.MigrationRecord
	failures := 0
	for {
		out, done, err := pollOnce(ctx, get, ids, time.Now().Before(lagUntil))
		switch {
		case err == nil:
			failures, last = 0, out
			if each != nil {
				each(out)
			}
			if done {
				return out, nil
			}
		case ctx.Err() != nil:
			return last, ctx.Err()
		case !waitRetryable(err):
			return last, err
		default:
			failures++
		}
		wait := every
		if failures > 0 {
			wait = max(every, backoff(failures-1))
		}
		if !sleepCtx(ctx, wait) {
			return last, ctx.Err()
		}
	}
}

// pollOnce reads every record once. A record not found counts as Planned
// while lag is true.
func pollOnce(ctx context.Context, get ClientFunc, ids []string, lag bool) ([]cluster.MigrationRecord, bool, error) {
	cl, err := get()
	if err != nil {
		return nil, false, err
	}
	out := make([]cluster.MigrationRecord, 0, len(ids))
	done := true
	for _, id := range ids {
		var m cluster.MigrationRecord
		err := cl.Do(ctx, http.MethodGet, "/v1/migrations/"+id, nil, &m)
		if errors.Is(err, cluster.ErrNotFound) && lag {
			m, err = cluster.MigrationRecord{ID: id, Phase: Planned}, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("migration %s: %w", id, err)
		}
		done = done && Terminal(m.Phase)
		out = append(out, m)
	}
	return out, done, nil
}

// waitRetryable: asking again (maybe another agent) may give another answer.
func waitRetryable(err error) bool {
	return !errors.Is(err, cluster.ErrInvalid) && !errors.Is(err, cluster.ErrUnauthorized) && !errors.Is(err, cluster.ErrNotFound)
}
