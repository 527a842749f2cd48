package transfer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
	"golang.org/x/crypto/ssh"
)

// restoreHandler restores streams into eng, returning the new container ID.
func restoreHandler(eng engine.Restorer) Handler {
	return func(ctx context.Context, h StreamHeader, r io.Reader) ([]byte, error) {
		c, _, err := eng.Restore(ctx, r, engine.RestoreOptions{Name: h.Meta["name"]})
		if err != nil {
			return nil, err
		}
		return []byte(c.ID), nil
	}
}

func TestStreamCheckpointRestore(t *testing.T) {
	for _, tc := range []struct {
		name string
		comp Compression
		want string
	}{
		{"none", Compression{Mode: CompressNone}, "none"},
		{"zstd-3", Compression{Mode: CompressZstd, Level: 3}, "zstd-3"},
		{"adaptive", Compression{Mode: CompressAdaptive}, "adaptive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var reports []Progress
			ts, client := pair(t, nil, func(c *ClientConfig) {
				c.Compression = tc.comp
				c.Progress = func(p Progress) { reports = append(reports, p) }
			})
			src, dst := enginetest.NewFake(), enginetest.NewFake()
			ctr := src.Run("web", "nginx", 6<<20+123, nil)
			dst.AddImage("nginx")
			ts.srv.Handle("restore", restoreHandler(dst))
			before, err := src.Memory(ctr.ID)
			if err != nil {
				t.Fatal(err)
			}

			ctx := context.Background()
			res, st, err := client.Stream(ctx, ts.addr, StreamHeader{Kind: "restore", ID: ctr.ID}, func(w io.Writer) error {
				_, err := src.Checkpoint(ctx, ctr.ID, w, engine.CheckpointOptions{})
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if string(res) != ctr.ID {
				t.Fatalf("result %q, want restored ID %q", res, ctr.ID)
			}
			after, err := dst.Memory(ctr.ID)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(before, after) {
				t.Fatal("restored memory differs")
			}
			if st.Bytes <= int64(len(before)) || st.SHA256 == "" || st.WireBytes == 0 {
				t.Fatalf("stats %+v", st)
			}
			if len(st.Compression) < len(tc.want) || st.Compression[:len(tc.want)] != tc.want {
				t.Fatalf("compression %q, want %q", st.Compression, tc.want)
			}
			if tc.comp.Mode == CompressZstd && st.WireBytes >= st.Bytes {
				t.Fatalf("zstd did not compress: %+v", st)
			}
			if len(reports) == 0 || !reports[len(reports)-1].Done || reports[len(reports)-1].Bytes != st.Bytes {
				t.Fatalf("progress reports %+v", reports)
			}
			t.Logf("%s: %+v", tc.name, st)
		})
	}
}

func TestStreamManyOverOneConnection(t *testing.T) {
	ts, client := pair(t, nil, nil)
	ts.srv.Handle("echo", func(ctx context.Context, h StreamHeader, r io.Reader) ([]byte, error) {
		b, err := io.ReadAll(r)
		if err != nil {
			return nil, err
		}
		return []byte(h.Meta["tag"] + ":" + string(rune('0'+len(b)%10))), nil
	})
	ctx := context.Background()
	errs := make(chan error, 8)
	for i := range 8 {
		go func() {
			data := payload(300<<10 + i)
			tag := string(rune('a' + i))
			res, _, err := client.SendStream(ctx, ts.addr, StreamHeader{Kind: "echo", ID: tag, Meta: map[string]string{"tag": tag}}, bytes.NewReader(data))
			if err == nil && string(res) != tag+":"+string(rune('0'+len(data)%10)) {
				err = errors.New("wrong result " + string(res))
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	client.mu.Lock()
	n := len(client.peers)
	client.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d peer slots, want 1", n)
	}
}

func TestStreamCorruptionRejected(t *testing.T) {
	for _, mode := range []CompressMode{CompressNone, CompressZstd} {
		t.Run(mode.String(), func(t *testing.T) {
			var flipped atomic.Bool
			ts, client := pair(t, nil, func(c *ClientConfig) {
				c.Compression = Compression{Mode: mode}
				c.testHookFrame = func(typ byte, p []byte) {
					if len(p) > 1000 && flipped.CompareAndSwap(false, true) {
						p[len(p)/2] ^= 0x40 // one bit of one byte, after hashing
					}
				}
			})
			src, dst := enginetest.NewFake(), enginetest.NewFake()
			ctr := src.Run("db", "postgres", 3<<20, nil)
			dst.AddImage("postgres")
			ts.srv.Handle("restore", restoreHandler(dst))
			ctx := context.Background()
			_, _, err := client.Stream(ctx, ts.addr, StreamHeader{Kind: "restore", ID: ctr.ID}, func(w io.Writer) error {
				_, err := src.Checkpoint(ctx, ctr.ID, w, engine.CheckpointOptions{})
				return err
			})
			if !flipped.Load() {
				t.Fatal("hook never corrupted a frame")
			}
			if !errors.Is(err, ErrVerify) || !errors.Is(err, ErrRemote) {
				t.Fatalf("err = %v, want remote ErrVerify", err)
			}
			if list, _ := dst.List(ctx); len(list) != 0 {
				t.Fatalf("corrupted stream restored %d containers", len(list))
			}
			t.Log(err)
		})
	}
}

func TestStreamProducerFailureAborts(t *testing.T) {
	ts, client := pair(t, nil, nil)
	got := make(chan error, 1)
	ts.srv.Handle("sink", func(ctx context.Context, h StreamHeader, r io.Reader) ([]byte, error) {
		_, err := io.Copy(io.Discard, r)
		got <- err
		return nil, err
	})
	boom := errors.New("criu exploded")
	_, _, err := client.Stream(context.Background(), ts.addr, StreamHeader{Kind: "sink", ID: "c1"}, func(w io.Writer) error {
		w.Write(payload(2 << 20))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want %v", err, boom)
	}
	if herr := <-got; !errors.Is(herr, ErrVerify) {
		t.Fatalf("handler read err = %v, want ErrVerify", herr)
	}
}

func TestStreamUnknownKind(t *testing.T) {
	ts, client := pair(t, nil, nil)
	_, _, err := client.SendStream(context.Background(), ts.addr, StreamHeader{Kind: "nope", ID: "x"}, bytes.NewReader([]byte("hi")))
	if !errors.Is(err, ErrNoHandler) {
		t.Fatalf("err = %v, want ErrNoHandler", err)
	}
	if _, _, err := client.SendStream(context.Background(), ts.addr, StreamHeader{Kind: "Bad Kind", ID: "x"}, bytes.NewReader(nil)); !errors.Is(err, ErrBadHeader) {
		t.Fatalf("err = %v, want ErrBadHeader", err)
	}
}

// A handler that returns early with success still fails on a bad stream.
func TestStreamHandlerStopsEarly(t *testing.T) {
	ts, client := pair(t, nil, func(c *ClientConfig) {
		c.testHookFrame = func(typ byte, p []byte) { p[len(p)-1] ^= 1 }
		c.Compression = Compression{Mode: CompressNone}
	})
	ts.srv.Handle("lazy", func(ctx context.Context, h StreamHeader, r io.Reader) ([]byte, error) {
		return []byte("ok"), nil
	})
	_, _, err := client.SendStream(context.Background(), ts.addr, StreamHeader{Kind: "lazy", ID: "x"}, bytes.NewReader(payload(100)))
	if !errors.Is(err, ErrVerify) {
		t.Fatalf("err = %v, want ErrVerify", err)
	}
}

func TestStreamCancel(t *testing.T) {
	ts, client := pair(t, nil, nil)
	ctx := context.Background()
	// Warm the pool so its connection's goroutines count in the baseline.
	ts.srv.Handle("sink", func(ctx context.Context, h StreamHeader, r io.Reader) ([]byte, error) {
		_, err := io.Copy(io.Discard, r)
		return nil, err
	})
	if _, _, err := client.SendStream(ctx, ts.addr, StreamHeader{Kind: "sink", ID: "warm"}, bytes.NewReader([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	base := runtime.NumGoroutine()

	started := make(chan struct{})
	var startOnce sync.Once
	handlerDone := make(chan error, 1)
	ts.srv.Handle("slow", func(hctx context.Context, h StreamHeader, r io.Reader) ([]byte, error) {
		buf := make([]byte, 64<<10)
		var n int
		var err error
		for err == nil {
			var k int
			k, err = r.Read(buf)
			n += k
			if n >= 2<<20 {
				startOnce.Do(func() { close(started) })
			}
		}
		select {
		case <-hctx.Done():
		case <-time.After(5 * time.Second):
			err = errors.New("handler ctx not cancelled")
		}
		handlerDone <- err
		return nil, err
	})
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-started
		cancel()
	}()
	chunk := payload(256 << 10)
	_, _, err := client.Stream(cctx, ts.addr, StreamHeader{Kind: "slow", ID: "c"}, func(w io.Writer) error {
		for {
			if _, err := w.Write(chunk); err != nil {
				return err
			}
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if herr := <-handlerDone; !errors.Is(herr, ErrVerify) {
		t.Fatalf("handler saw %v, want ErrVerify (stream cut)", herr)
	}
	waitGoroutines(t, base)
	// The pooled connection survives a cancelled stream.
	if _, _, err := client.SendStream(ctx, ts.addr, StreamHeader{Kind: "sink", ID: "after"}, bytes.NewReader([]byte("x"))); err != nil {
		t.Fatal(err)
	}
}

func TestStreamBandwidthLimit(t *testing.T) {
	ts, client := pair(t, nil, func(c *ClientConfig) {
		c.BandwidthLimit = 8 << 20
		c.Compression = Compression{Mode: CompressNone}
	})
	ts.srv.Handle("sink", func(ctx context.Context, h StreamHeader, r io.Reader) ([]byte, error) {
		_, err := io.Copy(io.Discard, r)
		return nil, err
	})
	_, st, err := client.SendStream(context.Background(), ts.addr, StreamHeader{Kind: "sink", ID: "x"}, bytes.NewReader(payload(4<<20)))
	if err != nil {
		t.Fatal(err)
	}
	// 4 MiB at 8 MiB/s with a small burst: about 0.5 s.
	if st.Duration < 300*time.Millisecond {
		t.Fatalf("4 MiB took %v under an 8 MiB/s limit", st.Duration)
	}
}

func TestAdaptiveDecision(t *testing.T) {
	for _, tc := range []struct {
		name      string
		raw, zstd float64 // measured goodput, MB/s
		wantZstd  bool
	}{
		{"loopback: zstd is the bottleneck", 380, 290, false},
		{"slow link: zstd doubles goodput", 12, 24, true},
		{"engine-bound: a tie compresses (same time, half the bytes)", 100, 104, true},
		{"raw flattered by buffers but within 10%", 110, 100, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l linkStats
			l.observe(false, int64(tc.raw*1e6), time.Second)
			l.observe(true, int64(tc.zstd*1e6), time.Second)
			var z int
			n := adaptiveWindow * exploreEvery * 4
			for range n {
				if l.decide() {
					z++
				}
			}
			share := float64(z) / float64(n)
			if tc.wantZstd && share < 0.8 || !tc.wantZstd && share > 0.2 {
				t.Fatalf("compressed %d/%d chunks", z, n)
			}
		})
	}
	var fresh linkStats
	if !fresh.decide() {
		t.Fatal("with nothing measured, adaptive should try zstd first")
	}
}

// On a slow link adaptive mode compresses; on loopback it mostly does not
// (BenchmarkStreamAdaptive shows that side).
func TestAdaptiveCompressesOnSlowLink(t *testing.T) {
	ts, client := pair(t, nil, func(c *ClientConfig) {
		c.BandwidthLimit = 4 << 20
		c.ChunkSize = 64 << 10
		c.Compression = Compression{Mode: CompressAdaptive}
	})
	ts.srv.Handle("sink", func(ctx context.Context, h StreamHeader, r io.Reader) ([]byte, error) {
		_, err := io.Copy(io.Discard, r)
		return nil, err
	})
	_, st, err := client.SendStream(context.Background(), ts.addr, StreamHeader{Kind: "sink", ID: "x"}, bytes.NewReader(payload(4<<20)))
	if err != nil {
		t.Fatal(err)
	}
	if st.ZstdChunks <= st.RawChunks || st.WireBytes > st.Bytes*4/5 {
		t.Fatalf("adaptive on a 4 MiB/s link: %+v", st)
	}
	t.Log(st.Compression)
}

// A pooled connection that dies between uses is replaced transparently; one
// that dies mid-stream gives ErrPeerClosed.
func TestStreamPeerClosed(t *testing.T) {
	ck := newSigner(t)
	ts := startServer(t, []ssh.PublicKey{ck.PublicKey()}, nil)
	px := newProxy(t, ts.addr)
	hk := NewHostKeyMap()
	hk.Set(px.addr(), ts.hostKey.PublicKey())
	client := newTestClient(t, ck, hk, nil)
	ts.srv.Handle("sink", func(ctx context.Context, h StreamHeader, r io.Reader) ([]byte, error) {
		_, err := io.Copy(io.Discard, r)
		return []byte("ok"), err
	})
	ctx := context.Background()
	send := func(f func(io.Writer) error) error {
		_, _, err := client.Stream(ctx, px.addr(), StreamHeader{Kind: "sink", ID: "c"}, f)
		return err
	}
	small := func(w io.Writer) error { _, err := w.Write([]byte("hello")); return err }
	if err := send(small); err != nil {
		t.Fatal(err)
	}
	px.cut()
	if err := send(small); err != nil {
		t.Fatalf("after the pooled connection died: %v", err)
	}
	err := send(func(w io.Writer) error {
		if _, err := w.Write(payload(2 << 20)); err != nil {
			return err
		}
		px.cut()
		for {
			if _, err := w.Write(make([]byte, 64<<10)); err != nil {
				return err
			}
		}
	})
	if !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("cut mid-stream: err = %v, want ErrPeerClosed", err)
	}
	t.Log(err)
}
