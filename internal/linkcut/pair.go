package linkcut

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/edgemigrate/orchestrate/transfer"
)

// Pair is a transfer server with a spool and a client whose link to it
// goes through a Dialer, so that a test can cut it.
type Pair struct {
	Server   *transfer.Server
	Client   *transfer.Client
	Addr     string
	Dialer   *Dialer
	SpoolDir string
}

// ClientNode is the member name the pair's server gives its client (its
// handlers see it as the stream's sender).
const ClientNode = "client"

// namedKeys authorises the client key and names it ClientNode.
type namedKeys struct{ *transfer.KeySet }

func (k namedKeys) Identify(key ssh.PublicKey) (string, bool) {
	if k.Authorized(key) {
		return ClientNode, true
	}
	return "", false
}

// NewPair starts a transfer server on loopback with its spool in dir and a
// client that dials it through a Dialer cutting its first connection after
// cutAfter bytes (0: never). Both stop at the test's end.
func NewPair(t testing.TB, dir string, cutAfter int64) *Pair {
	t.Helper()
	hostKey, err := transfer.LoadOrCreateKey(filepath.Join(dir, "host_key"))
	if err != nil {
		t.Fatal(err)
	}
	clientKey, err := transfer.LoadOrCreateKey(filepath.Join(dir, "client_key"))
	if err != nil {
		t.Fatal(err)
	}
	p := &Pair{Dialer: &Dialer{After: cutAfter}, SpoolDir: filepath.Join(dir, "spool")}
	scfg := transfer.DefaultServerConfig()
	scfg.HostKey, scfg.SpoolDir = hostKey, p.SpoolDir
	scfg.Authorizer = namedKeys{transfer.NewKeySet(clientKey.PublicKey())}
	if p.Server, err = transfer.NewServer(scfg); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.Addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Server.Serve(ctx, ln) }()
	hk := transfer.NewHostKeyMap()
	hk.Set(p.Addr, hostKey.PublicKey())
	ccfg := transfer.DefaultClientConfig()
	ccfg.Signer, ccfg.HostKeys, ccfg.Dial = clientKey, hk, p.Dialer.DialContext
	if p.Client, err = transfer.NewClient(ccfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Client.Close()
		cancel()
		<-done
	})
	return p
}
