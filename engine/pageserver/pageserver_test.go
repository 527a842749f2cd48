package pageserver

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

var pageSize = os.Getpagesize()

// cmdBytes encodes one command as CRIU does.
func cmdBytes(cmd, flags uint32, nr, vaddr, dst uint64) []byte {
	b := make([]byte, HeaderSize)
	binary.LittleEndian.PutUint32(b[0:], flags<<cmdBits|cmd)
	binary.LittleEndian.PutUint64(b[8:], nr)
	binary.LittleEndian.PutUint64(b[16:], vaddr)
	binary.LittleEndian.PutUint64(b[24:], dst)
	return b
}

func pages(n int, seed byte) []byte {
	b := make([]byte, n*pageSize)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// session is a whole dump-side session: open, pages, a hole, a parent
// query, more pages, close. It owes 1 + 4 + 4 answer bytes.
func session() []byte {
	var b bytes.Buffer
	b.Write(cmdBytes(cmdOpen2, 0, 0, 0, 7))
	b.Write(cmdBytes(cmdAddF, pePresent, 3, 0x1000, 7))
	b.Write(pages(3, 1))
	b.Write(cmdBytes(cmdHole, 0, 2, 0x9000, 7))
	b.Write(cmdBytes(cmdParent, 0, 0, 0, 7))
	b.Write(cmdBytes(cmdAdd, 0, 2, 0x20000, 7))
	b.Write(pages(2, 9))
	b.Write(cmdBytes(cmdAddF, 1<<1, 4, 0x40000, 7)) // lazy: no data follows
	b.Write(cmdBytes(cmdClose, 0, 0, 0, 0))
	return b.Bytes()
}

func TestParser(t *testing.T) {
	whole := session()
	for _, chunk := range []int{1, 7, HeaderSize, 4096, len(whole)} {
		p := newParser()
		for b := whole; len(b) > 0; {
			n := min(chunk, len(b))
			if err := p.feed(b[:n]); err != nil {
				t.Fatalf("chunk %d: %v", chunk, err)
			}
			b = b[n:]
		}
		if !p.complete() || p.pages != 5 || p.owed != 9 {
			t.Fatalf("chunk %d: complete %v pages %d owed %d", chunk, p.complete(), p.pages, p.owed)
		}
	}

	bad := []struct {
		name string
		in   []byte
	}{
		{"unknown command", cmdBytes(99, 0, 0, 0, 0)},
		{"lazy get", cmdBytes(cmdGet, 0, 1, 0, 0)},
		{"bytes after close", append(cmdBytes(cmdClose, 0, 0, 0, 0), 1)},
		{"absurd length", cmdBytes(cmdAddF, pePresent, 1<<40, 0, 0)},
	}
	for _, c := range bad {
		if err := newParser().feed(c.in); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v, want ErrProtocol", c.name, err)
		}
	}

	incomplete := [][]byte{
		whole[:len(whole)-HeaderSize],     // no close
		whole[:HeaderSize+HeaderSize+100], // inside page data
		whole[:10],                        // inside a header
	}
	for i, in := range incomplete {
		p := newParser()
		if err := p.feed(in); err != nil || p.complete() {
			t.Errorf("incomplete %d: err %v complete %v", i, err, p.complete())
		}
	}
}

// socketPair returns two connected Unix stream sockets (with CloseWrite,
// like TCP and SSH channels).
func socketPair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "sock")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	a, b := conn(fds[0]), conn(fds[1])
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// fakeServer answers like CRIU's page server and keeps the page data it
// received. It stops at CLOSE, or after dieAfter bytes when that is > 0.
type fakeServer struct {
	got      bytes.Buffer
	dieAfter int
	stuck    bool // never reads: a cut link
}

func (f *fakeServer) serve(c net.Conn) error {
	defer c.Close()
	if f.stuck {
		time.Sleep(time.Hour)
	}
	p := newParser()
	buf := make([]byte, 1000)
	total := 0
	for {
		n, err := c.Read(buf)
		total += n
		if f.dieAfter > 0 && total >= f.dieAfter {
			return errors.New("died")
		}
		before := p.owed
		if err := p.feed(buf[:n]); err != nil {
			return err
		}
		f.got.Write(buf[:n])
		if owed := p.owed - before; owed > 0 {
			if _, err := c.Write(make([]byte, owed)); err != nil {
				return err
			}
		}
		if p.complete() {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// dumpSide plays CRIU: it sends the session and reads the answers it is
// owed; it closes once CLOSE is answered.
func dumpSide(c net.Conn, s []byte) error {
	defer c.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(s)
		errc <- err
	}()
	ans := make([]byte, 9)
	if _, err := io.ReadFull(c, ans); err != nil {
		return err
	}
	return <-errc
}

func TestPumpAndReplay(t *testing.T) {
	criu, criuEnd := socketPair(t)
	srvEnd, srv := socketPair(t)
	fs := &fakeServer{}
	srvErr := make(chan error, 1)
	go func() { srvErr <- fs.serve(srv) }()
	dumpErr := make(chan error, 1)
	s := session()
	go func() { dumpErr <- dumpSide(criu, s) }()
	var rec bytes.Buffer
	st, err := Pump(context.Background(), criuEnd, srvEnd, PumpConfig{Record: &rec})
	if err != nil || !st.Complete || st.Pages != 5 || st.Sent != int64(len(s)) || st.Answered != 9 {
		t.Fatalf("pump: %+v %v", st, err)
	}
	if err := <-dumpErr; err != nil {
		t.Fatal(err)
	}
	if err := <-srvErr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rec.Bytes(), s) || !bytes.Equal(fs.got.Bytes(), s) {
		t.Fatal("recording or server input differs from what the dump sent")
	}

	// The recording rebuilds the same session on another server.
	a, b := socketPair(t)
	fs2 := &fakeServer{}
	go func() { srvErr <- fs2.serve(b) }()
	rst, err := Replay(context.Background(), bytes.NewReader(rec.Bytes()), a)
	if err != nil || !rst.Complete || rst.Pages != 5 {
		t.Fatalf("replay: %+v %v", rst, err)
	}
	<-srvErr
	if !bytes.Equal(fs2.got.Bytes(), s) {
		t.Fatal("replayed session differs")
	}

	if st, err := Check(bytes.NewReader(rec.Bytes())); err != nil || st.Pages != 5 {
		t.Fatalf("check: %+v %v", st, err)
	}
	if _, err := Check(bytes.NewReader(s[:len(s)-1])); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("check of a cut recording: %v", err)
	}
	if _, err := Check(bytes.NewReader(nil)); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("check of an empty recording: %v", err)
	}

	// A truncated recording is refused.
	a, b = socketPair(t)
	go func() { srvErr <- (&fakeServer{}).serve(b) }()
	if _, err := Replay(context.Background(), bytes.NewReader(s[:len(s)-HeaderSize]), a); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("truncated replay: %v, want ErrIncomplete", err)
	}
}

func TestPumpServerDies(t *testing.T) {
	criu, criuEnd := socketPair(t)
	srvEnd, srv := socketPair(t)
	go (&fakeServer{dieAfter: 2 * pageSize}).serve(srv)
	dumpErr := make(chan error, 1)
	go func() { dumpErr <- dumpSide(criu, session()) }()
	st, err := Pump(context.Background(), criuEnd, srvEnd, PumpConfig{Record: io.Discard})
	if err != nil || st.Complete {
		t.Fatalf("pump: %+v %v; want an incomplete session without pump error", st, err)
	}
	if err := <-dumpErr; err == nil {
		t.Fatal("the dump side must see its session fail")
	}
}

// A cut link: the server stops reading, writes block; the watchdog ends the
// session so that CRIU's dump fails instead of staying frozen.
func TestPumpStall(t *testing.T) {
	criu, criuEnd := socketPair(t)
	srvEnd, srv := socketPair(t)
	go (&fakeServer{stuck: true}).serve(srv)
	big := append(cmdBytes(cmdOpen2, 0, 0, 0, 1), cmdBytes(cmdAddF, pePresent, 4096, 0, 1)...)
	big = append(big, pages(4096, 3)...)
	dumpErr := make(chan error, 1)
	go func() { dumpErr <- dumpSide(criu, big) }()
	start := time.Now()
	st, err := Pump(context.Background(), criuEnd, srvEnd, PumpConfig{Stall: 200 * time.Millisecond})
	if !errors.Is(err, ErrStalled) || st.Complete {
		t.Fatalf("pump: %+v %v, want ErrStalled", st, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("stall noticed after %v", d)
	}
	if err := <-dumpErr; err == nil {
		t.Fatal("the dump side must see its session fail")
	}
}

// failWriter fails once more than n bytes were written.
type failWriter struct {
	mu sync.Mutex
	n  int
}

func (f *failWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(p) > f.n {
		return 0, errors.New("no space left on device")
	}
	f.n -= len(p)
	return len(p), nil
}

// A recording that cannot be written ends the session before CRIU gets the
// answer to its CLOSE: the dump fails and the container keeps running,
// rather than losing the only copy that allows a rollback. (The server may
// have seen the whole session; the target restores nothing without the
// archive that only a successful dump produces.)
func TestPumpRecordFails(t *testing.T) {
	for _, size := range []int{HeaderSize, 1 << 20} {
		criu, criuEnd := socketPair(t)
		srvEnd, srv := socketPair(t)
		srvErr := make(chan error, 1)
		go func() { srvErr <- (&fakeServer{}).serve(srv) }()
		dumpErr := make(chan error, 1)
		go func() { dumpErr <- dumpSide(criu, session()) }()
		st, err := Pump(context.Background(), criuEnd, srvEnd, PumpConfig{Record: &failWriter{n: 3 * HeaderSize}, BufferSize: size})
		if err == nil || st.Complete {
			t.Fatalf("buffer %d: pump %+v %v, want an error", size, st, err)
		}
		if err := <-dumpErr; err == nil {
			t.Fatalf("buffer %d: the dump side must see its session fail", size)
		}
		<-srvErr
	}
}

// The Answerer stands in for the page server: CRIU's side completes, the
// bytes pass through whole, and a OneWay end replays them into a real
// server.
func TestAnswererAndOneWay(t *testing.T) {
	criu, criuEnd := socketPair(t)
	var out bytes.Buffer
	ans := NewAnswerer(&out)
	dumpErr := make(chan error, 1)
	s := session()
	go func() { dumpErr <- dumpSide(criu, s) }()
	st, err := Pump(context.Background(), criuEnd, ans, PumpConfig{})
	if err != nil || !st.Complete || !ans.Complete() {
		t.Fatalf("pump: %+v %v complete %v", st, err, ans.Complete())
	}
	if err := <-dumpErr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), s) {
		t.Fatal("the answerer changed the bytes")
	}

	srvEnd, srv := socketPair(t)
	fs := &fakeServer{}
	srvErr := make(chan error, 1)
	go func() { srvErr <- fs.serve(srv) }()
	st, err = Pump(context.Background(), OneWay{R: bytes.NewReader(out.Bytes())}, srvEnd, PumpConfig{})
	if err != nil || !st.Complete {
		t.Fatalf("one-way pump: %+v %v", st, err)
	}
	if err := <-srvErr; err != nil || !bytes.Equal(fs.got.Bytes(), s) {
		t.Fatalf("server: %v", err)
	}

	// A writer that fails makes CRIU's session fail: no CLOSE answer.
	criu, criuEnd = socketPair(t)
	go func() { dumpErr <- dumpSide(criu, s) }()
	st, err = Pump(context.Background(), criuEnd, NewAnswerer(&failWriter{n: 100}), PumpConfig{})
	if st.Complete {
		t.Fatalf("pump into a failing writer: %+v %v", st, err)
	}
	if err := <-dumpErr; err == nil {
		t.Fatal("CRIU's side must fail")
	}
}
