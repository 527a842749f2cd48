package cluster

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"time"
)

// A read-only credential for scrapers.
//
// Prometheus scrapes GET /metrics over the API's TLS listener. The API token
// would do, but it is an operator's (and every member's) credential: it
// drains hosts and starts containers. The metrics token, derived from the
// secret with a label of its own, is accepted for GET /metrics and nothing
// else, so a scraper's configuration (or its host) holding it gives away
// no more than the metrics. Neither token reveals the other or the secret.
//
//	metrics token = HKDF(secret, "orchestrate metrics v1")  32 bytes, hex
//
// `orchestrate metrics-token` prints it, and writes the cluster CA's
// certificate for the scraper to verify the agents' TLS with.

// MetricsToken is the read-only bearer token for GET /metrics derived from
// the cluster secret.
func MetricsToken(secret []byte) string {
	return hex.EncodeToString(derive(secret, "orchestrate metrics v1", 32))
}

// MetricsPath is the one route the metrics token opens.
const MetricsPath = "/metrics"

// metricsRequest reports whether r is what the metrics token may ask for.
func metricsRequest(r *http.Request) bool {
	return r.Method == http.MethodGet && r.URL.Path == MetricsPath
}

// CACertificatePEM is the certificate of the TLS CA derived from the
// secret, PEM-encoded: what a client that is not an agent (a Prometheus
// scraping /metrics) verifies the agents' certificates with, for the server
// name "orchestrate". It holds only the public key; the same secret always
// gives the same certificate.
func CACertificatePEM(secret []byte) ([]byte, error) {
	caKey := ed25519.NewKeyFromSeed(derive(secret, "orchestrate tls ca v1", ed25519.SeedSize))
	der, err := x509.CreateCertificate(rand.Reader, caTemplate(), caTemplate(), caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("tls ca: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// TLSServerName is the name every agent's certificate carries.
const TLSServerName = tlsServerName

// caTemplate is the derived CA's certificate template (fixed, so the
// certificate is the same on every agent and every start).
func caTemplate() *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "orchestrate cluster CA"},
		NotBefore:             time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
}
