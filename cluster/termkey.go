package cluster

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/edgemigrate/orchestrate/internal/clock"
)

// Leader-ordered steps and their proof.
//
// Some agent routes act on a host's containers for the protocol: migrate
// out, push an image, abort, resume, remove. Only the current leader may
// order them. The API token proves membership, not leadership, and anything
// written to raft is readable by every member, so a shared value in raft
// proves nothing either. Instead each leader, at the start of its term,
// makes an ed25519 key pair, keeps the private half in memory and writes the
// public half to raft (PutTermKeyType). The FSM records it with the term of
// the log entry that carried it, which raft sets and no request can choose;
// only the leader's own process writes that type (never through POST
// /v1/apply). Every step request the leader sends carries a signature over
// the method, path, target host, term, time and body hash
// (StepHeader). A host accepts a step only when the signature verifies
// against the term key in its replica and the term is the newest it knows:
// a deposed leader's steps are refused as soon as the new leader's key is
// replicated.

// PutTermKeyType records a leader's public step key. New in this version:
// written with IgnoreUnknownTypeFlag, so that older agents skip it during a
// rolling upgrade.
const PutTermKeyType MessageType = 9

// ErrForbidden: the request is authenticated but not allowed (a step
// without the current leader's signature, or one the replicated state does
// not call for).
var ErrForbidden = errors.New("forbidden")

// StepHeader carries a leader's signature on a step request:
// "v1 term=T ts=UNIXNANO sig=BASE64".
const StepHeader = "X-Orchestrate-Step"

// StepMaxSkew bounds how far a step's timestamp may be from the receiver's
// clock (clocks of edge hosts drift; replays are also bounded by the record
// checks each step makes).
const StepMaxSkew = 5 * time.Minute

// TermKey is the leader's public step key for one term.
type TermKey struct {
	Term      uint64    `json:"term"`
	Leader    string    `json:"leader"`
	PublicKey []byte    `json:"public_key"` // ed25519
	At        time.Time `json:"at"`
}

// PutTermKeyRequest records the caller's (the leader's) public step key;
// the FSM takes the term from the log entry.
type PutTermKeyRequest struct {
	Leader    string    `json:"leader"`
	PublicKey []byte    `json:"public_key"`
	At        time.Time `json:"at"`
}

func (r *PutTermKeyRequest) validate() error {
	if err := checkName("leader", r.Leader); err != nil {
		return err
	}
	if len(r.PublicKey) != ed25519.PublicKeySize {
		return fmt.Errorf("term key of %s: %d bytes: %w", r.Leader, len(r.PublicKey), ErrInvalid)
	}
	return nil
}

func init() {
	commands[PutTermKeyType] = commandSpec{func() command { return &PutTermKeyRequest{} }, false}
}

// applyPutTermKey keeps the key of the newest term.
func (f *fsm) applyPutTermKey(term uint64, req PutTermKeyRequest) error {
	if cur := f.s.TermKey; cur != nil && cur.Term > term {
		return fmt.Errorf("term key of term %d: term %d is newer: %w", term, cur.Term, ErrConflict)
	}
	f.s.TermKey = &TermKey{Term: term, Leader: req.Leader, PublicKey: bytes.Clone(req.PublicKey), At: req.At}
	return nil
}

func (f *fsm) termKey() (TermKey, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.s.TermKey == nil {
		return TermKey{}, false
	}
	k := *f.s.TermKey
	k.PublicKey = bytes.Clone(k.PublicKey)
	return k, true
}

// stepSigner is this leader's private step key for its term.
type stepSigner struct {
	term uint64
	priv ed25519.PrivateKey
}

// startTerm makes this term's step key and records its public half, retrying
// until it is in the replicated state or ctx ends.
func (c *Cluster) startTerm(ctx context.Context) error {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	req := PutTermKeyRequest{Leader: c.cfg.NodeName, PublicKey: pub, At: clock.Now().UTC()}
	for attempt := 0; ; attempt++ {
		err := c.apply(ctx, PutTermKeyType|IgnoreUnknownTypeFlag, req)
		if err == nil {
			break
		}
		if ctx.Err() != nil || errors.Is(err, ErrNotLeader) {
			return fmt.Errorf("record the term key: %w", err)
		}
		c.logger.Warn("could not record the term key; retrying", "err", err, "attempt", attempt)
		if sleepCtx(ctx, jitter(time.Second)) != nil {
			return ctx.Err()
		}
	}
	k, ok := c.fsm.termKey()
	if !ok || !bytes.Equal(k.PublicKey, pub) {
		return fmt.Errorf("record the term key: a newer term's key replaced it: %w", ErrNotLeader)
	}
	c.mu.Lock()
	c.signer = &stepSigner{term: k.Term, priv: priv}
	c.mu.Unlock()
	c.logger.Info("term key recorded", "term", k.Term)
	return nil
}

func (c *Cluster) endTerm() {
	c.mu.Lock()
	c.signer = nil
	c.mu.Unlock()
}

// stepMessage is what a step signature covers.
func stepMessage(method, path, host string, term uint64, ts int64, body []byte) []byte {
	sum := sha256.Sum256(body)
	return fmt.Appendf(nil, "orchestrate-step-v1\n%s\n%s\n%s\n%d\n%d\n%s", method, path, host, term, ts, hex.EncodeToString(sum[:]))
}

// SignStep returns the StepHeader value for a step request to host.
func SignStep(priv ed25519.PrivateKey, term uint64, host, method, path string, body []byte, now time.Time) string {
	ts := now.UnixNano()
	sig := ed25519.Sign(priv, stepMessage(method, path, host, term, ts, body))
	return fmt.Sprintf("v1 term=%d ts=%d sig=%s", term, ts, base64.RawStdEncoding.EncodeToString(sig))
}

// VerifyStep checks a StepHeader value on a request to host against the
// term key the receiver's replica holds. It wraps ErrForbidden.
func VerifyStep(key TermKey, header, host, method, path string, body []byte, now time.Time) error {
	f := strings.Fields(header)
	if len(f) != 4 || f[0] != "v1" {
		return fmt.Errorf("%w: no leader's signature on this step", ErrForbidden)
	}
	vals := map[string]string{}
	for _, kv := range f[1:] {
		k, v, _ := strings.Cut(kv, "=")
		vals[k] = v
	}
	term, err1 := strconv.ParseUint(vals["term"], 10, 64)
	ts, err2 := strconv.ParseInt(vals["ts"], 10, 64)
	sig, err3 := base64.RawStdEncoding.DecodeString(vals["sig"])
	if err := errors.Join(err1, err2, err3); err != nil {
		return fmt.Errorf("%w: malformed step signature: %v", ErrForbidden, err)
	}
	if term != key.Term {
		return fmt.Errorf("%w: step signed in term %d, the current term key is of term %d (leader %s)", ErrForbidden, term, key.Term, key.Leader)
	}
	if d := now.Sub(time.Unix(0, ts)); d > StepMaxSkew || d < -StepMaxSkew {
		return fmt.Errorf("%w: step signed %s away from this host's clock", ErrForbidden, d.Round(time.Second))
	}
	if len(key.PublicKey) != ed25519.PublicKeySize || !ed25519.Verify(key.PublicKey, stepMessage(method, path, host, term, ts, body), sig) {
		return fmt.Errorf("%w: the step's signature does not verify against the term key of %s", ErrForbidden, key.Leader)
	}
	return nil
}

// maxStepBody bounds the body of a signed step request.
const maxStepBody = 1 << 20

// LeaderStep wraps the handler of a step only the leader may order: the
// request must carry the current leader's signature for this host. A
// signature of a term newer than this replica knows waits briefly for the
// replica to catch up.
func (c *Cluster) LeaderStep(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxStepBody+1))
		if err != nil || len(body) > maxStepBody {
			writeError(w, fmt.Errorf("%w: step body unreadable or over %d bytes", ErrInvalid, maxStepBody))
			return
		}
		if err := c.verifyStep(r.Context(), r, body); err != nil {
			c.logger.Warn("refused a step", "path", r.URL.Path, "remote", r.RemoteAddr, "err", err)
			writeError(w, err)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		h(w, r)
	}
}

func (c *Cluster) verifyStep(ctx context.Context, r *http.Request, body []byte) error {
	hdr := r.Header.Get(StepHeader)
	deadline := time.Now().Add(3 * time.Second)
	for {
		key, ok := c.fsm.termKey()
		var err error
		if !ok {
			err = fmt.Errorf("%w: no leader's term key in this replica yet", ErrForbidden)
		} else {
			err = VerifyStep(key, hdr, c.cfg.NodeName, r.Method, r.URL.Path, body, clock.Now())
		}
		if err == nil || !replicaBehind(hdr, key) || time.Now().After(deadline) {
			return err
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// replicaBehind reports whether hdr is signed in a term newer than key's.
func replicaBehind(hdr string, key TermKey) bool {
	for _, kv := range strings.Fields(hdr) {
		if v, ok := strings.CutPrefix(kv, "term="); ok {
			t, err := strconv.ParseUint(v, 10, 64)
			return err == nil && t > key.Term
		}
	}
	return false
}

// StepClient returns a client for the named member's API whose requests
// carry this leader's step signature (unsigned when this agent does not
// lead: the member then refuses leader-only steps).
func (c *Cluster) StepClient(name string) (*Client, error) {
	cl, err := c.PeerClient(name)
	if err != nil {
		return nil, err
	}
	s := c.stepSigner()
	if s == nil {
		return cl, nil
	}
	return cl.WithStepKey(s.priv, s.term, name), nil
}

// stepSigner is this leader's step key; a leader whose term key is not
// recorded yet (the moments after an election) waits for it briefly.
func (c *Cluster) stepSigner() *stepSigner {
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		s := c.signer
		c.mu.Unlock()
		if s != nil || !c.IsLeader() || time.Now().After(deadline) {
			return s
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TermKey returns the newest leader's term key in this replica.
func (c *Cluster) TermKey() (TermKey, bool) { return c.fsm.termKey() }
