package cluster

import (
	"crypto/ed25519"
	"fmt"

	"golang.org/x/crypto/ssh"
)

// File names of the agent's SSH keys under node.data_dir. New creates them
// on first start with transfer.LoadOrCreateKey (OpenSSH PEM, ed25519, 0600)
// and gossips their public halves; the transfer layer trusts exactly those.
const (
	HostKeyFile   = "ssh_host_ed25519_key"
	ClientKeyFile = "ssh_client_ed25519_key"
)

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
