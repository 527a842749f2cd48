package main

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A real agent: `metrics-token` prints a token that reads /metrics over
// TLS verified with the CA certificate it writes, and that every other
// route refuses with 401.
func TestMetricsTokenReadsOnlyMetrics(t *testing.T) {
	tc := newTestCluster(t, 42, 1, 1)
	tc.startAll()
	tc.formed(1, 20*time.Second)
	caFile := filepath.Join(tc.dir, "ca.pem")
	out, errOut, code := runCLI(t, nil, "metrics-token", "--secret-file", tc.secret, "--ca-file", caFile)
	if code != 0 {
		t.Fatalf("metrics-token: exit %d: %s", code, errOut)
	}
	token := strings.TrimSpace(out)
	if len(token) != 64 {
		t.Fatalf("token %q", token)
	}
	// The same from the agent's config file.
	if out2, errOut, code := runCLI(t, nil, "metrics-token", "-c", tc.agents[0].cfgPath); code != 0 || strings.TrimSpace(out2) != token {
		t.Fatalf("metrics-token -c: exit %d %q %s", code, out2, errOut)
	}
	if _, _, code := runCLI(t, []string{"ORCHESTRATE_SECRET_FILE="}, "metrics-token"); code != 2 {
		t.Fatalf("metrics-token without a secret: exit %d, want 2", code)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("ca file:\n%s", pem)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "orchestrate"}}}
	base := "https://127.77.42.1:17948"
	do := func(method, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(`{"host":"a1"}`))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := do(http.MethodGet, "/metrics"); code != 200 || !strings.Contains(body, "orchestrate_members") {
		t.Fatalf("GET /metrics: %d %.200s", code, body)
	}
	for _, r := range []struct{ method, path string }{
		{"GET", "/v1/members"}, {"GET", "/v1/status"}, {"GET", "/v1/events"}, {"GET", "/v1/snapshots"},
		{"POST", "/v1/drain"}, {"POST", "/v1/cordon"}, {"POST", "/v1/apply"}, {"POST", "/v1/agent/reboot"},
		{"POST", "/metrics"},
	} {
		if code, body := do(r.method, r.path); code != http.StatusUnauthorized {
			t.Errorf("%s %s with the metrics token: %d %.200s, want 401", r.method, r.path, code, body)
		}
	}
	if h, err := tc.agents[0].members(); err != nil || h["a1"].Cordoned {
		t.Fatalf("a1 after the refused requests: %+v %v", h["a1"], err)
	}
}
