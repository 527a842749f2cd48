package docker

import (
	"archive/tar"
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/edgemigrate/orchestrate/engine/internal/criuimg"
)

// Streaming before dockerd is done.
//
// dockerd's checkpoint has three stages: CRIU dumps into a temporary
// directory of containerd (TMPDIR/ctd-checkpoint*), containerd packs that
// into its content store, and dockerd unpacks it into the checkpoint
// directory. At 256 MiB the last two take longer than the dump, and the
// container is already dead during all of them. As soon as CRIU has
// finished and containerd has begun packing (runc has returned), the images
// in the temporary directory are complete: the engine opens them all (an
// open file outlives containerd's removal of the directory) and streams
// them while dockerd finishes. Anything unexpected (no unique directory, a
// non-regular file, the directory gone) falls back to streaming the
// checkpoint directory once dockerd returns.

// daemonPaths are the containerd directories the early stream watches,
// as this process sees them.
type daemonPaths struct {
	tmp    string // containerd's TMPDIR
	ingest string // its content store's ingest directory
	work   string // the container's CRIU work directory (dump.log)
}

func (e *Engine) earlyPaths(root, dockerID string) (daemonPaths, bool) {
	dpid := strings.TrimSuffix(strings.TrimPrefix(root, "/proc/"), "/root")
	if root == "" || dpid == "" {
		return daemonPaths{}, false
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
		i := strings.LastIndexByte(string(st), ')')
		f := strings.Fields(string(st)[i+1:])
		if len(f) < 2 || f[1] != dpid || !strings.Contains(string(st[:i]), "(containerd") {
			continue
		}
		var dp daemonPaths
		env, _ := os.ReadFile("/proc/" + p.Name() + "/environ")
		vars := map[string]string{}
		for _, kv := range strings.Split(string(env), "\x00") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				vars[k] = v
			}
		}
		// os.MkdirTemp(os.Getenv("XDG_RUNTIME_DIR"), "ctd-checkpoint")
		switch {
		case vars["XDG_RUNTIME_DIR"] != "":
			dp.tmp = vars["XDG_RUNTIME_DIR"]
		case vars["TMPDIR"] != "":
			dp.tmp = vars["TMPDIR"]
		default:
			dp.tmp = "/tmp"
		}
		cmd, _ := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		args := strings.Split(string(cmd), "\x00")
		var state, croot string
		for k, a := range args {
			if (a == "--config" || a == "-c") && k+1 < len(args) {
				conf, err := os.ReadFile(inRoot(root, args[k+1]))
				if err != nil {
					return dp, false
				}
				for _, l := range strings.Split(string(conf), "\n") {
					l = strings.TrimSpace(l)
					if v, ok := strings.CutPrefix(l, "state = "); ok {
						state = strings.Trim(v, `"'`)
					}
					if v, ok := strings.CutPrefix(l, "root = "); ok {
						croot = strings.Trim(v, `"'`)
					}
				}
			}
		}
		if state == "" || croot == "" {
			return dp, false
		}
		dp.tmp = inRoot(root, dp.tmp)
		dp.ingest = inRoot(root, filepath.Join(croot, "io.containerd.content.v1.content", "ingest"))
		dp.work = inRoot(root, filepath.Join(state, "io.containerd.runtime.v2.task", "moby", dockerID, "work"))
		return dp, true
	}
	return daemonPaths{}, false
}

// earlyFile is one opened CRIU image.
type earlyFile struct {
	name string
	fi   fs.FileInfo
	f    *os.File
}

// earlyImages waits until CRIU's images are complete in containerd's
// temporary directory and opens them all; nil when that does not happen
// before stop closes or the attempt looks unsafe.
func earlyImages(dp daemonPaths, stop <-chan struct{}) []earlyFile {
	ingestBefore := map[string]bool{}
	if ents, err := os.ReadDir(dp.ingest); err == nil {
		for _, en := range ents {
			ingestBefore[en.Name()] = true
		}
	}
	tmpBefore := map[string]bool{}
	if ents, err := os.ReadDir(dp.tmp); err == nil {
		for _, en := range ents {
			tmpBefore[en.Name()] = true
		}
	}
	var log *os.File
	defer func() {
		if log != nil {
			log.Close()
		}
	}()
	var logBuf []byte
	finished := false
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return nil
		case <-tick.C:
		}
		if log == nil {
			for _, p := range []string{filepath.Join(dp.work, "criu-work", "dump.log"), filepath.Join(dp.work, "dump.log")} {
				if f, err := os.Open(p); err == nil {
					log = f
					break
				}
			}
			continue
		}
		if !finished {
			b, _ := io.ReadAll(log)
			logBuf = append(logBuf, b...)
			finished = bytes.Contains(logBuf, []byte("Dumping finished successfully"))
			if !finished {
				continue
			}
		}
		// runc has returned once containerd starts packing.
		ents, _ := os.ReadDir(dp.ingest) // absent until a daemon's first upload
		packing := false
		for _, en := range ents {
			packing = packing || !ingestBefore[en.Name()]
		}
		if !packing {
			continue
		}
		var dirs []string
		tents, _ := os.ReadDir(dp.tmp)
		for _, en := range tents {
			if strings.HasPrefix(en.Name(), "ctd-checkpoint") && !tmpBefore[en.Name()] {
				if p := filepath.Join(dp.tmp, en.Name()); containerdMade(p) {
					dirs = append(dirs, p)
				}
			}
		}
		if len(dirs) != 1 {
			return nil // none (already gone) or another checkpoint at the same time
		}
		return openAll(dirs[0])
	}
}

// containerdMade reports whether p is a directory containerd (root) made
// with os.MkdirTemp: owned by root, mode 0700, not a symbolic link. The
// temporary directory may be world-writable (/tmp): a directory of that
// name made by anyone else is ignored, so nobody can slip images into a
// migration.
func containerdMade(p string) bool {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return false
	}
	return st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Uid == 0 && st.Mode&0o7777 == 0o700
}

// openAll opens every image in dir, by descriptor and without following a
// link: dir must still be containerd's (containerdMade), and every entry a
// regular file owned by root. Anything else: nil (the caller falls back to
// the checkpoint directory).
func openAll(dir string) []earlyFile {
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	d := os.NewFile(uintptr(dfd), dir)
	defer d.Close()
	var st unix.Stat_t
	if unix.Fstat(dfd, &st) != nil || st.Uid != 0 || st.Mode&0o7777 != 0o700 {
		return nil
	}
	ents, err := d.ReadDir(-1)
	if err != nil || len(ents) == 0 {
		return nil
	}
	var out []earlyFile
	fail := func() []earlyFile {
		for _, ef := range out {
			ef.f.Close()
		}
		return nil
	}
	for _, en := range ents {
		if !en.Type().IsRegular() {
			return fail()
		}
		fd, err := unix.Openat(dfd, en.Name(), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fail()
		}
		f := os.NewFile(uintptr(fd), filepath.Join(dir, en.Name()))
		fi, err := f.Stat()
		if err != nil || !fi.Mode().IsRegular() || owner(fi) != 0 {
			f.Close()
			return fail()
		}
		out = append(out, earlyFile{name: en.Name(), fi: fi, f: f})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func owner(fi fs.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}

// addEarly writes the opened images under prefix and closes them.
func addEarly(tw *tar.Writer, files []earlyFile, prefix string) (int, error) {
	defer func() {
		for _, ef := range files {
			ef.f.Close()
		}
	}()
	buf := make([]byte, 1<<20)
	for _, ef := range files {
		hdr, err := tar.FileInfoHeader(ef.fi, "")
		if err != nil {
			return 0, err
		}
		hdr.Name = prefix + "/" + ef.name
		hdr.Uname, hdr.Gname = "", ""
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			return 0, err
		}
		if _, err := io.CopyBuffer(tw, io.NewSectionReader(ef.f, 0, hdr.Size), buf); err != nil {
			return 0, err
		}
	}
	return len(files), nil
}

// statsFromEarly reads CRIU's stats-dump among the opened images.
func statsFromEarly(files []earlyFile) *criuimg.DumpStats {
	for _, ef := range files {
		if ef.name == "stats-dump" {
			b, err := io.ReadAll(io.NewSectionReader(ef.f, 0, ef.fi.Size()))
			if err != nil {
				return nil
			}
			ds, _ := criuimg.ParseDumpStats(b)
			return ds
		}
	}
	return nil
}
