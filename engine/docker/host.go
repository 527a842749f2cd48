package docker

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/internal/safefs"
)

// stagingDir returns the staging directory (a dockerd path) for a
// checkpoint of about mem bytes of memory, or "" for Docker's own
// directory. The configured directory is used only when it is private
// (root's, mode 0700: safefs.PrivateDir, as dockerd sees it) and a tmpfs
// with room for the images twice over: staging only pays when it saves
// writing them to disk.
func (e *Engine) stagingDir(root string, mem int64) string {
	if e.cfg.StagingDir == "" || e.cfg.StagingDir == "-" {
		return ""
	}
	dir := inRoot(root, e.cfg.StagingDir)
	if err := safefs.PrivateDir(dir); err != nil {
		e.log.Warn("not staging checkpoints", "dir", e.cfg.StagingDir, "err", err)
		return ""
	}
	var fs unix.Statfs_t
	if unix.Statfs(dir, &fs) != nil || fs.Type != unix.TMPFS_MAGIC {
		return ""
	}
	free := int64(fs.Bavail) * int64(fs.Bsize)
	// Room for the images (at most the memory) twice over, plus slack.
	if mem <= 0 || free < 2*mem+64<<20 {
		return ""
	}
	return e.cfg.StagingDir
}

// scanProcs looks at the processes of the container whose init is pid
// (those in its PID namespace). It counts the established TCP connections
// they hold: sockets among their open files that the container's network
// namespace lists in state ESTABLISHED (a host-network container shares the
// host's tables, so sockets are matched by inode, not merely listed). And
// it sums their resident memory, which sizes the checkpoint (cheaper than
// dockerd's stats, which take a second).
func scanProcs(pid int) (tcp int, rss int64, err error) {
	if pid <= 0 {
		return 0, 0, nil
	}
	pidns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	if err != nil {
		return 0, 0, err
	}
	inodes := map[string]bool{}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, 0, err
	}
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		if ns, err := os.Readlink("/proc/" + p.Name() + "/ns/pid"); err != nil || ns != pidns {
			continue
		}
		if st, err := os.ReadFile("/proc/" + p.Name() + "/statm"); err == nil {
			if f := strings.Fields(string(st)); len(f) > 1 {
				pages, _ := strconv.ParseInt(f[1], 10, 64)
				rss += pages * int64(os.Getpagesize())
			}
		}
		fds, _ := os.ReadDir("/proc/" + p.Name() + "/fd")
		for _, fd := range fds {
			l, err := os.Readlink("/proc/" + p.Name() + "/fd/" + fd.Name())
			if err != nil {
				continue
			}
			if ino, ok := strings.CutPrefix(l, "socket:["); ok {
				inodes[strings.TrimSuffix(ino, "]")] = true
			}
		}
	}
	if len(inodes) == 0 {
		return 0, rss, nil
	}
	n := 0
	for _, f := range []string{"tcp", "tcp6"} {
		fh, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
			if len(fields) < 10 || fields[3] != "01" {
				continue
			}
			if inodes[fields[9]] {
				n++
			}
		}
		fh.Close()
	}
	return n, rss, nil
}

// criuWatch holds CRIU's log file open while dockerd works, because the
// shim deletes it (with the container's bundle) as soon as a restore fails.
type criuWatch struct {
	stopc chan struct{}
	done  chan struct{}
	mu    sync.Mutex
	files map[string]*os.File
}

// watchCRIULogs polls for CRIU's log (dump.log or restore.log) in the work
// directory of the container's containerd bundle,
// STATE/io.containerd.runtime.v2.task/moby/ID/work, and opens it as soon as
// it appears.
func (e *Engine) watchCRIULogs(root, dockerID, log string) *criuWatch {
	w := &criuWatch{stopc: make(chan struct{}), done: make(chan struct{}), files: map[string]*os.File{}}
	state := containerdState(root)
	go func() {
		defer close(w.done)
		if state == "" {
			return
		}
		// A restore logs into work/, a dump into work/criu-work/.
		work := inRoot(root, filepath.Join(state, "io.containerd.runtime.v2.task", "moby", dockerID, "work"))
		paths := []string{filepath.Join(work, log), filepath.Join(work, "criu-work", log)}
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			w.mu.Lock()
			for _, p := range paths {
				if _, ok := w.files[p]; !ok {
					if f, err := os.Open(p); err == nil {
						w.files[p] = f
					}
				}
			}
			w.mu.Unlock()
			select {
			case <-w.stopc:
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

// containerdState returns the state directory of the containerd that the
// dockerd under root (a daemonRoot) started: the "state" of the config
// file named on its command line. "" when not found.
func containerdState(root string) string {
	dpid := strings.TrimSuffix(strings.TrimPrefix(root, "/proc/"), "/root")
	if root == "" || dpid == "" {
		return ""
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		st, err := os.ReadFile("/proc/" + p.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		i := strings.LastIndexByte(string(st), ')')
		f := strings.Fields(string(st)[i+1:])
		if len(f) < 2 || f[1] != dpid || !strings.Contains(string(st[:i]), "(containerd") {
			continue
		}
		cmd, _ := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		args := strings.Split(string(cmd), "\x00")
		for k, a := range args {
			if (a == "--config" || a == "-c") && k+1 < len(args) {
				conf, err := os.ReadFile(inRoot(root, args[k+1]))
				if err != nil {
					return ""
				}
				for _, l := range strings.Split(string(conf), "\n") {
					if v, ok := strings.CutPrefix(strings.TrimSpace(l), "state = "); ok {
						return strings.Trim(v, `"'`)
					}
				}
			}
		}
	}
	return ""
}

// stop ends the watch and returns the error lines of the logs it held.
func (w *criuWatch) stop() []string {
	close(w.stopc)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	var lines []string
	for _, f := range w.files {
		b, _ := io.ReadAll(f)
		f.Close()
		for _, l := range strings.Split(string(b), "\n") {
			// CRIU always complains that it cannot raise its own
			// RLIMIT_NOFILE inside a container's limits; harmless.
			if strings.Contains(l, "Error (") && !strings.Contains(l, "RLIMIT_NOFILE") {
				lines = append(lines, strings.TrimSpace(l))
			}
		}
	}
	// The cause comes first (a file CRIU cannot open), the consequences
	// last: keep both ends.
	if len(lines) > 5 {
		lines = append(lines[:2:2], lines[len(lines)-3:]...)
	}
	return lines
}

// criuError wraps a daemon error: when CRIU failed it wraps engine.ErrCRIU
// and adds the log's key lines, which the daemon's message lacks.
func criuError(err error, lines []string) error {
	msg := err.Error()
	if len(lines) == 0 && !strings.Contains(msg, "criu") {
		return wrap(err)
	}
	if len(lines) == 0 {
		return fmt.Errorf("%w: %w", engine.ErrCRIU, err)
	}
	return fmt.Errorf("%w: %w; criu log: %s", engine.ErrCRIU, err, strings.Join(lines, " | "))
}

// daemonRoot returns a prefix under which this process sees files as
// dockerd sees them: /proc/PID/root of the dockerd serving the configured
// socket. The paths dockerd reports (its data root, layers, volumes,
// checkpoint directories) are in its mount namespace, which need not be
// ours. "" when dockerd is not found (then paths are taken as they are).
func (e *Engine) daemonRoot() string {
	sock := strings.TrimPrefix(e.cfg.Socket, "unix://")
	procs, _ := os.ReadDir("/proc")
	var candidates []string
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		comm, err := os.ReadFile("/proc/" + p.Name() + "/comm")
		if err != nil || strings.TrimSpace(string(comm)) != "dockerd" {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(cmd), "\x00")
		for _, a := range args {
			if strings.Contains(a, sock) {
				return "/proc/" + p.Name() + "/root"
			}
		}
		explicit := false
		for _, a := range args {
			explicit = explicit || a == "-H" || a == "--host" || strings.HasPrefix(a, "-H=") || strings.HasPrefix(a, "--host=")
		}
		if !explicit {
			candidates = append(candidates, p.Name())
		}
	}
	if len(candidates) == 1 && sock == "/var/run/docker.sock" {
		return "/proc/" + candidates[0] + "/root"
	}
	return ""
}

// inRoot returns where this process finds the daemon's path p: root+p with
// every symbolic link on the way resolved inside root. (An absolute link
// under /proc/PID/root would otherwise resolve against our own root.)
func inRoot(root, p string) string {
	if root == "" {
		return p
	}
	parts := strings.Split(strings.Trim(filepath.Clean(p), "/"), "/")
	cur := "/"
	for hops := 0; len(parts) > 0 && hops < 64; {
		next := filepath.Join(cur, parts[0])
		parts = parts[1:]
		fi, err := os.Lstat(root + next)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			cur = next
			continue
		}
		hops++
		target, err := os.Readlink(root + next)
		if err != nil {
			cur = next
			continue
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(cur, target)
		}
		parts = append(strings.Split(strings.Trim(filepath.Clean(target), "/"), "/"), parts...)
		cur = "/"
	}
	return root + filepath.Join(append([]string{cur}, parts...)...)
}
