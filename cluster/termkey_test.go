package cluster

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// The FSM takes a term key's term from the log entry, never from the
// request, and keeps the newest.
func TestFSMTermKey(t *testing.T) {
	f := newFSM()
	pub1, _, _ := ed25519.GenerateKey(rand.Reader)
	pub2, _, _ := ed25519.GenerateKey(rand.Reader)
	put := func(term uint64, leader string, pub []byte) error {
		b := cmd(t, PutTermKeyType|IgnoreUnknownTypeFlag, PutTermKeyRequest{Leader: leader, PublicKey: pub})
		resp := f.Apply(&raft.Log{Index: term, Term: term, Type: raft.LogCommand, Data: b})
		if err, ok := resp.(error); ok {
			return err
		}
		return nil
	}
	if err := put(3, "a", pub1); err != nil {
		t.Fatal(err)
	}
	if k, ok := f.termKey(); !ok || k.Term != 3 || k.Leader != "a" {
		t.Fatalf("%+v", k)
	}
	if err := put(2, "b", pub2); !errors.Is(err, ErrConflict) {
		t.Fatalf("an older term's key: %v", err)
	}
	if err := put(5, "b", pub2); err != nil {
		t.Fatal(err)
	}
	if k, _ := f.termKey(); k.Term != 5 || k.Leader != "b" {
		t.Fatalf("%+v", k)
	}
	if err := put(6, "c", []byte("short")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a malformed key: %v", err)
	}
	// Never through another agent.
	if err := checkForwarded(cmd(t, PutTermKeyType, PutTermKeyRequest{Leader: "x", PublicKey: pub1})); !errors.Is(err, ErrInvalid) {
		t.Fatalf("forwarded term key: %v", err)
	}
}

func TestSignAndVerifyStep(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	key := TermKey{Term: 4, Leader: "l", PublicKey: pub}
	now := time.Now()
	body := []byte(`{"container":"c"}`)
	good := SignStep(priv, 4, "h1", http.MethodPost, "/v1/agent/abort", body, now)
	if err := VerifyStep(key, good, "h1", http.MethodPost, "/v1/agent/abort", body, now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, hdr, host, path string
		body                  []byte
		at                    time.Time
		want                  string
	}{
		{"none", "", "h1", "/v1/agent/abort", body, now, "no leader's signature"},
		{"malformed", "v1 term=x ts=y sig=z", "h1", "/v1/agent/abort", body, now, "malformed"},
		{"other host", good, "h2", "/v1/agent/abort", body, now, "does not verify"},
		{"other path", good, "h1", "/v1/agent/resume", body, now, "does not verify"},
		{"other body", good, "h1", "/v1/agent/abort", []byte(`{"container":"d"}`), now, "does not verify"},
		{"other key", SignStep(other, 4, "h1", http.MethodPost, "/v1/agent/abort", body, now), "h1", "/v1/agent/abort", body, now, "does not verify"},
		{"old term", SignStep(priv, 3, "h1", http.MethodPost, "/v1/agent/abort", body, now), "h1", "/v1/agent/abort", body, now, "term 3"},
		{"stale", good, "h1", "/v1/agent/abort", body, now.Add(StepMaxSkew + time.Minute), "away from"},
		{"future", good, "h1", "/v1/agent/abort", body, now.Add(-StepMaxSkew - time.Minute), "away from"},
	} {
		err := VerifyStep(key, tc.hdr, tc.host, http.MethodPost, tc.path, tc.body, tc.at)
		if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	// A clock 30 s off is within bounds.
	if err := VerifyStep(key, good, "h1", http.MethodPost, "/v1/agent/abort", body, now.Add(30*time.Second)); err != nil {
		t.Errorf("30 s skew: %v", err)
	}
}
