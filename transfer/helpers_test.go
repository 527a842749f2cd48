package transfer

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("TRANSFER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func newSigner(t testing.TB) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		pause()
	}
}

type testServer struct {
	srv     *Server
	addr    string
	hostKey ssh.Signer
	spool   string
	auth    *KeySet
}

// startServer runs a Server on a free loopback port until the test ends.
func startServer(t testing.TB, clientKeys []ssh.PublicKey, mutate func(*ServerConfig)) *testServer {
	t.Helper()
	ts := &testServer{hostKey: newSigner(t), spool: filepath.Join(t.TempDir(), "spool"), auth: NewKeySet(clientKeys...)}
	cfg := DefaultServerConfig()
	cfg.HostKey, cfg.Authorizer, cfg.SpoolDir, cfg.Logger = ts.hostKey, ts.auth, ts.spool, testLogger(t)
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.srv, ts.addr = srv, ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return ts
}

func newTestClient(t testing.TB, signer ssh.Signer, hostKeys HostKeys, mutate func(*ClientConfig)) *Client {
	t.Helper()
	cfg := DefaultClientConfig()
	cfg.Signer, cfg.HostKeys, cfg.Logger = signer, hostKeys, testLogger(t)
	cfg.KeepaliveInterval = time.Second
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// pair starts a server and a client that trust each other.
func pair(t testing.TB, mutateS func(*ServerConfig), mutateC func(*ClientConfig)) (*testServer, *Client) {
	t.Helper()
	ck := newSigner(t)
	ts := startServer(t, []ssh.PublicKey{ck.PublicKey()}, mutateS)
	hk := NewHostKeyMap()
	hk.Set(ts.addr, ts.hostKey.PublicKey())
	return ts, newTestClient(t, ck, hk, mutateC)
}

// proxy forwards loopback TCP to target and can cut every live connection.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newProxy(t testing.TB, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); io.Copy(u, c); u.Close() }()
			go func() { defer p.wg.Done(); io.Copy(c, u); c.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

// cut closes every connection made so far; new ones still work.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

type sshd struct {
	addr    string
	hostKey ssh.PublicKey
	root    string // internal-sftp's start directory
	client  ssh.Signer
}

// startSSHD runs a stock OpenSSH sshd on a free loopback port, with a temp
// host key and authorized_keys, confined SFTP start directory, until the
// test ends. It skips the test only if sshd is not installed.
func startSSHD(t testing.TB) *sshd {
	t.Helper()
	bin, err := exec.LookPath("sshd")
	if err != nil {
		bin = "/usr/sbin/sshd"
		if _, err := os.Stat(bin); err != nil {
			t.Skip("OpenSSH sshd not installed (apt-get install -y openssh-server)")
		}
	}
	dir := t.TempDir()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	hostKeyPath := filepath.Join(dir, "host_key")
	if err := os.WriteFile(hostKeyPath, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	hostSigner, _ := ssh.NewSignerFromKey(priv)
	client := newSigner(t)
	authKeys := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authKeys, ssh.MarshalAuthorizedKey(client.PublicKey()), 0o600); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	_ = os.MkdirAll("/run/sshd", 0o755) // privilege separation directory
	var lastErr error
	for range 5 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		port := addr[strings.LastIndex(addr, ":")+1:]
		conf := filepath.Join(dir, "sshd_config")
		cfg := fmt.Sprintf(`Port %s
ListenAddress 127.0.0.1
HostKey %s
PidFile none
AuthorizedKeysFile %s
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AllowTcpForwarding no
X11Forwarding no
LogLevel ERROR
Subsystem sftp internal-sftp -d %s
`, port, hostKeyPath, authKeys, root)
		if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-D", "-e", "-f", conf)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatalf("start sshd: %v", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		stop := func() {
			cmd.Process.Kill()
			<-exited
		}
		// Wait until it accepts, or exits (port taken: try another).
		up := false
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-exited:
				lastErr = fmt.Errorf("sshd exited: %s", stderr.String())
			default:
			}
			if lastErr != nil {
				break
			}
			if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
				c.Close()
				up = true
				break
			}
			pause()
		}
		if up {
			t.Cleanup(stop)
			return &sshd{addr: addr, hostKey: hostSigner.PublicKey(), root: root, client: client}
		}
		stop()
		if lastErr == nil {
			lastErr = errors.New("sshd did not start listening")
		}
	}
	t.Fatalf("sshd: %v", lastErr)
	return nil
}

// payload returns n bytes, alternating 4 KiB pages of random data and zeros:
// roughly what a checkpoint of a process's memory looks like.
func payload(n int) []byte {
	b := make([]byte, n)
	for off := 0; off < n; off += 8192 {
		end := min(off+4096, n)
		rand.Read(b[off:end])
	}
	return b
}

// goroutines waits for the goroutine count to fall back to at most base.
func waitGoroutines(t testing.TB, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines, want <= %d:\n%s", n, base, buf)
		}
		pause()
	}
}

// pause is the poll helpers' interval between checks of a condition with a
// deadline; nothing relies on it for ordering.
func pause() {
	t := time.NewTimer(5 * time.Millisecond)
	<-t.C
}
