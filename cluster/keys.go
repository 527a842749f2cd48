package cluster

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"
)

// File names of the agent's SSH keys under node.data_dir.
const (
	HostKeyFile   = "ssh_host_ed25519_key"
	ClientKeyFile = "ssh_client_ed25519_key"
)

// LoadOrCreateKey reads an OpenSSH-PEM ed25519 private key from path, or
// makes one (mode 0600) when the file does not exist. The transfer package
// has its own; this one keeps cluster free of it until then.
func LoadOrCreateKey(path string) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		blk, err := ssh.MarshalPrivateKey(priv, "orchestrate")
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", path, err)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
			return nil, fmt.Errorf("key %s: %w", path, err)
		}
		return ssh.NewSignerFromKey(priv)
	}
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	return s, nil
}

// keyFromRaw rebuilds an ed25519 ssh.PublicKey from the 32 bytes gossiped.
func keyFromRaw(raw []byte) (ssh.PublicKey, error) {
	if len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("ed25519 key of %d bytes", len(raw))
	}
	return ssh.NewPublicKey(ed25519.PublicKey(raw))
}

// rawKey returns the 32 bytes of an ed25519 ssh.PublicKey.
func rawKey(k ssh.PublicKey) []byte {
	if ck, ok := k.(ssh.CryptoPublicKey); ok {
		if ed, ok := ck.CryptoPublicKey().(ed25519.PublicKey); ok {
			return ed
		}
	}
	return nil
}
