package cluster

import (
	"crypto/ed25519"
	"fmt"
	"io"
	"net/http"

	"github.com/edgemigrate/orchestrate/internal/clock"
)

// Operator requests that the leader carries out.
//
// Some operator routes (restore copies, forensic checkpoints, removing a
// snapshot) end in steps on other hosts that only the leader may order: the
// leader signs them with its term key (StepClient) and the hosts verify the
// signature (LeaderStep). The agent the operator talks to therefore does
// not call those hosts itself; Forward relays the request to the leader,
// which serves it, and streams the leader's answer back, trailers included.

// Leadership is what Forward needs to know about this agent (Cluster).
type Leadership interface {
	IsLeader() bool
	LeaderClient() (*Client, error)
}

var _ Leadership = (*Cluster)(nil)

// Forward serves h on the leader and relays the request to the leader from
// any other agent. The request body (JSON, under the API's body cap) is
// read in full first; the answer, which may be a long stream (an archive)
// with trailers, is copied as it comes. A request that was already
// forwarded once is not forwarded again: an agent that no longer leads
// answers ErrNotLeader, and the caller retries.
func Forward(lead Leadership, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if lead.IsLeader() {
			h(w, r)
			return
		}
		if r.Header.Get(forwardedHeader) != "" {
			writeError(w, fmt.Errorf("%w: %s was forwarded here, but this agent does not lead", ErrNotLeader, r.URL.Path))
			return
		}
		cl, err := lead.LeaderClient()
		if err != nil {
			writeError(w, err)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			writeError(w, fmt.Errorf("%w: read the request: %v", ErrInvalid, err))
			return
		}
		req, err := cl.newRequest(r.Context(), r.Method, r.URL.RequestURI(), body)
		if err != nil {
			writeError(w, err)
			return
		}
		req.Header.Set(forwardedHeader, "1")
		if ct := r.Header.Get("Content-Type"); ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		resp, err := cl.hc.Do(req)
		if err != nil {
			writeError(w, fmt.Errorf("%w: forward %s to the leader: %v", ErrNoLeader, r.URL.Path, err))
			return
		}
		defer resp.Body.Close()
		Relay(w, resp)
	}
}

// Relay copies an agent's answer to w: status, content type and length,
// body and trailers. A body cut short is reported as the trailer
// "Orchestrate-Error" (a streamed archive's reader discards what it got
// without a result trailer).
func Relay(w http.ResponseWriter, resp *http.Response) {
	for _, k := range []string{"Content-Type", "Content-Length"} {
		if v := resp.Header.Get(k); v != "" {
			w.Header().Set(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	if _, err := io.Copy(w, resp.Body); err != nil {
		w.Header().Set(http.TrailerPrefix+"Orchestrate-Error", "relay: "+err.Error())
		return
	}
	for k, vs := range resp.Trailer {
		for _, v := range vs {
			w.Header().Add(http.TrailerPrefix+k, v)
		}
	}
}

// WithStepKey returns a copy of cl whose requests carry a step signature
// made with priv for term, addressed to host: what StepClient hands out on
// the leader, and what tests use to act as one.
func (cl *Client) WithStepKey(priv ed25519.PrivateKey, term uint64, host string) *Client {
	out := *cl
	out.sign = func(req *http.Request, body []byte) {
		req.Header.Set(StepHeader, SignStep(priv, term, host, req.Method, req.URL.Path, body, clock.Now()))
	}
	return &out
}
