package transfer

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// rawConn is an authenticated SSH connection to ts that speaks the stream
// protocol by hand, as a peer that stops mid-stream would.
func rawConn(t *testing.T, mutate func(*ServerConfig)) (*testServer, *ssh.Client) {
	t.Helper()
	ck := newSigner(t)
	ts := startServer(t, []ssh.PublicKey{ck.PublicKey()}, mutate)
	c, err := ssh.Dial("tcp", ts.addr, &ssh.ClientConfig{
		User: "x", Auth: []ssh.AuthMethod{ssh.PublicKeys(ck)},
		HostKeyCallback: ssh.FixedHostKey(ts.hostKey.PublicKey()), Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return ts, c
}

// freezer forwards TCP to target until frozen, then forwards nothing more
// in either direction and keeps the connections open: a peer that was
// stopped (SIGSTOP) as the other end sees it.
type freezer struct {
	ln     net.Listener
	frozen chan struct{}
}

func newFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, frozen: make(chan struct{})}
	var conns []net.Conn
	var mu sync.Mutex
	pump := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			select {
			case <-f.frozen:
				return // swallow, keep both open
			default:
			}
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				dst.Close()
				return
			}
		}
	}
	go func() {
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
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			go pump(u, c)
			go pump(c, u)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return f
}

// A sender that stops (SIGSTOP) mid-stream fails the stream after
// StallTimeout: the handler's reader returns ErrStalled, so whatever the
// handler holds is released, although the stopped peer never answers the
// channel's close.
func TestStreamStallFails(t *testing.T) {
	ck := newSigner(t)
	ts := startServer(t, []ssh.PublicKey{ck.PublicKey()}, func(cfg *ServerConfig) { cfg.StallTimeout = 300 * time.Millisecond })
	fz := newFreezer(t, ts.addr)
	c, err := ssh.Dial("tcp", fz.ln.Addr().String(), &ssh.ClientConfig{
		User: "x", Auth: []ssh.AuthMethod{ssh.PublicKeys(ck)},
		HostKeyCallback: ssh.FixedHostKey(ts.hostKey.PublicKey()), Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make(chan error, 1)
	ts.srv.Handle("restore", func(ctx context.Context, h StreamHeader, r io.Reader) ([]byte, error) {
		_, err := io.Copy(io.Discard, r)
		got <- err
		return nil, err
	})
	ch, reqs, err := c.OpenChannel(StreamChannelType, nil)
	if err != nil {
		t.Fatal(err)
	}
	go ssh.DiscardRequests(reqs)
	if err := writeHeader(ch, StreamHeader{Kind: "restore", ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if err := writeFrame(ch, frameRaw, payload(1000)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	close(fz.frozen)
	start := time.Now()
	select {
	case err := <-got:
		if !errors.Is(err, ErrStalled) || !errors.Is(err, ErrVerify) {
			t.Fatalf("handler read %v, want ErrStalled and ErrVerify", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("stall noticed after %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a stalled stream was never failed")
	}
}

// A producer that is silent for longer than the stall timeout (a dump in
// progress) keeps its stream alive with empty frames.
func TestStreamKeepaliveFrames(t *testing.T) {
	old := keepaliveEvery
	keepaliveEvery = 50 * time.Millisecond
	t.Cleanup(func() { keepaliveEvery = old })
	ts, client := pair(t, func(cfg *ServerConfig) { cfg.StallTimeout = 300 * time.Millisecond }, nil)
	ts.srv.Handle("restore", func(ctx context.Context, h StreamHeader, r io.Reader) ([]byte, error) {
		n, err := io.Copy(io.Discard, r)
		if err != nil {
			return nil, err
		}
		return []byte(strings.Repeat("x", int(n%7))), nil
	})
	_, st, err := client.Stream(context.Background(), ts.addr, StreamHeader{Kind: "restore", ID: "c1"}, func(w io.Writer) error {
		if _, err := w.Write(payload(3 << 20)); err != nil {
			return err
		}
		time.Sleep(time.Second) // silent, three stall timeouts long
		_, err := w.Write(payload(1000))
		return err
	})
	if err != nil {
		t.Fatalf("a silent producer's stream failed: %v", err)
	}
	if st.Bytes != 3<<20+1000 {
		t.Fatalf("sent %d bytes", st.Bytes)
	}
}

// One connection may hold at most MaxChannels streams and sessions.
func TestChannelCap(t *testing.T) {
	ts, c := rawConn(t, func(cfg *ServerConfig) { cfg.MaxChannels = 2 })
	block := make(chan struct{})
	defer close(block)
	ts.srv.Handle("hold", func(ctx context.Context, h StreamHeader, r io.Reader) ([]byte, error) {
		<-block
		return nil, nil
	})
	for i := range 3 {
		ch, reqs, err := c.OpenChannel(StreamChannelType, nil)
		if i == 2 {
			var oce *ssh.OpenChannelError
			if !errors.As(err, &oce) || oce.Reason != ssh.ResourceShortage {
				t.Fatalf("third channel: %v, want a resource-shortage rejection", err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		go ssh.DiscardRequests(reqs)
		if err := writeHeader(ch, StreamHeader{Kind: "hold", ID: "x"}); err != nil {
			t.Fatal(err)
		}
		// The server counts a channel once it accepted it.
		time.Sleep(20 * time.Millisecond)
	}
}

// Connections beyond MaxConnsPerIP are closed before the handshake, and an
// authenticated connection silent for IdleTimeout is closed.
func TestConnectionCapsAndIdle(t *testing.T) {
	ts, c := rawConn(t, func(cfg *ServerConfig) {
		cfg.MaxConnsPerIP = 2
		cfg.IdleTimeout = 300 * time.Millisecond
	})
	// c holds one slot; one more raw connection fits, the next does not.
	held, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	over, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	_ = over.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := over.Read(make([]byte, 64)); err == nil || n > 0 {
		t.Fatalf("a connection over the per-address cap got %d bytes, %v", n, err)
	}
	// c sends nothing (no keepalives): the server closes it.
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("an idle connection was kept open")
	}
}

// A stream larger than its kind's limit fails on the receiver.
func TestStreamSizeLimit(t *testing.T) {
	ts, client := pair(t, func(cfg *ServerConfig) { cfg.MaxStreamBytes = map[string]int64{"small": 1 << 20} }, nil)
	var handlerErr error
	ts.srv.Handle("small", func(ctx context.Context, h StreamHeader, r io.Reader) ([]byte, error) {
		_, handlerErr = io.Copy(io.Discard, r)
		return nil, handlerErr
	})
	_, _, err := client.SendStream(context.Background(), ts.addr, StreamHeader{Kind: "small", ID: "x"}, strings.NewReader(string(payload(3<<20))))
	if err == nil || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("oversized stream: %v", err)
	}
	if !errors.Is(handlerErr, ErrTooLarge) {
		t.Fatalf("handler read %v, want ErrTooLarge", handlerErr)
	}
	if _, _, err := client.SendStream(context.Background(), ts.addr, StreamHeader{Kind: "small", ID: "y"}, strings.NewReader(string(payload(1<<20)))); err != nil {
		t.Fatalf("a stream at the limit: %v", err)
	}
}

// An SFTP upload larger than MaxFileBytes fails and leaves nothing.
func TestUploadSizeLimit(t *testing.T) {
	ts, client := pair(t, func(cfg *ServerConfig) { cfg.MaxFileBytes = 1 << 20 }, func(c *ClientConfig) { c.Retries = 0 })
	if _, err := client.Upload(context.Background(), ts.addr, writeTemp(t, payload(2<<20)), "big.bin"); err == nil {
		t.Fatal("an upload over the limit succeeded")
	}
	if _, err := client.Upload(context.Background(), ts.addr, writeTemp(t, payload(1<<20)), "ok.bin"); err != nil {
		t.Fatalf("an upload at the limit: %v", err)
	}
}

// An upload that would leave less than MinFreeBytes free fails with
// ErrNoSpace before the file system is full, and leaves nothing.
func TestUploadFreeSpaceReserve(t *testing.T) {
	ts, client := pair(t, func(cfg *ServerConfig) { cfg.MinFreeBytes = 1 << 62 }, func(c *ClientConfig) { c.Retries = 0 })
	_, err := client.Upload(context.Background(), ts.addr, writeTemp(t, payload(1<<20)), "f.bin")
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("upload into the reserve: %v, want ErrNoSpace", err)
	}
	waitFor(t, 5*time.Second, "partial removed", func() bool {
		ents, _ := os.ReadDir(ts.spool)
		return len(ents) == 0
	})
}
