package forensics

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
)

// The steps that freeze a container, hand out its memory or delete a
// stored snapshot are the leader's to order: without its signature for
// this host, path and body (or with a stale one) they are refused, the
// container keeps running and the store keeps its snapshot. The operator
// routes still work from any agent: they go through the leader.
func TestForensicsStepsNeedTheLeadersSignature(t *testing.T) {
	w := newWorld(t, "h1", "h2", "h3")
	ctx := context.Background()
	web := w.hosts["h2"].eng.(*enginetest.Fake).Run("web", "img", 1<<20, nil)
	// A stored snapshot on h3, taken through a follower (h2 forwards to
	// the leader, h1).
	rec, err := StoreCheckpoint(ctx, w.client("h2"), CheckpointRequest{Container: "web", LeaveRunning: true, StoreHost: "h3"})
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		host, path string
		in         any
	}{
		{"h2", "/v1/agent/forensics/checkpoint", HostCheckpointRequest{Container: web.ID}},
		{"h2", "/v1/agent/forensics/snapshot", HostCheckpointRequest{Container: web.ID, StoreHost: "h3"}},
		{"h2", "/v1/agent/forensics/image", ImageRequest{Container: web.ID, Image: "evil"}},
		{"h3", "/v1/agent/forensics/remove", RemoveRequest{ID: rec.ID}},
	}
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Now()
	for _, st := range steps {
		body, _ := json.Marshal(st.in)
		for name, sig := range map[string]string{
			"unsigned":      "",
			"another key":   cluster.SignStep(otherKey, w.term, st.host, http.MethodPost, st.path, body, now),
			"an older term": cluster.SignStep(w.priv, w.term-1, st.host, http.MethodPost, st.path, body, now),
			"another host":  cluster.SignStep(w.priv, w.term, "h1", http.MethodPost, st.path, body, now),
			"another body":  cluster.SignStep(w.priv, w.term, st.host, http.MethodPost, st.path, []byte(`{}`), now),
			"too old":       cluster.SignStep(w.priv, w.term, st.host, http.MethodPost, st.path, body, now.Add(-time.Hour)),
		} {
			code, out := rawPost(t, w.hosts[st.host].sock, st.path, sig, body)
			if code != http.StatusForbidden || !strings.Contains(out, "forbidden") || strings.Contains(out, "checkpoint/") {
				t.Errorf("%s %s: %d %.200s", st.path, name, code, out)
			}
		}
		// A follower's own Service cannot order it either.
		cl, _ := (*hostView)(w.hosts["h2"]).StepClient(st.host)
		if err := cl.Do(ctx, http.MethodPost, st.path, st.in, nil); !errors.Is(err, cluster.ErrForbidden) {
			t.Errorf("%s from a follower: %v", st.path, err)
		}
	}
	if c, _ := w.hosts["h2"].eng.Inspect(ctx, web.ID); !c.Running {
		t.Fatal("web stopped")
	}
	if recs, _ := Snapshots(ctx, w.client("h1")); len(recs) != 1 || recs[0].ID != rec.ID {
		t.Fatalf("snapshots after the refused steps: %+v", recs)
	}
	if n := len(ls(t, w.hosts["h3"].agent.st.dir)); n != 1 {
		t.Fatalf("h3 stores %d files", n)
	}
	// The operator's removal, through a follower, goes through the leader.
	if err := RemoveSnapshot(ctx, w.client("h3"), rec.ID); err != nil {
		t.Fatal(err)
	}
	if n := len(ls(t, w.hosts["h3"].agent.st.dir)); n != 0 {
		t.Fatalf("h3 stores %d files after the removal", n)
	}
}

func rawPost(t *testing.T, sock, path, sig string, body []byte) (int, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	req, _ := http.NewRequest(http.MethodPost, "http://agent"+path, bytes.NewReader(body))
	if sig != "" {
		req.Header.Set(cluster.StepHeader, sig)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
