package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
)

// Member returns the named member as gossip knows it.
func (c *Cluster) Member(name string) (Member, bool) {
	for _, m := range c.Members() {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// PeerClient returns an authenticated client for the named member's API.
func (c *Cluster) PeerClient(name string) (*Client, error) {
	m, ok := c.Member(name)
	if !ok {
		return nil, fmt.Errorf("host %s: %w", name, ErrNotFound)
	}
	if m.APIAddr == "" {
		return nil, fmt.Errorf("host %s publishes no API address: %w", name, ErrInvalid)
	}
	return c.peerClient(m.APIAddr), nil
}

// LeaderClient returns a client for the current leader's API.
func (c *Cluster) LeaderClient() (*Client, error) {
	l := c.Leader()
	if l == "" {
		return nil, ErrNoLeader
	}
	return c.PeerClient(l)
}

// Raw sends a request with in as JSON body (nil for none) and returns the
// response for the caller to read and close: for streamed answers. A
// non-2xx status is returned as an error wrapping its sentinel.
func (cl *Client) Raw(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = b
	}
	req, err := cl.newRequest(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := cl.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, cl.base+path, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, fmt.Errorf("%s %s: %w", method, path, decodeError(resp))
	}
	return resp, nil
}
