//go:build remote

package podman_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/pageserver"
	"github.com/edgemigrate/orchestrate/engine/podman"
	"github.com/edgemigrate/orchestrate/internal/simhost"
	"github.com/edgemigrate/orchestrate/transfer"
)

// pageHost is a simulated host with what the page path needs: its engine
// (page listener in its network namespace, its own /etc/criu), a transfer
// server on its address and a client that dials from its namespace. It
// plays the agent's part of the migration code in these tests.
type pageHost struct {
	*simhost.Host
	eng  *podman.Engine
	addr string
	cli  *transfer.Client
	rec  string // recordings of page sessions (the agent's data dir)

	mu       sync.Mutex
	received map[string]chan error // by container ID: ReceivePages' result
	// onBytes, when set, is called as page bytes arrive here.
	onBytes func(n int64)
}

const testStall = 2 * time.Second

func newPageHosts(t *testing.T, hosts ...*simhost.Host) []*pageHost {
	t.Helper()
	clientKey := newTestSigner(t)
	keys := transfer.NewHostKeyMap()
	var out []*pageHost
	for _, h := range hosts {
		h := h
		ns := simhost.NetnsPath(h.Name)
		eng, err := podman.New(context.Background(), podman.Config{
			Socket:        h.Socket,
			CRIUConfigDir: simhost.CRIUConfigDir(h.Name),
			PageStall:     testStall,
			CLI:           simhost.PodmanCLI(h.Name),
			ListenPages: func() (ln net.Listener, err error) {
				err = simhost.InNetns(ns, func() error {
					ln, err = net.Listen("tcp", "127.0.0.1:0")
					return err
				})
				return ln, err
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		ph := &pageHost{Host: h, eng: eng, rec: t.TempDir(), received: map[string]chan error{}}
		hostKey := newTestSigner(t)
		cfg := transfer.DefaultServerConfig()
		cfg.HostKey, cfg.Authorizer = hostKey, transfer.NewKeySet(clientKey.PublicKey())
		// The transfer port and each page link's port listen in the
		// host's network namespace, as its agent's would.
		listen := func(network, addr string) (ln net.Listener, err error) {
			err = simhost.InNetns(ns, func() (err error) {
				ln, err = net.Listen(network, addr)
				return err
			})
			return ln, err
		}
		cfg.ListenLink = listen
		srv, err := transfer.NewServer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		srv.HandlePages("pages", ph.handlePages)
		ln, err := listen("tcp", h.IP+":0")
		if err != nil {
			t.Fatal(err)
		}
		ph.addr = ln.Addr().String()
		keys.Set(ph.addr, hostKey.PublicKey())
		done := make(chan struct{})
		go func() { defer close(done); srv.Serve(context.Background(), ln) }()
		t.Cleanup(func() { srv.Close(); <-done })
		ccfg := transfer.DefaultClientConfig()
		ccfg.Signer, ccfg.HostKeys = clientKey, keys
		ccfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			return simhost.DialInNetns(ns, addr, 5*time.Second)
		}
		cli, err := transfer.NewClient(ccfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		ph.cli = cli
		out = append(out, ph)
	}
	return out
}

func newTestSigner(t *testing.T) ssh.Signer {
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

// handlePages is the target's page channel: prepare before the source
// freezes, then receive.
func (p *pageHost) handlePages(ctx context.Context, h transfer.StreamHeader, ch *transfer.PageChannel) error {
	id := h.Meta["container"]
	if err := p.eng.PreparePages(ctx, id); err != nil {
		return err
	}
	res := make(chan error, 1)
	p.mu.Lock()
	p.received[id] = res
	p.mu.Unlock()
	if err := ch.Accept(); err != nil {
		res <- err
		return err
	}
	var conn io.ReadWriteCloser = ch
	if p.onBytes != nil {
		conn = &countingConn{ReadWriteCloser: ch, ch: ch, fn: p.onBytes}
	}
	_, err := p.eng.ReceivePages(ctx, id, conn)
	res <- err
	return err
}

type countingConn struct {
	io.ReadWriteCloser
	ch *transfer.PageChannel
	n  atomic.Int64
	fn func(int64)
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.ReadWriteCloser.Read(b)
	c.fn(c.n.Add(int64(n)))
	return n, err
}

func (c *countingConn) CloseWrite() error { return c.ch.CloseWrite() }
func (c *countingConn) Abort() error      { return c.ch.Abort() }

func (p *pageHost) receiveResult(id string) error {
	p.mu.Lock()
	res := p.received[id]
	p.mu.Unlock()
	if res == nil {
		return errors.New("no page session was received")
	}
	select {
	case err := <-res:
		res <- err
		return err
	case <-time.After(30 * time.Second):
		return errors.New("the page receiver did not finish")
	}
}

// moveResult says how far a move came.
type moveResult struct {
	ckpt, restore engine.Stats
	archive       int
	dumpErr       error // the source's checkpoint failed: the container runs there
	restoreErr    error // the target failed after the dump: rolled back
	container     engine.Container
	pages         pageserver.Stats
	// Since the checkpoint call began: CRIU connected, the page session
	// ended, the checkpoint call returned, the target's receiver
	// reported, the restore returned.
	connected, pumped, checkpointed, received, restored time.Duration
	link                                                bool // the session ran on a page link, not inside SSH
}

// move migrates container id from p to q the way the migration code does
// it: page channel first (the target prepares), checkpoint with pages into
// it and a recording, then the small archive into the target's restore.
// After a failed restore it rolls back: replay the recording, resume.
func (p *pageHost) move(t testing.TB, q *pageHost, id string, before func()) moveResult {
	t.Helper()
	ctx := context.Background()
	var r moveResult
	pc, err := p.cli.OpenPages(ctx, q.addr, transfer.StreamHeader{Kind: "pages", ID: "m-" + id[:12], Meta: map[string]string{"container": id}})
	if err != nil {
		t.Fatalf("open page channel: %v", err)
	}
	r.link = pc.Link()
	recPath := filepath.Join(p.rec, id+".pages")
	rec, err := os.Create(recPath)
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close()
	var start time.Time
	sink := func(ctx context.Context, conn io.ReadWriteCloser) error {
		r.connected = time.Since(start)
		var err error
		r.pages, err = pageserver.Pump(ctx, conn, pc, pageserver.PumpConfig{Record: pageserver.NewWriteBehind(rec), Stall: testStall})
		r.pumped = time.Since(start)
		return err
	}
	if before != nil {
		before()
	}
	var buf bytes.Buffer
	start = time.Now()
	r.ckpt, r.dumpErr = p.eng.CheckpointPages(ctx, id, &buf, sink, engine.CheckpointOptions{Keep: true, TCPEstablished: true})
	r.checkpointed = time.Since(start)
	pc.Close()
	if r.dumpErr != nil {
		if err := q.eng.DiscardPages(ctx, id); err != nil {
			t.Errorf("discard pages on %s: %v", q.Name, err)
		}
		return r
	}
	if !r.pages.Complete {
		t.Fatalf("the checkpoint succeeded but the page session is incomplete: %+v", r.pages)
	}
	r.archive = buf.Len()
	r.restoreErr = q.receiveResult(id)
	r.received = time.Since(start)
	if r.restoreErr == nil {
		r.container, r.restore, r.restoreErr = q.eng.Restore(ctx, &buf, engine.RestoreOptions{TCPEstablished: true})
		r.restored = time.Since(start)
	}
	if r.restoreErr != nil {
		t.Logf("restore on %s failed, rolling back: %v", q.Name, r.restoreErr)
		f, err := os.Open(recPath)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := p.eng.ReplayPages(ctx, id, f); err != nil {
			t.Fatalf("replay pages on %s: %v", p.Name, err)
		}
		if err := p.eng.Resume(ctx, id); err != nil {
			t.Fatalf("resume on %s: %v", p.Name, err)
		}
	}
	return r
}

// sameMemory fails unless after is the same process as before, later.
func sameMemory(t *testing.T, where string, before, after simhost.Report) {
	t.Helper()
	if after.Start != before.Start || after.Checksum != before.Checksum || after.Counter < before.Counter {
		t.Fatalf("%s: %+v, before %+v", where, after, before)
	}
}

// The page path there and back: pages cross while CRIU dumps, the archive
// is metadata only, and an established connection, the rootfs change and
// the labels survive; the restored container checkpoints and moves again
// like any other. A second container shows its named volume arriving.
func TestPagesCrossHost(t *testing.T) {
	hs := newPageHosts(t, simhost.New(t), simhost.New(t))
	h1, h2 := hs[0], hs[1]
	ctx := context.Background()
	port := simhost.Port()
	id := h1.RunWorkload(simhost.Workload{Name: "pg", MiB: 64, Port: port, SelfConn: true,
		Labels: map[string]string{"app": "pages"}, Args: []string{"-file", "/etc/rootfs-change"}})
	before, _ := h1.Probe(port)

	r := h1.move(t, h2, id, nil)
	if r.dumpErr != nil || r.restoreErr != nil {
		t.Fatalf("move: dump %v, restore %v", r.dumpErr, r.restoreErr)
	}
	t.Logf("h1->h2: archive %d bytes; checkpoint %v (frozen %v); restore %v", r.archive, r.ckpt.Duration, r.ckpt.FrozenTime, r.restore.Duration)
	if r.archive > 2<<20 {
		t.Errorf("archive of %d bytes: the pages should not be in it", r.archive)
	}
	after := h2.WaitReport(port, 10*time.Second)
	sameMemory(t, "on h2", before, after)
	if !after.SelfConn {
		t.Error("the established connection did not survive")
	}
	if r.container.ID != id || r.container.Labels["app"] != "pages" {
		t.Errorf("restored %+v", r.container)
	}
	h2.MustRun("podman", "exec", "pg", "cat", "/etc/rootfs-change")
	if out := h2.MustRun("podman", "ps", "--format", "{{.Names}} {{.Status}}"); !strings.Contains(out, "pg Up") {
		t.Errorf("podman ps on h2: %q", out)
	}
	if c, err := h1.eng.Inspect(ctx, id); err != nil || c.Running || !c.Checkpointed {
		t.Fatalf("source copy %+v %v", c, err)
	}
	// The migration finishes: the source copy goes. Then back again.
	if err := h1.eng.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
	r = h2.move(t, h1, id, nil)
	if r.dumpErr != nil || r.restoreErr != nil {
		t.Fatalf("move back: dump %v, restore %v", r.dumpErr, r.restoreErr)
	}
	sameMemory(t, "back on h1", after, h1.WaitReport(port, 10*time.Second))

	// On a bridge network the address and the hostname come along.
	bport := simhost.Port()
	bid := strings.TrimSpace(h1.MustRun("podman", "run", "-d", "--name", "pb", "--network", "bridge", "--hostname", "pages-host",
		simhost.WorkloadImage, "-mib", "16", "-listen", fmt.Sprintf(":%d", bport)))
	ip := h1.ContainerIP("pb")
	bbefore := h1.WaitReportAt(ip, bport, 30*time.Second)
	if r := h1.move(t, h2, bid, nil); r.dumpErr != nil || r.restoreErr != nil {
		t.Fatalf("move pb: dump %v, restore %v", r.dumpErr, r.restoreErr)
	}
	if got := h2.ContainerIP("pb"); got != ip {
		t.Errorf("address %s on h2, %s on h1", got, ip)
	}
	if got := strings.TrimSpace(h2.MustRun("podman", "exec", "pb", "cat", "/proc/sys/kernel/hostname")); got != "pages-host" {
		t.Errorf("hostname %q on h2", got)
	}
	sameMemory(t, "pb on h2", bbefore, h2.WaitReportAt(ip, bport, 10*time.Second))

	// Two at once (a drain): their CRIUs share one runc.conf and one
	// listener, each connection goes to its own checkpoint.
	var ids [2]string
	var ports [2]int
	var befores [2]simhost.Report
	for i := range ids {
		ids[i], ports[i], befores[i] = startRollbackWorkload(t, h1, fmt.Sprintf("two%d", i), 32)
	}
	var wg sync.WaitGroup
	var results [2]moveResult
	var tbs [2]*goTB
	for i := range ids {
		tbs[i] = &goTB{TB: t}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = h1.move(tbs[i], h2, ids[i], nil)
		}()
	}
	wg.Wait()
	for i := range ids {
		if tbs[i].failed != "" || results[i].dumpErr != nil || results[i].restoreErr != nil {
			t.Fatalf("two at once, %d: %s; dump %v, restore %v", i, tbs[i].failed, results[i].dumpErr, results[i].restoreErr)
		}
		if results[i].archive > 2<<20 {
			t.Errorf("two at once, %d: archive of %d bytes: the pages should not be in it", i, results[i].archive)
		}
		sameMemory(t, fmt.Sprintf("two at once, %d on h2", i), befores[i], h2.WaitReport(ports[i], 10*time.Second))
	}
	if _, err := os.Stat(filepath.Join(simhost.CRIUConfigDir(h1.Name), "runc.conf")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("runc.conf outlived the checkpoints: %v", err)
	}

	// A named volume arrives in the target's own volume. (It does not go
	// back here: simulated hosts share one file system, and Podman's
	// import keeps the source's volume path in the restored spec, which
	// exists here; on real hosts both paths are the target's.)
	vport := simhost.Port()
	vid := strings.TrimSpace(h1.MustRun("podman", "run", "-d", "--name", "pv", "--network", "host", "-v", "pgvol:/data",
		simhost.WorkloadImage, "-mib", "8", "-listen", fmt.Sprintf("127.0.0.1:%d", vport), "-file", "/data/v"))
	h1.WaitReport(vport, 30*time.Second)
	if r := h1.move(t, h2, vid, nil); r.dumpErr != nil || r.restoreErr != nil {
		t.Fatalf("move pv: dump %v, restore %v", r.dumpErr, r.restoreErr)
	}
	if _, err := os.Stat(filepath.Join(simhost.DataDir(h2.Name), "volumes", "pgvol", "_data", "v")); err != nil {
		t.Fatalf("the volume did not arrive on h2: %v", err)
	}
}

// goTB lets a helper that fails with Fatal run on a goroutine of its own:
// Fatal ends that goroutine and keeps the message.
type goTB struct {
	testing.TB
	failed string
}

func (g *goTB) Fatal(args ...any) { g.failed = fmt.Sprint(args...); runtime.Goexit() }
func (g *goTB) Fatalf(format string, args ...any) {
	g.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (g *goTB) Helper() {}

// pageServerPID finds the target's `criu page-server` for container id.
func pageServerPID(id string) int {
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if s := string(cmd); strings.Contains(s, "page-server") && strings.Contains(s, id) {
			return pid
		}
	}
	return 0
}

// startRollbackWorkload runs a workload on h and returns its ID, port and
// report.
func startRollbackWorkload(t *testing.T, h *pageHost, name string, mib int) (string, int, simhost.Report) {
	port := simhost.Port()
	id := h.RunWorkload(simhost.Workload{Name: name, MiB: mib, Port: port, SelfConn: true})
	rep, err := h.Probe(port)
	if err != nil {
		t.Fatal(err)
	}
	return id, port, rep
}

// checkRolledBack: the container runs on the source with its memory, and
// the target has nothing of it.
func checkRolledBack(t *testing.T, src, dst *pageHost, id string, port int, before simhost.Report) {
	t.Helper()
	ctx := context.Background()
	sameMemory(t, "on the source after the failure", before, src.WaitReport(port, 10*time.Second))
	if c, err := src.eng.Inspect(ctx, id); err != nil || !c.Running {
		t.Fatalf("source %+v %v", c, err)
	}
	if _, err := dst.eng.Inspect(ctx, id); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("target still has the container: %v", err)
	}
	dir := filepath.Join(simhost.DataDir(dst.Name), "storage", "overlay-containers", id)
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("target kept %s: %v", dir, err)
	}
}

// Failures of the page path, each made to happen, on one pair of hosts:
// every one leaves the container running on the source with its memory
// and nothing of it on the target.
func TestPagesFailures(t *testing.T) {
	hs := newPageHosts(t, simhost.New(t), simhost.New(t))
	for _, c := range []struct {
		name string
		run  func(*testing.T, *pageHost, *pageHost)
	}{
		{"ReceiverKilledMidDump", receiverKilled},
		{"LinkCutMidDump", linkCut},
		{"TargetPodmanKilledMidRestore", targetPodmanKilled},
		{"SourcePodmanKilledMidDump", sourcePodmanKilled},
		{"CallerGivesUpMidDump", canceledMidDump},
	} {
		t.Run(c.name, func(t *testing.T) { c.run(t, hs[0], hs[1]) })
	}
}

// The target's page receiver dies mid-dump: CRIU's dump fails, the
// container never stopped.
func receiverKilled(t *testing.T, h1, h2 *pageHost) {
	defer func() { h2.onBytes = nil }()
	id, port, before := startRollbackWorkload(t, h1, "rk", 64)
	var once sync.Once
	h2.onBytes = func(n int64) {
		if n > 16<<20 {
			once.Do(func() {
				pid := pageServerPID(id)
				if pid == 0 {
					t.Error("no page server found")
					return
				}
				t.Logf("killing page server %d after %d MiB", pid, n>>20)
				_ = killPID(pid)
			})
		}
	}
	r := h1.move(t, h2, id, nil)
	if r.dumpErr == nil {
		t.Fatal("the checkpoint succeeded although the page server died")
	}
	t.Logf("expected failure: %v", r.dumpErr)
	checkRolledBack(t, h1, h2, id, port, before)
}

// The source's Podman service dies mid-dump. runc and CRIU go on: the dump
// finishes, every page reaches the target, and Podman, started again, has
// a stopped container nobody recorded as checkpointed. No archive came,
// so the migration failed: the rollback rebuilds the pages from the
// recording and resumes the container in place.
func sourcePodmanKilled(t *testing.T, h1, h2 *pageHost) {
	defer func() { h2.onBytes = nil }()
	id, port, before := startRollbackWorkload(t, h1, "sp", 64)
	var once sync.Once
	h2.onBytes = func(n int64) {
		if n > 16<<20 {
			once.Do(func() {
				t.Logf("killing %s's Podman after %d MiB", h1.Name, n>>20)
				if out, err := simhost.Script("kill-podman", h1.Name); err != nil {
					t.Error(out, err)
				}
			})
		}
	}
	r := h1.move(t, h2, id, nil)
	if r.dumpErr == nil {
		t.Fatal("the checkpoint call succeeded although its Podman died")
	}
	t.Logf("expected failure: %v", r.dumpErr)
	if !r.pages.Complete {
		t.Fatalf("CRIU did not finish its dump after Podman died: %+v", r.pages)
	}
	if out, err := simhost.Script("start-podman", h1.Name); err != nil {
		t.Fatal(out, err)
	}
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := h1.eng.Inspect(ctx, id)
		if err == nil && !c.Running {
			t.Logf("after Podman's restart: state %s, checkpointed %v", c.State, c.Checkpointed)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the source copy %+v %v", c, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	f, err := os.Open(filepath.Join(h1.rec, id+".pages"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := h1.eng.ReplayPages(ctx, id, f); err != nil {
		t.Fatalf("replay: %v", err)
	}
	if err := h1.eng.Resume(ctx, id); err != nil {
		t.Fatalf("resume: %v", err)
	}
	checkRolledBack(t, h1, h2, id, port, before)
}

// The link is cut mid-dump (the target's interface goes down, nothing
// answers): the stall watchdog ends the session, CRIU's dump fails and the
// container runs on.
func linkCut(t *testing.T, h1, h2 *pageHost) {
	defer func() { h2.onBytes = nil }()
	id, port, before := startRollbackWorkload(t, h1, "lc", 64)
	var once sync.Once
	h2.onBytes = func(n int64) {
		if n > 16<<20 {
			once.Do(func() {
				t.Logf("cutting the link after %d MiB", n>>20)
				h2.MustRun("ip", "link", "set", "eth0", "down")
			})
		}
	}
	start := time.Now()
	r := h1.move(t, h2, id, nil)
	if r.dumpErr == nil {
		t.Fatal("the checkpoint succeeded across a cut link")
	}
	t.Logf("expected failure after %v: %v", time.Since(start), r.dumpErr)
	h2.MustRun("ip", "link", "set", "eth0", "up")
	// The target's receiver ends with its own stall timeout.
	if err := h2.receiveResult(id); err == nil {
		t.Fatal("the target's receiver reported success")
	}
	if err := h2.eng.DiscardPages(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	checkRolledBack(t, h1, h2, id, port, before)
}

// The target's disk fills while the pages arrive: the page server fails
// with ENOSPC, so does the dump, and the container runs on.
func TestPagesDiskFull(t *testing.T) {
	hs := newPageHosts(t, simhost.New(t), simhost.NewWith(t, simhost.Options{DiskMiB: 256}))
	h1, h2 := hs[0], hs[1]
	// Leave about 48 MiB free for a 128 MiB workload.
	h2.MustRun("sh", "-c", "avail=$(df -m --output=avail "+simhost.DataDir(h2.Name)+" | tail -1); dd if=/dev/zero of="+
		simhost.DataDir(h2.Name)+"/fill bs=1M count=$((avail - 48)) status=none")
	id, port, before := startRollbackWorkload(t, h1, "df", 128)
	r := h1.move(t, h2, id, nil)
	if r.dumpErr == nil {
		t.Fatal("the checkpoint succeeded onto a full disk")
	}
	t.Logf("expected failure: %v", r.dumpErr)
	if err := h2.receiveResult(id); err == nil || !strings.Contains(err.Error(), "No space left") {
		t.Fatalf("target receiver: %v, want ENOSPC", err)
	}
	checkRolledBack(t, h1, h2, id, port, before)
}

// The target's Podman dies mid-restore, after all pages arrived: the
// source rebuilds its pages from the recording and resumes.
func targetPodmanKilled(t *testing.T, h1, h2 *pageHost) {
	defer func() { h2.onBytes = nil }()
	id, port, before := startRollbackWorkload(t, h1, "pk", 64)
	// Kill the service as soon as the restore request reaches it.
	var once sync.Once
	r := h1.move(t, h2, id, func() {
		go func() {
			// Pages are received during the dump; the restore follows.
			// Poll for the import's temporary file, then kill.
			for i := 0; i < 2000; i++ {
				ents, _ := os.ReadDir(simhost.StateDir(h2.Name) + "/tmp")
				for _, e := range ents {
					if strings.HasPrefix(e.Name(), "restore") {
						once.Do(func() {
							t.Logf("killing podman on %s during the restore", h2.Name)
							out, err := simhost.Script("kill-podman", h2.Name)
							if err != nil {
								t.Errorf("kill-podman: %v %s", err, out)
							}
						})
						return
					}
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	})
	if r.dumpErr != nil {
		t.Fatalf("dump: %v", r.dumpErr)
	}
	if r.restoreErr == nil {
		t.Fatal("the restore succeeded although Podman was killed")
	}
	if out, err := simhost.Script("start-podman", h2.Name); err != nil {
		t.Fatalf("start-podman: %v %s", err, out)
	}
	// A restart leaves whatever the killed import created; the migration's
	// abort removes it.
	ctx := context.Background()
	if c, err := h2.eng.Inspect(ctx, id); err == nil {
		t.Logf("the killed restore left %s (%s); removing it", c.Name, c.State)
		if err := h2.eng.Remove(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := h2.eng.DiscardPages(ctx, id); err != nil {
		t.Fatal(err)
	}
	checkRolledBack(t, h1, h2, id, port, before)
}

func killPID(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// The caller gives up mid-dump (its context ends): the session ends, CRIU's
// dump fails, and the container runs on with its memory.
func canceledMidDump(t *testing.T, h1, h2 *pageHost) {
	defer func() { h2.onBytes = nil }()
	id, port, before := startRollbackWorkload(t, h1, "cx", 64)
	ctx, cancel := context.WithCancel(context.Background())
	var once sync.Once
	h2.onBytes = func(n int64) {
		if n > 16<<20 {
			once.Do(cancel)
		}
	}
	pc, err := h1.cli.OpenPages(context.Background(), h2.addr, transfer.StreamHeader{Kind: "pages", ID: "m-cx", Meta: map[string]string{"container": id}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = h1.eng.CheckpointPages(ctx, id, io.Discard, func(ctx context.Context, conn io.ReadWriteCloser) error {
		_, err := pageserver.Pump(ctx, conn, pc, pageserver.PumpConfig{Stall: testStall})
		return err
	}, engine.CheckpointOptions{Keep: true, TCPEstablished: true})
	if err == nil {
		t.Fatal("the checkpoint succeeded although its caller gave up mid-dump")
	}
	t.Logf("expected failure: %v", err)
	if err := h2.receiveResult(id); err == nil {
		t.Fatal("the target's receiver reported success")
	}
	_ = h2.eng.DiscardPages(context.Background(), id)
	checkRolledBack(t, h1, h2, id, port, before)
}
