package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The metrics token reads GET /metrics and nothing else; the API token
// still reads everything; the CA certificate a scraper is given verifies
// the agents' TLS.
func TestMetricsToken(t *testing.T) {
	secret := []byte(strings.Repeat("cd", 32))
	other := []byte(strings.Repeat("ef", 32))
	mt := MetricsToken(secret)
	if mt == APIToken(secret) || mt == MetricsToken(other) || len(mt) != 64 || strings.Contains(mt, APIToken(secret)[:16]) {
		t.Fatalf("metrics token %s is not its own value", mt)
	}
	c := &Cluster{cfg: Config{Secret: secret}, token: APIToken(secret)}
	a := &API{c: c, mux: http.NewServeMux()}
	for _, p := range []string{"GET /metrics", "GET /v1/status", "POST /v1/apply", "POST /v1/drain", "POST /metrics", "GET /metrics/x"} {
		a.mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	}
	tl, err := newClusterTLS(secret)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(a.authenticate(a.mux))
	srv.TLS = tl.serverConfig()
	srv.StartTLS()
	defer srv.Close()

	// A scraper verifies the agent with the CA certificate alone.
	pemCA, err := CACertificatePEM(secret)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemCA) {
		t.Fatalf("CA certificate does not parse:\n%s", pemCA)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: TLSServerName}}}
	do := func(method, path, token string) int {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		method, path, token string
		want                int
	}{
		{"GET", "/metrics", mt, 200},
		{"GET", "/metrics?name[]=x", mt, 200},
		{"GET", "/v1/status", mt, 401},
		{"POST", "/v1/apply", mt, 401},
		{"POST", "/v1/drain", mt, 401},
		{"POST", "/metrics", mt, 401},
		{"GET", "/metrics/x", mt, 401},
		{"GET", "/metrics", MetricsToken(other), 401},
		{"GET", "/metrics", "", 401},
		{"GET", "/metrics", APIToken(secret), 200},
		{"POST", "/v1/drain", APIToken(secret), 200},
	} {
		if got := do(tc.method, tc.path, tc.token); got != tc.want {
			t.Errorf("%s %s with %s…: %d, want %d", tc.method, tc.path, tc.token[:min(8, len(tc.token))], got, tc.want)
		}
	}
	// Another secret's CA does not verify this agent.
	otherCA, _ := CACertificatePEM(other)
	op := x509.NewCertPool()
	op.AppendCertsFromPEM(otherCA)
	oc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: op, ServerName: TLSServerName}}}
	if resp, err := oc.Get(srv.URL + "/metrics"); err == nil {
		resp.Body.Close()
		t.Fatal("a CA from another secret verified the agent")
	}
}
