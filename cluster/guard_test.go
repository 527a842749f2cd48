package cluster

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/edgemigrate/orchestrate/internal/netguard"
)

// closedWithin reports whether the server closes c within d.
func closedWithin(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := c.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return err != nil
}

// Raft's listener closes a connection whose TLS handshake does not finish
// in time, without holding up Accept; a member's handshake works.
func TestRaftHandshakeDeadline(t *testing.T) {
	old := raftHandshake
	raftHandshake = 200 * time.Millisecond
	t.Cleanup(func() { raftHandshake = old })
	ct, err := newClusterTLS(bytes.Repeat([]byte("ab"), 32))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := guardRaft(raw, ct.mutualServerConfig())
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { // as raft's handleConn: read, echo
				defer c.Close()
				b := make([]byte, 1)
				if _, err := c.Read(b); err == nil {
					c.Write(b)
				}
			}()
		}
	}()
	silent, err := net.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// While the silent one waits, a member gets through.
	member, err := tls.Dial("tcp", raw.Addr().String(), ct.clientConfig())
	if err != nil {
		t.Fatalf("member handshake: %v", err)
	}
	defer member.Close()
	if _, err := member.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(member, make([]byte, 1)); err != nil {
		t.Fatalf("member echo: %v", err)
	}
	if !closedWithin(silent, 2*time.Second) {
		t.Fatal("a connection that never handshook was kept open")
	}
	// A stranger's certificate fails the handshake.
	stranger, _ := newClusterTLS(bytes.Repeat([]byte("cd"), 32))
	if c, err := tls.Dial("tcp", raw.Addr().String(), stranger.clientConfig()); err == nil {
		c.Write([]byte("x"))
		if _, err := io.ReadFull(c, make([]byte, 1)); err == nil {
			t.Fatal("a stranger's TLS connection was served")
		}
		c.Close()
	}
}

// Request bodies are capped; /v1/apply gets more room.
func TestAPIBodyLimit(t *testing.T) {
	srv := httptest.NewServer(newAPIServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}), nil).Handler)
	defer srv.Close()
	post := func(path string, n int64, chunked bool) int {
		var body io.Reader = io.LimitReader(zeros{}, n)
		if !chunked {
			body = bytes.NewReader(make([]byte, n))
		}
		resp, err := http.Post(srv.URL+path, "application/json", body)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		path    string
		n       int64
		chunked bool
		want    int
	}{
		{"/v1/agent/abort", 1 << 10, false, http.StatusNoContent},
		{"/v1/agent/abort", 2 << 20, false, http.StatusRequestEntityTooLarge},
		{"/v1/agent/abort", 2 << 20, true, http.StatusBadRequest},
		{"/v1/apply", 3 << 20, false, http.StatusNoContent},
		{"/v1/apply", 5 << 20, true, http.StatusBadRequest},
	} {
		if got := post(c.path, c.n, c.chunked); got != c.want {
			t.Errorf("POST %s with %d bytes (chunked %v): %d, want %d", c.path, c.n, c.chunked, got, c.want)
		}
	}
	s := newAPIServer(http.NotFoundHandler(), nil)
	if s.ReadHeaderTimeout == 0 || s.ReadTimeout == 0 || s.IdleTimeout == 0 || s.WriteTimeout != 0 {
		t.Fatalf("API server timeouts: header %v, read %v, idle %v, write %v (write must stay 0: progress streams)",
			s.ReadHeaderTimeout, s.ReadTimeout, s.IdleTimeout, s.WriteTimeout)
	}
}

// An upload route takes a body up to its own cap, the rest stay capped.
func TestAPIUploadLimit(t *testing.T) {
	var uploads sync.Map
	uploads.Store("/v1/upload", int64(8<<20))
	srv := httptest.NewServer(newAPIServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}), &uploads).Handler)
	defer srv.Close()
	post := func(path string, n int64) int {
		resp, err := http.Post(srv.URL+path, "application/x-tar", io.LimitReader(zeros{}, n))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		path string
		n    int64
		want int
	}{
		{"/v1/upload", 4 << 20, http.StatusNoContent},
		{"/v1/upload", 9 << 20, http.StatusBadRequest},
		{"/v1/other", 4 << 20, http.StatusBadRequest},
	} {
		if got := post(tc.path, tc.n); got != tc.want {
			t.Errorf("POST %s with %d bytes: %d, want %d", tc.path, tc.n, got, tc.want)
		}
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// Gossip's TCP connections are capped per address.
func TestGossipStreamCap(t *testing.T) {
	old := gossipGuard
	gossipGuard = netguard.Config{MaxPerIP: 2}
	t.Cleanup(func() { gossipGuard = old })
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := probe.Addr().(*net.TCPAddr).Port
	probe.Close()
	mc := memberlist.DefaultLANConfig()
	mc.Name, mc.BindAddr, mc.BindPort, mc.AdvertisePort = "g1", "127.0.0.1", port, port
	mc.LogOutput = io.Discard
	ml, err := createGossip(mc, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ml.Shutdown()
	var closed int
	for range 6 {
		c, err := net.Dial("tcp", ml.LocalNode().Address())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if closedWithin(c, 200*time.Millisecond) {
			closed++
		}
	}
	if closed != 4 {
		t.Fatalf("%d of 6 idle connections from one address closed at once, want 4", closed)
	}
	if err := ml.Shutdown(); err != nil && !strings.Contains(err.Error(), "closed") {
		t.Fatal(err)
	}
}
