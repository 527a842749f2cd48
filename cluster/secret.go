package cluster

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"os"
	"time"

	"github.com/edgemigrate/orchestrate/internal/safefs"
)

// The cluster secret is 32 random bytes, stored hex-encoded in a root-owned
// file of mode 0600 (LoadSecret refuses anything weaker). Everything else is derived from it with HKDF-SHA256, one label per
// use, so that no derived value reveals another:
//
//	gossip key  = HKDF(secret, "orchestrate gossip v1")  32 bytes, memberlist AES-256-GCM key
//	API token   = HKDF(secret, "orchestrate api v1")     32 bytes, hex, sent as "Authorization: Bearer <token>"
//	TLS CA key  = ed25519 key from HKDF(secret, "orchestrate tls ca v1")
//
// Each agent makes an ephemeral ECDSA certificate at start, signed by the
// derived CA, for "orchestrate". API clients and raft peers verify the
// server against the derived CA, so the token only goes to holders of the
// secret. Raft connections are mutual TLS with the same CA. API requests are
// authenticated by the token: a request without the right one gets 401.

const secretLen = 32

// ErrNoSecret: the cluster secret is missing or empty.
var ErrNoSecret = errors.New("no cluster secret")

// GenerateSecret returns a new random cluster secret, hex-encoded with a
// trailing newline, as WriteSecret stores it.
func GenerateSecret() []byte {
	b := make([]byte, secretLen)
	_, _ = rand.Read(b)
	return []byte(hex.EncodeToString(b) + "\n")
}

// WriteSecret writes a new secret to path with mode 0600. It refuses to
// overwrite an existing file.
func WriteSecret(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write secret: %w", err)
	}
	if _, err := f.Write(GenerateSecret()); err != nil {
		f.Close()
		return fmt.Errorf("write secret %s: %w", path, err)
	}
	return f.Close()
}

// minSecretHex is the shortest secret accepted: 64 hex digits, 256 bits,
// what `orchestrate keygen` writes.
const minSecretHex = 2 * secretLen

// ErrWeakSecret: the secret file does not hold at least 256 random bits
// written as hex.
var ErrWeakSecret = errors.New("weak cluster secret")

// LoadSecret reads a secret file written by WriteSecret. The file must be
// owned by root (or the caller) with mode 0600 or 0400, as ssh demands of
// private keys: anyone who reads it is a member. Its trimmed content must
// be at least 64 hex digits (256 bits), because everything derived from it
// goes through HKDF, a fast function: a short or guessable secret could be
// found offline from one captured gossip packet, while 256 random bits
// cannot. Make one with `orchestrate keygen FILE` or `openssl rand -hex 32`.
// The derivation is unchanged, so secrets made by keygen keep working;
// hand-made short secrets (accepted before) must be rotated (see
// docs/operations.md).
func LoadSecret(path string) ([]byte, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: set cluster.secret_file (create one with `orchestrate keygen FILE`)", ErrNoSecret)
	}
	b, err := safefs.ReadSecret(path)
	if errors.Is(err, safefs.ErrUnsafe) {
		return nil, fmt.Errorf("%w: %w", ErrNoSecret, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoSecret, err)
	}
	b = bytes.TrimSpace(b)
	if len(b) < minSecretHex {
		return nil, fmt.Errorf("%w: %w: %s holds %d characters, need at least %d hex digits (256 bits; create one with `orchestrate keygen FILE`)", ErrNoSecret, ErrWeakSecret, path, len(b), minSecretHex)
	}
	if _, err := hex.DecodeString(string(b)); err != nil {
		return nil, fmt.Errorf("%w: %w: %s is not hex: a secret is 64 or more hex digits (create one with `orchestrate keygen FILE`)", ErrNoSecret, ErrWeakSecret, path)
	}
	return b, nil
}

func derive(secret []byte, label string, n int) []byte {
	k, err := hkdf.Key(sha256.New, secret, nil, label, n)
	if err != nil {
		panic(err) // only for n out of range
	}
	return k
}

// GossipKey is the memberlist SecretKey derived from the cluster secret.
func GossipKey(secret []byte) []byte { return derive(secret, "orchestrate gossip v1", 32) }

// APIToken is the bearer token derived from the cluster secret.
func APIToken(secret []byte) string {
	return hex.EncodeToString(derive(secret, "orchestrate api v1", 32))
}

// tlsServerName is the name every agent's certificate carries.
const tlsServerName = "orchestrate"

// clusterTLS holds the CA derived from the secret and this process's leaf.
type clusterTLS struct {
	pool *x509.CertPool
	leaf tls.Certificate
}

func newClusterTLS(secret []byte) (*clusterTLS, error) {
	caKey := ed25519.NewKeyFromSeed(derive(secret, "orchestrate tls ca v1", ed25519.SeedSize))
	caTmpl := caTemplate()
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("tls ca: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("tls ca: %w", err)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	leafTmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: tlsServerName},
		DNSNames:     []string{tlsServerName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, leafKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("tls leaf: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &clusterTLS{pool: pool, leaf: tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}}, nil
}

// serverConfig is for the API listener (clients authenticate by token).
func (t *clusterTLS) serverConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{t.leaf}, MinVersion: tls.VersionTLS13}
}

// mutualServerConfig is for raft: peers must present a certificate from the
// same CA.
func (t *clusterTLS) mutualServerConfig() *tls.Config {
	c := t.serverConfig()
	c.ClientAuth, c.ClientCAs = tls.RequireAndVerifyClientCert, t.pool
	return c
}

// clientConfig verifies the server against the derived CA and offers our leaf.
func (t *clusterTLS) clientConfig() *tls.Config {
	return &tls.Config{
		RootCAs: t.pool, ServerName: tlsServerName, Certificates: []tls.Certificate{t.leaf},
		MinVersion: tls.VersionTLS13,
	}
}

// verifyLeaf checks a DER certificate against the derived CA (tests, and
// a reminder of what TLS checks for us).
func verifyLeaf(t *clusterTLS, der []byte) error {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	_, err = cert.Verify(x509.VerifyOptions{Roots: t.pool, DNSName: tlsServerName, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}
