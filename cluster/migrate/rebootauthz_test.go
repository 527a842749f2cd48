package migrate

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/policy"
)

// Who may call the reboot routes: a reboot of this host only over the
// local socket (a dry run from anywhere); the retry of a kept checkpoint
// only with the current leader's signature for this host.
func TestRebootRoutesWhoMayCall(t *testing.T) {
	h := newRBHost(t, policy.RebootModeLocal)
	h.start()
	defer h.stop()
	mux := muxAdapter{http.NewServeMux()}
	h.pa.RegisterReboot(mux)
	tcp := &net.TCPAddr{IP: net.IPv4(10, 99, 0, 1), Port: 7948}
	unix := &net.UnixAddr{Name: "/run/orchestrate/agent.sock", Net: "unix"}
	call := func(addr net.Addr, path, sig, body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, path, strings.NewReader(body))
		req = req.WithContext(context.WithValue(req.Context(), http.LocalAddrContextKey, addr))
		if sig != "" {
			req.Header.Set(cluster.StepHeader, sig)
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}
	if code, out := call(tcp, "/v1/agent/reboot", "", `{"mode":"local"}`); code != http.StatusForbidden {
		t.Fatalf("a reboot over TLS: %d %s, want 403", code, out)
	}
	if seq := h.pa.Status().Sequence; seq != nil && seq.Active() {
		t.Fatalf("a refused reboot started a sequence: %+v", seq)
	}
	if code, out := call(tcp, "/v1/agent/reboot", "", `{"mode":"local","dry_run":true}`); code != http.StatusOK {
		t.Fatalf("a dry run over TLS: %d %s", code, out)
	}
	if code, out := call(unix, "/v1/agent/reboot", "", `{"mode":"local","dry_run":true}`); code != http.StatusOK {
		t.Fatalf("a dry run over the socket: %d %s", code, out)
	}

	path, body := "/v1/agent/checkpoints/restore", `{"id":"kept-1"}`
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Now()
	for name, sig := range map[string]string{
		"unsigned":      "",
		"another key":   cluster.SignStep(otherKey, stepTerm, "h1", http.MethodPost, path, []byte(body), now),
		"an older term": cluster.SignStep(stepPriv, stepTerm-1, "h1", http.MethodPost, path, []byte(body), now),
		"another host":  cluster.SignStep(stepPriv, stepTerm, "h2", http.MethodPost, path, []byte(body), now),
		"another body":  cluster.SignStep(stepPriv, stepTerm, "h1", http.MethodPost, path, []byte(`{"id":"kept-2"}`), now),
		"too old":       cluster.SignStep(stepPriv, stepTerm, "h1", http.MethodPost, path, []byte(body), now.Add(-time.Hour)),
	} {
		for _, addr := range []net.Addr{tcp, unix} {
			if code, out := call(addr, path, sig, body); code != http.StatusForbidden {
				t.Errorf("kept restore %s over %s: %d %s, want 403", name, addr.Network(), code, out)
			}
		}
	}
	// The leader's own step gets through to the store (which keeps no
	// such checkpoint).
	sig := cluster.SignStep(stepPriv, stepTerm, "h1", http.MethodPost, path, []byte(body), now)
	if code, out := call(tcp, path, sig, body); code != http.StatusNotFound {
		t.Fatalf("the leader's kept restore: %d %s, want 404", code, out)
	}
	// Without a guard, nothing gets through.
	bare := &PolicyAgent{Host: "h1", Store: h.store, Lead: h.lead, Local: h.pa.Local}
	m2 := muxAdapter{http.NewServeMux()}
	bare.RegisterReboot(m2)
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	req.Header.Set(cluster.StepHeader, sig)
	rec := httptest.NewRecorder()
	m2.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Fatalf("no guard: %d %s", rec.Code, rec.Body.String())
	}
}
