package transfer

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/crypto/ssh"
)

// HostKeys tells the client which host key a peer must present. The cluster
// supplies the peers' published keys; there is no trust on first use.
type HostKeys interface {
	// HostKey returns the key expected at addr (the address the caller
	// passed to the client, e.g. "10.99.0.2:7922"), or an error when the
	// peer is unknown.
	HostKey(addr string) (ssh.PublicKey, error)
}

// Authorizer decides which client keys the server accepts.
type Authorizer interface {
	Authorized(key ssh.PublicKey) bool
}

// KeySet is a concurrency-safe set of public keys that implements
// Authorizer: the cluster adds and removes peers' client keys as membership
// changes, and the server consults it on every handshake.
type KeySet struct {
	mu   sync.RWMutex
	keys map[string]ssh.PublicKey // by wire encoding
}

var _ Authorizer = (*KeySet)(nil)

// NewKeySet returns a set holding keys.
func NewKeySet(keys ...ssh.PublicKey) *KeySet {
	s := &KeySet{keys: map[string]ssh.PublicKey{}}
	for _, k := range keys {
		s.Add(k)
	}
	return s
}

// Add puts key in the set.
func (s *KeySet) Add(key ssh.PublicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[string(key.Marshal())] = key
}

// Remove takes key out of the set.
func (s *KeySet) Remove(key ssh.PublicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.keys, string(key.Marshal()))
}

// Authorized implements Authorizer.
func (s *KeySet) Authorized(key ssh.PublicKey) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.keys[string(key.Marshal())]
	return ok
}

// HostKeyMap is a concurrency-safe HostKeys backed by a map from address to
// key.
type HostKeyMap struct {
	mu   sync.RWMutex
	keys map[string]ssh.PublicKey
}

var _ HostKeys = (*HostKeyMap)(nil)

// NewHostKeyMap returns an empty map.
func NewHostKeyMap() *HostKeyMap { return &HostKeyMap{keys: map[string]ssh.PublicKey{}} }

// Set records the key expected at addr.
func (m *HostKeyMap) Set(addr string, key ssh.PublicKey) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.keys[addr] = key
}

// HostKey implements HostKeys. An unknown addr yields ErrUnknownHost.
func (m *HostKeyMap) HostKey(addr string) (ssh.PublicKey, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	k, ok := m.keys[addr]
	if !ok {
		return nil, fmt.Errorf("%s: %w", addr, ErrUnknownHost)
	}
	return k, nil
}

// HostKeyFunc adapts a function to HostKeys.
type HostKeyFunc func(addr string) (ssh.PublicKey, error)

var _ HostKeys = HostKeyFunc(nil)

// HostKey implements HostKeys.
func (f HostKeyFunc) HostKey(addr string) (ssh.PublicKey, error) { return f(addr) }

// AuthorizerFunc adapts a function to Authorizer.
type AuthorizerFunc func(key ssh.PublicKey) bool

var _ Authorizer = AuthorizerFunc(nil)

// Authorized implements Authorizer.
func (f AuthorizerFunc) Authorized(key ssh.PublicKey) bool { return f(key) }

// hostKeyCallback verifies the presented key against keys.HostKey(peer). It
// keys on the address the caller asked for, not the resolved one, so that the
// cluster's published name for a peer is what is trusted.
func hostKeyCallback(keys HostKeys, peer string) ssh.HostKeyCallback {
	return func(_ string, _ net.Addr, key ssh.PublicKey) error {
		want, err := keys.HostKey(peer)
		if err != nil {
			return err
		}
		if want == nil {
			return fmt.Errorf("%s: %w", peer, ErrUnknownHost)
		}
		if !bytes.Equal(want.Marshal(), key.Marshal()) {
			return fmt.Errorf("%s presented %s %s: %w", peer, key.Type(), ssh.FingerprintSHA256(key), ErrHostKeyMismatch)
		}
		return nil
	}
}

// LoadOrCreateKey reads an OpenSSH-format private key from path, or, when the
// file does not exist, creates a new ed25519 key there (mode 0600, parent
// directory created 0700) and returns it. A file that exists but cannot be
// parsed is an error: it is never overwritten.
func LoadOrCreateKey(path string) (ssh.Signer, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		signer, perr := ssh.ParsePrivateKey(data)
		if perr != nil {
			return nil, fmt.Errorf("load key %s: %w", path, perr)
		}
		return signer, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load key %s: %w", path, err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("create key %s: %w", path, err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "orchestrate")
	if err != nil {
		return nil, fmt.Errorf("create key %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create key %s: %w", path, err)
	}
	// O_EXCL: two agents racing to create the key must not overwrite each
	// other; the loser reads the winner's key.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return LoadOrCreateKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("create key %s: %w", path, err)
	}
	if _, err := f.Write(pem.EncodeToMemory(block)); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("create key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("create key %s: %w", path, err)
	}
	return ssh.NewSignerFromKey(priv)
}
