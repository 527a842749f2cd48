package main

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
)

// A member holding the API token sends malformed commands to POST
// /v1/apply, on the leader and on a follower (which would forward them):
// each is refused with 400 before it reaches raft, a migration record is
// refused even when well formed (only the leader's own coordinator writes
// them), every agent stays up, and the cluster still applies good writes.
func TestMalformedApplyWithTokenKeepsAgentsUp(t *testing.T) {
	tc := newTestCluster(t, 4, 3, 3)
	tc.startAll()
	leader, _ := tc.formed(3, 20*time.Second)
	secret, err := os.ReadFile(tc.secret)
	if err != nil {
		t.Fatal(err)
	}
	rec := `{"record":{"id":"forged","container":"c1","from":"a1","to":"a2","phase":"Planned"}}`
	bad := map[string][]byte{
		"bad json":                   []byte("\x02{"),
		"json of the wrong shape":    []byte("\x02{\"record\": 7}"),
		"unknown type":               []byte("\x63{}"),
		"type byte only":             []byte("\x01"),
		"empty":                      nil,
		"invalid lock":               []byte(`` + "\x04" + `{"name":"","holder":"x"}`),
		"forged migration record":    append([]byte{byte(cluster.PutMigrationType)}, rec...),
		"forged migration deletion":  append([]byte{byte(cluster.DeleteMigrationType)}, `{"id":"x"}`...),
		"unknown type, flag set":     []byte("\xe3{}"),
		"valid type, garbage fields": []byte("\x06{\"event\":{\"id\":\"e\",\"kind\":\"k\",\"at\":\"yesterday\"}}"),
	}
	var targets []*agent
	targets = append(targets, tc.agent(leader))
	for _, a := range tc.agents {
		if a.name != leader {
			targets = append(targets, a)
			break
		}
	}
	// The bytes go as they are, with the token (the server's certificate is
	// not what this test is about).
	token := cluster.APIToken([]byte(strings.TrimSpace(string(secret))))
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for _, a := range targets {
		for name, b := range bad {
			req, _ := http.NewRequest(http.MethodPost, "https://"+a.ip+":17948/v1/apply", bytes.NewReader(b))
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("%s on %s: %v", name, a.name, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `"invalid"`) {
				t.Errorf("%s on %s: %d %s, want 400 invalid", name, a.name, resp.StatusCode, body)
			}
		}
	}
	for _, a := range tc.agents {
		if !a.running() {
			t.Fatalf("agent %s died", a.name)
		}
	}
	if _, took := tc.formed(3, 10*time.Second); took > 5*time.Second {
		t.Errorf("the cluster took %s to answer again", took)
	}
	for _, a := range tc.agents {
		var recs []cluster.MigrationRecord
		ctx, cancel := ctx2s()
		err := a.client().Do(ctx, http.MethodGet, "/v1/migrations", nil, &recs)
		cancel()
		if err != nil || len(recs) != 0 {
			t.Fatalf("%s: migrations %+v, %v", a.name, recs, err)
		}
	}
	// Good writes still go through, from any agent.
	id := fmt.Sprintf("after-%d", time.Now().UnixNano())
	if err := tc.agents[2].appendEvent(id); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the event everywhere", func() error {
		for _, a := range tc.agents {
			if err := a.hasEvent(id); err != nil {
				return err
			}
		}
		return nil
	})
}
