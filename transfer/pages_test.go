package transfer

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"syscall"
	"testing"
	"time"
)

// A page channel carries bytes both ways, the header's meta, and the
// handler's result back (roundTrip, pagelink_test.go).
func TestPageChannelRoundTrip(t *testing.T) {
	ts, c := pair(t, nil, nil)
	roundTrip(t, ts, c, "pages")
}

// A handler that cannot prepare refuses before the sender sends anything;
// its error keeps its sentinel. A failure after Accept comes back as the
// result.
func TestPageChannelErrors(t *testing.T) {
	ts, c := pair(t, nil, nil)
	ts.srv.HandlePages("full", func(ctx context.Context, h StreamHeader, ch *PageChannel) error {
		return fmt.Errorf("prepare: %w", syscall.ENOSPC)
	})
	ts.srv.HandlePages("late", func(ctx context.Context, h StreamHeader, ch *PageChannel) error {
		ch.Accept()
		io.Copy(io.Discard, ch)
		return errors.New("page server exited 1")
	})
	ctx := context.Background()
	_, err := c.OpenPages(ctx, ts.addr, StreamHeader{Kind: "full", ID: "m1"})
	if !errors.Is(err, ErrRemote) || !errors.Is(err, ErrNoSpace) {
		t.Fatalf("refused: %v, want ErrRemote and ErrNoSpace", err)
	}
	_, err = c.OpenPages(ctx, ts.addr, StreamHeader{Kind: "nobody", ID: "m1"})
	if !errors.Is(err, ErrNoHandler) {
		t.Fatalf("no handler: %v", err)
	}
	pc, err := c.OpenPages(ctx, ts.addr, StreamHeader{Kind: "late", ID: "m2"})
	if err != nil {
		t.Fatal(err)
	}
	pc.Write([]byte("x"))
	pc.CloseWrite()
	io.Copy(io.Discard, pc)
	if err := pc.Result(ctx); !errors.Is(err, ErrRemote) || !bytes.Contains([]byte(err.Error()), []byte("exited 1")) {
		t.Fatalf("result %v", err)
	}
}

// Both ends close on failure as the page pumps do (the handler when its
// page server is gone, the sender when it reads EOF), and the handler's
// reason still reaches the sender.
func TestPageChannelResultAfterClose(t *testing.T) {
	ts, c := pair(t, nil, nil)
	ts.srv.HandlePages("pages", func(ctx context.Context, h StreamHeader, ch *PageChannel) error {
		ch.Accept()
		buf := make([]byte, 1)
		if _, err := io.ReadFull(ch, buf); err != nil {
			return err
		}
		ch.Close()
		// The handler tidies up before it returns: its reads end once the
		// sender closed its half.
		io.Copy(io.Discard, ch)
		time.Sleep(50 * time.Millisecond)
		return fmt.Errorf("page server: write: %w", syscall.ENOSPC)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pc, err := c.OpenPages(ctx, ts.addr, StreamHeader{Kind: "pages", ID: "m1"})
	if err != nil {
		t.Fatal(err)
	}
	pc.Write([]byte("x"))
	if _, err := io.Copy(io.Discard, pc); err != nil {
		t.Fatal(err)
	}
	pc.Close()
	if _, err := pc.Write([]byte("y")); err == nil {
		t.Error("a write after Close succeeded")
	}
	if err := pc.Result(ctx); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("result %v, want ErrNoSpace", err)
	}
}

// A connection cut mid-session: the sender's writes fail, and the result
// says the channel closed without one.
func TestPageChannelCut(t *testing.T) {
	ck := newSigner(t)
	ts := startServer(t, nil, nil)
	ts.auth.Add(ck.PublicKey())
	px := newProxy(t, ts.addr)
	hk := NewHostKeyMap()
	hk.Set(px.addr(), ts.hostKey.PublicKey())
	c := newTestClient(t, ck, hk, nil)
	started := make(chan struct{})
	ts.srv.HandlePages("pages", func(ctx context.Context, h StreamHeader, ch *PageChannel) error {
		ch.Accept()
		close(started)
		_, err := io.Copy(io.Discard, ch)
		return err
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pc, err := c.OpenPages(ctx, px.addr(), StreamHeader{Kind: "pages", ID: "m1"})
	if err != nil {
		t.Fatal(err)
	}
	<-started
	px.cut()
	buf := make([]byte, 64<<10)
	var werr error
	for i := 0; i < 1000 && werr == nil; i++ {
		_, werr = pc.Write(buf)
	}
	if werr == nil {
		t.Fatal("writes kept succeeding after the cut")
	}
	if err := pc.Result(ctx); !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("result %v, want ErrPeerClosed", err)
	}
}

// BenchmarkPageChannel measures a page channel's one-way throughput over
// loopback (SSH framing and encryption both ends, no disk).
func BenchmarkPageChannel(b *testing.B) {
	for _, link := range []bool{false, true} {
		name := "ssh"
		if link {
			name = "link"
		}
		b.Run(name, func(b *testing.B) {
			ts, c := pair(b, nil, func(c *ClientConfig) { c.PageLinks = link })
			done := make(chan int64, 1)
			ts.srv.HandlePages("pages", func(ctx context.Context, h StreamHeader, ch *PageChannel) error {
				ch.Accept()
				// As the page pump reads: large buffers (io.Discard's own
				// ReadFrom would read 8 KiB at a time).
				n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, ch, make([]byte, 256<<10))
				done <- n
				return err
			})
			buf := make([]byte, 256<<10)
			rand.Read(buf)
			b.SetBytes(64 << 20)
			cpu0 := cpuTime()
			for i := 0; i < b.N; i++ {
				pc, err := c.OpenPages(context.Background(), ts.addr, StreamHeader{Kind: "pages", ID: "b"})
				if err != nil {
					b.Fatal(err)
				}
				if pc.Link() != link {
					b.Fatalf("page link %v, want %v", pc.Link(), link)
				}
				for n := 0; n < 64<<20; n += len(buf) {
					if _, err := pc.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
				pc.CloseWrite()
				<-done
				pc.Close()
			}
			// Both ends run in this process: the CPU a GiB costs them together.
			b.ReportMetric((cpuTime()-cpu0).Seconds()/(float64(b.N)*64/1024), "cpu-s/GiB")
		})
	}
}

// cpuTime is the CPU time this process used so far, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
