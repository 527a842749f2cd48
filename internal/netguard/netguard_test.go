package netguard

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

func listen(t *testing.T, cfg Config) *Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Listen(ln, cfg)
	t.Cleanup(func() { l.Close() })
	return l
}

// dial connects from a given loopback source address.
func dial(t *testing.T, l net.Listener, from string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: time.Second}
	c, err := d.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByServer reports whether the server closed c within d.
func closedByServer(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := c.Read(make([]byte, 1))
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

func waitOpen(t *testing.T, l *Listener, want int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for l.Open() != want {
		if time.Now().After(deadline) {
			t.Fatalf("open connections %d, want %d", l.Open(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCaps(t *testing.T) {
	l := listen(t, Config{MaxConns: 3, MaxPerIP: 2})
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	a1, a2 := dial(t, l, "127.0.0.2"), dial(t, l, "127.0.0.2")
	waitOpen(t, l, 2)
	// A third from the same address is closed at once; another address
	// still gets in.
	a3 := dial(t, l, "127.0.0.2")
	if !closedByServer(a3, time.Second) {
		t.Fatal("third connection from one address was kept")
	}
	b1 := dial(t, l, "127.0.0.3")
	waitOpen(t, l, 3)
	// The total cap.
	c1 := dial(t, l, "127.0.0.4")
	if !closedByServer(c1, time.Second) {
		t.Fatal("connection over the total cap was kept")
	}
	if l.Refused() != 2 {
		t.Fatalf("refused %d, want 2", l.Refused())
	}
	for _, c := range []net.Conn{a1, a2, b1} {
		if closedByServer(c, 50*time.Millisecond) {
			t.Fatal("an admitted connection was closed")
		}
	}
	// Closing on the server gives the slot back, once.
	sc := <-accepted
	sc.Close()
	sc.Close()
	waitOpen(t, l, 2)
	c2 := dial(t, l, "127.0.0.4")
	if closedByServer(c2, 50*time.Millisecond) {
		t.Fatal("a freed slot was not reused")
	}
	waitOpen(t, l, 3)
}

func TestIdleTimeout(t *testing.T) {
	l := listen(t, Config{IdleTimeout: 200 * time.Millisecond})
	errc := make(chan error, 2)
	go func() {
		for i := 0; i < 2; i++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func(i int) {
				defer c.Close()
				if i == 1 {
					// The server's own earlier deadline wins.
					_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				}
				start := time.Now()
				buf := make([]byte, 8)
				for {
					n, err := c.Read(buf)
					if err != nil {
						if !errors.Is(err, os.ErrDeadlineExceeded) {
							errc <- err
						} else {
							errc <- timed{i, time.Since(start)}
						}
						return
					}
					_ = n
				}
			}(i)
		}
	}()
	chatty := dial(t, l, "127.0.0.2")
	// Bytes keep a connection alive past the idle timeout.
	for range 4 {
		time.Sleep(100 * time.Millisecond)
		if _, err := chatty.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	_ = dial(t, l, "127.0.0.2")
	got := map[int]time.Duration{}
	for range 2 {
		err := <-errc
		var tm timed
		if !errors.As(err, &tm) {
			t.Fatalf("read: %v", err)
		}
		got[tm.i] = tm.d
	}
	if got[0] < 500*time.Millisecond {
		t.Errorf("a connection that kept sending timed out after %v", got[0])
	}
	if got[1] > 180*time.Millisecond {
		t.Errorf("the server's 50ms deadline gave way to the idle timeout: %v", got[1])
	}
}

type timed struct {
	i int
	d time.Duration
}

func (timed) Error() string { return "timed out" }

// Clearing a deadline while a Read waits (as an SSH server does after its
// handshake) leaves the idle timeout in force for that Read.
func TestClearedDeadlineKeepsIdle(t *testing.T) {
	l := listen(t, Config{IdleTimeout: 200 * time.Millisecond})
	errc := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Hour))
		go func() {
			time.Sleep(50 * time.Millisecond)
			_ = c.SetDeadline(time.Time{})
		}()
		_, err = c.Read(make([]byte, 1))
		errc <- err
	}()
	_ = dial(t, l, "127.0.0.2")
	select {
	case err := <-errc:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("clearing the deadline disabled the idle timeout")
	}
}

func TestSourceFor(t *testing.T) {
	for _, tc := range []struct {
		local, addr, want string
	}{
		{"127.0.0.49", "127.0.0.12:7948", "127.0.0.49"},
		{"127.0.0.49", "10.0.0.2:7948", ""}, // loopback cannot reach another host
		{"10.0.0.1", "127.0.0.1:7948", ""},
		{"10.0.0.1", "10.0.0.2:7948", "10.0.0.1"},
		{"10.0.0.1", "[fd00::2]:7948", ""}, // other family
		{"", "10.0.0.2:7948", ""},
		{"10.0.0.1", "host.example:7948", ""}, // names: the kernel picks
	} {
		got := sourceFor(net.ParseIP(tc.local), tc.addr)
		if (got == nil && tc.want != "") || (got != nil && got.String() != tc.want) {
			t.Errorf("sourceFor(%s, %s) = %v, want %q", tc.local, tc.addr, got, tc.want)
		}
	}
}

// Connections dialled through DialFrom arrive from the bind address, so a
// per-IP cap counts them under it.
func TestDialFromBindsTheSource(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			got <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			c.Close()
		}
	}()
	for _, tc := range []struct{ bind, want string }{{"127.0.0.77:7946", "127.0.0.77"}, {"0.0.0.0:7946", "127.0.0.1"}} {
		c, err := DialFrom(tc.bind, time.Second)(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if ip := <-got; ip != tc.want {
			t.Errorf("bind %s: the listener saw %s, want %s", tc.bind, ip, tc.want)
		}
	}
}
