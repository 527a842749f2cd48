package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/edgemigrate/orchestrate/internal/netguard"
)

// DefaultSocket is where the local CLI finds its agent.
const DefaultSocket = "/run/orchestrate/agent.sock"

// Client talks to one agent's API: over its unix socket (no credentials),
// or over https with the token and CA derived from the cluster secret.
type Client struct {
	base   string
	socket string // unix socket path, when not https
	hc     *http.Client
	token  string
	// sign, when set, signs each request as a leader's step (StepClient).
	sign func(req *http.Request, body []byte)
}

// NewClient returns a client for agent, which is a unix socket path or
// "https://host:port". https needs the secret.
func NewClient(agent string, secret []byte) (*Client, error) {
	if strings.HasPrefix(agent, "https://") {
		if len(secret) == 0 {
			return nil, fmt.Errorf("%w: https agent %s needs --secret-file", ErrNoSecret, agent)
		}
		t, err := newClusterTLS(secret)
		if err != nil {
			return nil, err
		}
		tr := &http.Transport{TLSClientConfig: t.clientConfig(), MaxIdleConnsPerHost: 4, IdleConnTimeout: time.Minute}
		return &Client{base: strings.TrimSuffix(agent, "/"), hc: &http.Client{Transport: tr}, token: APIToken(secret)}, nil
	}
	if strings.Contains(agent, "://") {
		return nil, fmt.Errorf("agent address %q: want a unix socket path or https://host:port: %w", agent, ErrInvalid)
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", agent)
	}}
	return &Client{base: "http://agent", socket: agent, hc: &http.Client{Transport: tr}}, nil
}

// peerClient returns a client for a peer agent's API address (host:port).
func (c *Cluster) peerClient(addr string) *Client {
	c.peerOnce.Do(func() {
		c.peerHTTP = &http.Client{Transport: &http.Transport{
			TLSClientConfig: c.tls.clientConfig(), MaxIdleConnsPerHost: 4, IdleConnTimeout: time.Minute,
			DialContext: netguard.DialFrom(c.cfg.APIBindAddr, 2*time.Second),
		}}
	})
	return &Client{base: "https://" + addr, hc: c.peerHTTP, token: c.token}
}

// Do sends a request with in as JSON body (nil for none) and decodes the
// response into out (nil to discard). API errors come back wrapping their
// sentinel (ErrNotFound, ErrUnauthorized, ...).
func (cl *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = b
	}
	return cl.do(ctx, method, path, body, nil, out)
}

// newRequest builds a request with the client's credentials (and step
// signature).
func (cl *Client) newRequest(ctx context.Context, method, path string, body []byte) (*http.Request, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, cl.base+path, r)
	if err != nil {
		return nil, err
	}
	if cl.token != "" {
		req.Header.Set("Authorization", "Bearer "+cl.token)
	}
	if cl.sign != nil {
		cl.sign(req, body)
	}
	return req, nil
}

func (cl *Client) do(ctx context.Context, method, path string, body []byte, hdr http.Header, out any) error {
	req, err := cl.newRequest(ctx, method, path, body)
	if err != nil {
		return err
	}
	return cl.roundTrip(req, hdr, out)
}

// roundTrip sends req with the extra headers and decodes the JSON answer
// into out (nil to discard).
func (cl *Client) roundTrip(req *http.Request, hdr http.Header, out any) error {
	method, path := req.Method, req.URL.Path
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := cl.hc.Do(req)
	if err != nil {
		if cl.socket != "" {
			return fmt.Errorf("cannot reach the agent at %s (is `orchestrate agent` running? --agent picks another): %w", cl.socket, err)
		}
		return fmt.Errorf("%s %s: %w", method, cl.base+path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %w", method, path, decodeError(resp))
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode: %w", method, path, err)
	}
	return nil
}

// Members is GET /v1/members.
func (cl *Client) Members(ctx context.Context) ([]Member, error) {
	var ms []Member
	return ms, cl.Do(ctx, http.MethodGet, "/v1/members", nil, &ms)
}

// PS is GET /v1/ps.
func (cl *Client) PS(ctx context.Context) (PSResult, error) {
	var r PSResult
	return r, cl.Do(ctx, http.MethodGet, "/v1/ps", nil, &r)
}

// Status is GET /v1/status.
func (cl *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, cl.Do(ctx, http.MethodGet, "/v1/status", nil, &s)
}

// Apply sends a command to POST /v1/apply; the agent forwards it to the
// leader.
func (cl *Client) Apply(ctx context.Context, t MessageType, req any) error {
	b, err := encodeCommand(t, req)
	if err != nil {
		return err
	}
	return cl.do(ctx, http.MethodPost, "/v1/apply", b, nil, nil)
}

// forward posts a framed command to the leader. A dial failure becomes
// errUnreachable (nothing was sent, so the caller may retry).
func (cl *Client) forward(ctx context.Context, b []byte) error {
	err := cl.do(ctx, http.MethodPost, "/v1/apply", b, http.Header{forwardedHeader: {"1"}}, nil)
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return fmt.Errorf("%w: %v", errUnreachable, err)
	}
	return err
}
