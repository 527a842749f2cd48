//go:build remote

package podman

// The page path: a checkpoint whose memory pages leave through CRIU's page
// server while CRIU dumps them, so that Podman's export carries only the
// metadata, and a restore whose pages are already in place.
//
// Source (CheckpointPages). Podman 4.3 has no page-server option, but runc
// hands CRIU a configuration file, /etc/criu/runc.conf, unless the container
// names its own (annotation org.criu.config), and CRIU lets it override the
// RPC options (runc libcontainer/container_linux.go, CRIU cr-service.c). The
// engine writes one that points CRIU at a listener on 127.0.0.1 it opened
// for its page-path checkpoints, and hands each connection to the checkpoint
// whose runtime started that CRIU (found in /proc, uid 0); others are
// closed. The file affects every checkpoint on the host while it exists, so
// it is written under an exclusive lock and removed as soon as no page-path
// checkpoint of the engine waits for its CRIU to connect (CRIU reads it
// once, at the start): several page-path checkpoints (a drain) share one
// file and one listener instead of queueing for the lock, while plain
// checkpoints hold the same lock shared (pageGate).
// Restores ignore the page-server settings (CRIU uses them for lazy pages
// only). The caller's PageSink carries the connection to wherever the pages
// go. If the sink fails mid-dump, CRIU's dump fails and the container keeps
// running; if CRIU never connects (a container with its own CRIU config),
// the pages simply stay in the archive.
//
// Target (PreparePages, ReceivePages, Restore). The import keeps the
// container's ID, so its storage directory is known before it exists:
// <graphroot>/<driver>-containers/<id>/userdata. containers/storage creates
// that directory with MkdirAll and Podman's import untars into it without
// removing anything (Podman v4.3.1 pkg/checkpoint/crutils, containers/storage
// v1.43 store.go), so `criu page-server` can fill its checkpoint/ before the
// import, and runc restore then reads the pages from the page cache. A
// marker file says the directory is ours until a container owns it.
//
// Rollback (ReplayPages). After a page-server dump the source holds no
// pages; the caller keeps a recording of the session and replays it into a
// local page server writing into the container's own checkpoint directory,
// after which Resume works as after any kept checkpoint.

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containers/podman/v4/pkg/bindings/system"
	"golang.org/x/sys/unix"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/pageserver"
)

const (
	runcConfName = "runc.conf"
	// runcConfMarker starts every runc.conf the engine writes, so that a
	// file left by a crashed agent is told apart from an operator's own.
	runcConfMarker = "# written by orchestrate"
	lockName       = ".orchestrate-runc-conf.lock"
	// pagesMarker, in a target's container storage directory, says the
	// directory was made by PreparePages and no container owns it yet.
	pagesMarker = ".orchestrate-pages"
	// annotationCRIUConfig: a container with it gives runc its own CRIU
	// config file, and runc.conf is not read.
	annotationCRIUConfig = "org.criu.config"
)

var containerIDRe = regexp.MustCompile(`^[0-9a-f]{64}$`)

var _ engine.PageMover = (*Engine)(nil)

// criuLock is the host-wide lock on runc.conf: exclusive while the engine's
// page-server config exists, shared during every other checkpoint.
func (e *Engine) criuLock(ctx context.Context, how int) (func(), error) {
	f, err := os.OpenFile(filepath.Join(e.cfg.CRIUConfigDir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return func() { _ = unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		t := time.NewTimer(10 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// sharedCRIULock is taken by plain checkpoints so that they never run while
// runc.conf points CRIU at someone else's page server. Where the config
// directory is missing or not writable no page path can run either, and
// there is nothing to wait for.
func (e *Engine) sharedCRIULock(ctx context.Context) (func(), error) {
	unlock, err := e.criuLock(ctx, unix.LOCK_SH)
	if err != nil && (errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EROFS)) {
		return func() {}, nil
	}
	return unlock, err
}

// removeStaleRuncConf removes a runc.conf a crashed agent left (it would
// send every checkpoint on the host to a dead port) when nobody holds the
// lock. An operator's own file is left alone.
func (e *Engine) removeStaleRuncConf(ctx context.Context) {
	path := filepath.Join(e.cfg.CRIUConfigDir, runcConfName)
	b, err := os.ReadFile(path)
	if err != nil || !strings.HasPrefix(string(b), runcConfMarker) {
		return
	}
	lctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	unlock, err := e.criuLock(lctx, unix.LOCK_EX)
	if err != nil {
		return
	}
	defer unlock()
	if os.Remove(path) == nil {
		e.log.Warn("removed a stale page-server runc.conf", "path", path)
	}
}

// writeRuncConf points CRIU at 127.0.0.1:port. The caller holds the
// exclusive lock.
func (e *Engine) writeRuncConf(port int) error {
	path := filepath.Join(e.cfg.CRIUConfigDir, runcConfName)
	if b, err := os.ReadFile(path); err == nil && !strings.HasPrefix(string(b), runcConfMarker) {
		return fmt.Errorf("%w: %s exists and is not orchestrate's", engine.ErrNoPageServer, path)
	}
	body := fmt.Sprintf("%s for its page-path checkpoints (pid %d)\npage-server\naddress 127.0.0.1\nport %d\n", runcConfMarker, os.Getpid(), port)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// CheckPages implements engine.PageMover: it reports, without doing
// anything, whether CheckpointPages can run for container id here.
func (e *Engine) CheckPages(ctx context.Context, id string) error {
	d, err := e.inspect(ctx, id)
	if err != nil {
		return fmt.Errorf("pages for %s: %w", id, err)
	}
	if err := e.pagesPossible(d); err != nil {
		return fmt.Errorf("pages for %s: %w", id, err)
	}
	return nil
}

// pagesPossible: the container takes runc.conf (it names no CRIU config
// of its own), and the engine can write runc.conf (its directory exists,
// is writable, and holds no operator's file of that name).
func (e *Engine) pagesPossible(d inspectData) error {
	if _, ok := d.Config.Annotations[annotationCRIUConfig]; ok {
		return fmt.Errorf("%w: the container names its own CRIU config (%s)", engine.ErrNoPageServer, annotationCRIUConfig)
	}
	dir := e.cfg.CRIUConfigDir
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("%w: no CRIU config directory %s", engine.ErrNoPageServer, dir)
	}
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return fmt.Errorf("%w: cannot write %s: %v", engine.ErrNoPageServer, dir, err)
	}
	path := filepath.Join(dir, runcConfName)
	if b, err := os.ReadFile(path); err == nil && !strings.HasPrefix(string(b), runcConfMarker) {
		return fmt.Errorf("%w: %s exists and is not orchestrate's", engine.ErrNoPageServer, path)
	}
	return nil
}

// CheckpointPages implements engine.PageMover: a checkpoint like Checkpoint
// (kept, so Resume can roll back after ReplayPages) whose memory pages CRIU
// sends to a page server through sink while it dumps. w receives Podman's
// archive without pages. The sink runs on its own goroutine with CRIU's
// connection and must close it when done; if it fails mid-dump, CRIU's
// dump fails and the container keeps running. ErrNoPageServer says the
// path cannot run here (nothing was done); the caller then uses Checkpoint.
//
// Podman does not stop a checkpoint whose request went away: if ctx ends
// before CRIU connected, the config file is removed and the service may
// still complete an ordinary checkpoint (pages kept locally, so Resume
// works without ReplayPages); if it ends mid-session, the session is cut
// and CRIU's dump fails. Callers that must not cut a dump use a context
// that outlives their own request.
func (e *Engine) CheckpointPages(ctx context.Context, id string, w io.Writer, sink engine.PageSink, opts engine.CheckpointOptions) (engine.Stats, error) {
	start := time.Now()
	d, err := e.inspect(ctx, id)
	if err != nil {
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w", id, err)
	}
	if !d.State.Running {
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w (state %s)", id, engine.ErrNotRunning, d.State.Status)
	}
	if err := e.pagesPossible(d); err != nil {
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w", id, err)
	}
	if opts.LeaveRunning {
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w: a leave-running checkpoint keeps its pages", id, engine.ErrNoPageServer)
	}
	// Page images left by an earlier kept checkpoint would travel in the
	// archive and overwrite the fresh ones on the target.
	if err := removePageImages(filepath.Join(d.StaticDir, "checkpoint")); err != nil {
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w", id, err)
	}
	ticket, err := e.pages.enter(ctx, e, d.ID)
	if err != nil {
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w", id, err)
	}
	defer ticket.leave()
	if opts.Starting != nil {
		opts.Starting()
	}

	// CRIU connects before it freezes anything. The session belongs to the
	// sink from then on; once no other page checkpoint waits for its CRIU,
	// the lock and the config file go.
	acceptCtx, stopAccept := context.WithCancel(ctx)
	defer stopAccept()
	sinkDone := make(chan error, 1)
	connected := make(chan struct{})
	go func() {
		var conn net.Conn
		select {
		case conn = <-ticket.conn:
		case <-acceptCtx.Done():
		}
		ticket.leave()
		if conn == nil {
			sinkDone <- nil // no session: the pages stay in the archive
			return
		}
		close(connected)
		sinkDone <- sink(ctx, conn)
	}()

	q := url.Values{}
	q.Set("export", "true")
	q.Set("keep", "true")
	q.Set("tcpEstablished", fmt.Sprint(opts.TCPEstablished))
	resp, err := e.do(ctx, http.MethodPost, "/containers/"+url.PathEscape(d.ID)+"/checkpoint", q, nil)
	stopAccept()
	if err != nil {
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w", id, errors.Join(err, <-sinkDone))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		rerr := responseError(resp)
		if serr := <-sinkDone; serr != nil {
			rerr = fmt.Errorf("%w (page server: %v)", rerr, serr)
		}
		return engine.Stats{}, fmt.Errorf("checkpoint %s: %w", id, rerr)
	}
	paged := false
	select {
	case <-connected:
		paged = true
	default:
	}
	sc := newScanner()
	body := io.TeeReader(resp.Body, sc)
	var n int64
	if paged {
		n, err = copyWithoutPages(w, body)
	} else {
		n, err = io.Copy(w, body)
	}
	sc.finish()
	serr := <-sinkDone
	st := engine.Stats{Duration: time.Since(start), Bytes: n}
	if dump := sc.dumpStats(); dump != nil {
		st.FrozenTime, st.MemdumpTime, st.MemwriteTime, st.PagesWritten = dump.Frozen, dump.Memdump, dump.Memwrite, dump.PagesWritten
	}
	if err != nil {
		return st, fmt.Errorf("checkpoint %s: stream archive after %d bytes: %w", id, n, err)
	}
	if sc.err() != nil {
		return st, fmt.Errorf("checkpoint %s: %w: %v", id, engine.ErrBadArchive, sc.err())
	}
	if serr != nil {
		// CRIU's dump succeeded, so the page server answered its CLOSE;
		// the sink failed after that (e.g. its recording).
		return st, fmt.Errorf("checkpoint %s: page session: %w", id, serr)
	}
	e.log.Debug("checkpointed through the page server", "container", d.Name, "paged", paged, "bytes", n, "duration", st.Duration, "frozen", st.FrozenTime)
	return st, nil
}

// pageGate lets page-path checkpoints of one engine run at once. While
// any of them waits for its CRIU to connect, the engine holds the host-wide
// lock exclusively, runc.conf points every CRIU at one loopback listener,
// and each connection goes to the checkpoint whose runtime started that
// CRIU (found in /proc); other connections are closed. When the last one
// connected (or gave up), runc.conf and the listener go and the lock is
// released, so plain checkpoints, which hold the lock shared, never send
// their pages to the listener.
type pageGate struct {
	enterMu sync.Mutex // taken by enter; first comers take the lock under it

	mu      sync.Mutex
	waiters map[string]chan net.Conn // by container ID, until CRIU connected
	unlock  func()
	ln      net.Listener
	port    int
}

// pageTicket is one checkpoint's place at the gate.
type pageTicket struct {
	g    *pageGate
	e    *Engine
	id   string
	conn chan net.Conn // CRIU's connection, once
	once sync.Once
}

// enter registers container id's checkpoint, taking the lock and writing
// runc.conf if it is the first.
func (g *pageGate) enter(ctx context.Context, e *Engine, id string) (*pageTicket, error) {
	g.enterMu.Lock()
	defer g.enterMu.Unlock()
	t := &pageTicket{g: g, e: e, id: id, conn: make(chan net.Conn, 1)}
	// The check and the registration are one step: a last ticket leaving
	// in between would otherwise close the listener this one counts on.
	g.mu.Lock()
	if g.ln != nil {
		defer g.mu.Unlock()
		if _, busy := g.waiters[id]; busy {
			return nil, fmt.Errorf("%w: a page checkpoint of %s is already waiting for its CRIU", engine.ErrNoPageServer, id)
		}
		g.waiters[id] = t.conn
		return t, nil
	}
	g.mu.Unlock()
	// The first: only enter opens the gate, and enterMu is held, so it
	// stays closed until this one opens it.
	unlock, err := e.criuLock(ctx, unix.LOCK_EX)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", engine.ErrNoPageServer, err)
	}
	ln, err := e.cfg.ListenPages()
	if err != nil {
		unlock()
		return nil, fmt.Errorf("%w: listen: %v", engine.ErrNoPageServer, err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := e.writeRuncConf(port); err != nil {
		ln.Close()
		unlock()
		if errors.Is(err, engine.ErrNoPageServer) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", engine.ErrNoPageServer, err)
	}
	g.mu.Lock()
	g.unlock, g.ln, g.port = unlock, ln, port
	g.waiters = map[string]chan net.Conn{id: t.conn}
	g.mu.Unlock()
	go g.accept(e, ln, port)
	return t, nil
}

// leave ends the ticket's wait (CRIU connected, or the checkpoint is over);
// the last one out removes runc.conf, closes the listener and releases
// the lock. Safe to call more than once.
func (t *pageTicket) leave() {
	t.once.Do(func() {
		g := t.g
		g.mu.Lock()
		defer g.mu.Unlock()
		if c, ok := g.waiters[t.id]; ok && c == t.conn {
			delete(g.waiters, t.id)
		}
		if len(g.waiters) == 0 && g.ln != nil {
			_ = os.Remove(filepath.Join(t.e.cfg.CRIUConfigDir, runcConfName))
			g.ln.Close()
			g.unlock()
			g.ln, g.unlock = nil, nil
		}
	})
}

// accept hands each connection on ln to the waiting checkpoint whose
// runtime's CRIU made it, until ln closes.
func (g *pageGate) accept(e *Engine, ln net.Listener, port int) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		raddr, ok := conn.RemoteAddr().(*net.TCPAddr)
		if !ok || !raddr.IP.IsLoopback() {
			conn.Close()
			continue
		}
		g.mu.Lock()
		ids := make([]string, 0, len(g.waiters))
		for id := range g.waiters {
			ids = append(ids, id)
		}
		g.mu.Unlock()
		id, err := criuPeer(ids, raddr.Port, port)
		if err != nil {
			e.log.Warn("refused a page-server connection", "from", raddr.String(), "err", err)
			conn.Close()
			continue
		}
		g.mu.Lock()
		c, ok := g.waiters[id]
		if ok {
			delete(g.waiters, id)
		}
		g.mu.Unlock()
		if !ok {
			conn.Close()
			continue
		}
		c <- conn
	}
}

// criuPeer returns which of the containers ctrs the TCP connection from
// local port from to port to belongs to: a process of uid 0 started
// (directly, or through one wrapper) by the OCI runtime's `checkpoint ...
// <id>` (runc execs CRIU as its child). It reads /proc only.
func criuPeer(ctrs []string, from, to int) (string, error) {
	if len(ctrs) == 0 {
		return "", errors.New("no checkpoint waits for a page-server connection")
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return "", err
	}
	runtimes := map[int]string{} // the runtime's checkpoint, by pid: its container
	parent := map[int]int{}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", p.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces; split after ')'.
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		parent[pid] = ppid
		cmd, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")
		if !slicesContains(args, "checkpoint") {
			continue
		}
		if last := args[len(args)-1]; slicesContains(ctrs, last) {
			runtimes[pid] = last
		}
	}
	if len(runtimes) == 0 {
		return "", fmt.Errorf("no runtime checkpoint of %v is running", ctrs)
	}
	for pid, ppid := range parent {
		rt := ppid
		ctr, ok := runtimes[rt]
		if !ok {
			rt = parent[ppid]
			ctr, ok = runtimes[rt]
		}
		if !ok {
			continue
		}
		// The connection is looked up in the runtime's view of the
		// network, not CRIU's: CRIU enters the container's network
		// namespace while it dumps it, and a container with a network of
		// its own then shows another table.
		if owns, err := ownsConnection(pid, rt, from, to); err == nil && owns {
			return ctr, nil
		}
	}
	return "", fmt.Errorf("port %d is no CRIU's of %v", from, ctrs)
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// ownsConnection reports whether process pid holds the socket of the TCP
// connection from local port from to port to, with uid 0, as the network
// namespace of process netPid sees it (/proc/NETPID/net/tcp), so it works
// in any network namespace.
func ownsConnection(pid, netPid, from, to int) (bool, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	fds, err := os.ReadDir(filepath.Join(dir, "fd"))
	if err != nil {
		return false, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(filepath.Join("/proc", strconv.Itoa(netPid), "net", table))
		if err != nil {
			continue
		}
		ok := scanTCPTable(f, inodes, from, to)
		f.Close()
		if ok {
			return true, nil
		}
	}
	return false, nil
}

// scanTCPTable finds, in /proc/net/tcp format, a socket with one of inodes,
// local port from, remote port to and uid 0.
func scanTCPTable(r io.Reader, inodes map[string]bool, from, to int) bool {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		f := strings.Fields(sc.Text())
		if len(f) < 10 || !inodes[f[9]] || f[7] != "0" {
			continue
		}
		if hexPort(f[1]) == from && hexPort(f[2]) == to {
			return true
		}
	}
	return false
}

func hexPort(addr string) int {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return -1
	}
	p, err := strconv.ParseUint(addr[i+1:], 16, 16)
	if err != nil {
		return -1
	}
	return int(p)
}

// isPageImage: the images a page server writes (pagemap-*.img,
// pagemap-shmem-*.img, pages-*.img).
func isPageImage(name string) bool {
	return strings.HasSuffix(name, ".img") && (strings.HasPrefix(name, "pagemap-") || strings.HasPrefix(name, "pages-"))
}

func removePageImages(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if isPageImage(e.Name()) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// copyWithoutPages copies a checkpoint archive, leaving out page images
// under checkpoint/: after a page-server dump any such file is a leftover
// of an earlier checkpoint and must not overwrite the fresh pages on the
// target. It returns the bytes written.
func copyWithoutPages(w io.Writer, r io.Reader) (int64, error) {
	cw := &countWriter{w: w}
	tr := tar.NewReader(r)
	tw := tar.NewWriter(cw)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return cw.n, err
		}
		name := strings.TrimPrefix(h.Name, "./")
		if dir, base := filepath.Split(name); filepath.Clean(dir) == "checkpoint" && isPageImage(base) {
			continue
		}
		if err := tw.WriteHeader(h); err != nil {
			return cw.n, err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return cw.n, err
		}
	}
	if err := tw.Close(); err != nil {
		return cw.n, err
	}
	// Drain the end-of-archive padding, so the scanner sees it too.
	_, err := io.Copy(io.Discard, r)
	return cw.n, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// storagePaths returns the service's graph root and driver, once.
func (e *Engine) storagePaths(ctx context.Context) (graphRoot, driver string, err error) {
	e.storeMu.Lock()
	defer e.storeMu.Unlock()
	if e.graphRoot != "" {
		return e.graphRoot, e.graphDriver, nil
	}
	info, err := system.Info(e.call(ctx), nil)
	if err != nil {
		return "", "", fmt.Errorf("podman info: %w", err)
	}
	if info.Store == nil || info.Store.GraphRoot == "" || info.Store.GraphDriverName == "" {
		return "", "", errors.New("podman info: no storage graph root")
	}
	e.graphRoot, e.graphDriver = info.Store.GraphRoot, info.Store.GraphDriverName
	return e.graphRoot, e.graphDriver, nil
}

// containerStorageDir is where containers/storage keeps container id's
// files (its ContainerDirectory is <this>/userdata).
func (e *Engine) containerStorageDir(ctx context.Context, id string) (string, error) {
	if !containerIDRe.MatchString(id) {
		return "", fmt.Errorf("container ID %q: want 64 hex digits", id)
	}
	root, driver, err := e.storagePaths(ctx)
	if err != nil {
		return "", err
	}
	return filepath.Join(root, driver+"-containers", id), nil
}

// PreparePages implements engine.PageMover on the target, before the
// source freezes: it makes the checkpoint directory the import of
// container id will use, empty and marked as orchestrate's. A container
// with that ID must not exist here; a directory left by an earlier failed
// attempt (marked) is replaced, anything else is refused.
func (e *Engine) PreparePages(ctx context.Context, id string) error {
	dir, err := e.containerStorageDir(ctx, id)
	if err != nil {
		return fmt.Errorf("prepare pages for %s: %w", id, err)
	}
	if _, err := e.Inspect(ctx, id); err == nil {
		return fmt.Errorf("prepare pages for %s: a container with that ID exists on this host", id)
	} else if !errors.Is(err, engine.ErrNotFound) {
		return fmt.Errorf("prepare pages for %s: %w", id, err)
	}
	if _, err := os.Stat(dir); err == nil {
		if _, err := os.Stat(filepath.Join(dir, pagesMarker)); err != nil {
			return fmt.Errorf("prepare pages for %s: %s exists and is not orchestrate's", id, dir)
		}
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("prepare pages for %s: %w", id, err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "userdata", "checkpoint"), 0o700); err != nil {
		return fmt.Errorf("prepare pages for %s: %w", id, err)
	}
	if err := os.WriteFile(filepath.Join(dir, pagesMarker), nil, 0o600); err != nil {
		return fmt.Errorf("prepare pages for %s: %w", id, err)
	}
	return nil
}

// ReceivePages implements engine.PageMover on the target: it runs CRIU's
// page server on conn (the far end of the source's page session) and
// writes the pages into the directory PreparePages made. It returns nil
// only when the session completed and the page server exited cleanly. conn
// is closed before it returns.
func (e *Engine) ReceivePages(ctx context.Context, id string, conn io.ReadWriteCloser) (engine.PageStats, error) {
	dir, err := e.containerStorageDir(ctx, id)
	if err != nil {
		conn.Close()
		return engine.PageStats{}, fmt.Errorf("receive pages for %s: %w", id, err)
	}
	if _, err := os.Stat(filepath.Join(dir, pagesMarker)); err != nil {
		conn.Close()
		return engine.PageStats{}, fmt.Errorf("receive pages for %s: not prepared: %w", id, err)
	}
	st, err := e.runPageServer(ctx, filepath.Join(dir, "userdata"), func(ps net.Conn) (pageserver.Stats, error) {
		// A source behind a cut link sends nothing more; give up on it
		// well after any pause CRIU makes between commands.
		st, err := pageserver.Pump(ctx, conn, ps, pageserver.PumpConfig{Stall: e.cfg.PageStall, Idle: 3 * e.cfg.PageStall})
		if err == nil && !st.Complete {
			err = fmt.Errorf("%w: the source ended the session after %d bytes", pageserver.ErrIncomplete, st.Sent)
		}
		return st, err
	})
	ps := engine.PageStats{Bytes: st.Sent, Pages: st.Pages}
	if err != nil {
		return ps, fmt.Errorf("receive pages for %s: %w", id, err)
	}
	return ps, nil
}

// DiscardPages implements engine.PageMover on the target: it removes what
// PreparePages and ReceivePages left when no container took it (the
// migration failed before or during the import). A container that exists
// keeps its directory; removing the container removes it.
func (e *Engine) DiscardPages(ctx context.Context, id string) error {
	dir, err := e.containerStorageDir(ctx, id)
	if err != nil {
		return fmt.Errorf("discard pages for %s: %w", id, err)
	}
	if _, err := os.Stat(filepath.Join(dir, pagesMarker)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if _, err := e.Inspect(ctx, id); err == nil {
		return nil
	} else if !errors.Is(err, engine.ErrNotFound) {
		return fmt.Errorf("discard pages for %s: %w", id, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("discard pages for %s: %w", id, err)
	}
	return nil
}

// ReplayPages implements engine.PageMover on the source: it rebuilds the
// page images of the kept checkpoint of container id from a recording of
// its page session (pageserver.PumpConfig.Record), so that Resume can
// restore it. The container must be stopped. The recording is checked
// whole before anything is written; an incomplete one (the dump did not
// complete through the page server: the container never stopped, or CRIU
// ended up dumping locally) fails with pageserver.ErrIncomplete and leaves
// the checkpoint as it is. Existing page images are overwritten by name,
// never removed first.
func (e *Engine) ReplayPages(ctx context.Context, id string, recording io.ReadSeeker) error {
	d, err := e.inspect(ctx, id)
	if err != nil {
		return fmt.Errorf("replay pages for %s: %w", id, err)
	}
	if d.State.Running {
		return fmt.Errorf("replay pages for %s: the container runs", id)
	}
	if _, err := pageserver.Check(recording); err != nil {
		return fmt.Errorf("replay pages for %s: %w", id, err)
	}
	if _, err := recording.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("replay pages for %s: %w", id, err)
	}
	_, err = e.runPageServer(ctx, d.StaticDir, func(ps net.Conn) (pageserver.Stats, error) {
		return pageserver.Replay(ctx, recording, ps)
	})
	if err != nil {
		return fmt.Errorf("replay pages for %s: %w", id, err)
	}
	return nil
}

// runPageServer starts `criu page-server --ps-socket` writing into
// userdata/checkpoint, with one end of a socket pair, hands the other end
// to session, and waits for both. CRIU logs to its stderr (not into a file
// on the disk that may be full); its error lines go into the error, and a
// full disk wraps syscall.ENOSPC.
func (e *Engine) runPageServer(ctx context.Context, userdata string, session func(net.Conn) (pageserver.Stats, error)) (pageserver.Stats, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return pageserver.Stats{}, err
	}
	child := os.NewFile(uintptr(fds[1]), "page-server-socket")
	parentFile := os.NewFile(uintptr(fds[0]), "page-server-socket")
	conn, err := net.FileConn(parentFile)
	parentFile.Close()
	if err != nil {
		child.Close()
		return pageserver.Stats{}, err
	}
	cmd := exec.CommandContext(ctx, e.cfg.CRIU, "page-server", "--ps-socket", "3",
		"-D", filepath.Join(userdata, "checkpoint"), "-v2")
	cmd.ExtraFiles = []*os.File{child}
	cmd.WaitDelay = 5 * time.Second
	stderr := &tailBuffer{max: 64 << 10}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		child.Close()
		conn.Close()
		return pageserver.Stats{}, fmt.Errorf("start criu page-server: %w", err)
	}
	child.Close()
	st, serr := session(conn)
	conn.Close()
	werr := cmd.Wait()
	if werr != nil {
		msg := strings.TrimSpace(stderr.String())
		if lines := criuErrorLines(msg); len(lines) > 0 {
			msg = strings.Join(lines, " | ")
		}
		werr = fmt.Errorf("%w: criu page-server: %v: %s", engine.ErrCRIU, werr, msg)
		if strings.Contains(msg, "No space left on device") {
			werr = fmt.Errorf("%w: %w", syscall.ENOSPC, werr)
		}
		return st, errors.Join(werr, serr)
	}
	return st, serr
}

// criuErrorLines returns the last few error lines of a CRIU log.
func criuErrorLines(log string) []string {
	var lines []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "Error (") {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	if len(lines) > 4 {
		lines = lines[len(lines)-4:]
	}
	return lines
}

// pagesTaken removes PreparePages' marker once a container owns the
// directory (a restore succeeded), so nothing treats it as ours again.
func (e *Engine) pagesTaken(ctx context.Context, id string) {
	if dir, err := e.containerStorageDir(ctx, id); err == nil {
		_ = os.Remove(filepath.Join(dir, pagesMarker))
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
