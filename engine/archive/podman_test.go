package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestPodmanCheckpoint checkpoints the project's workload with real Podman
// and CRIU on a simulated host, then inspects the archive offline, intact
// and damaged.
func TestPodmanCheckpoint(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real Podman checkpoints run as root")
	}
	for _, tool := range []string{"podman", "criu"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make test installs it): %v", tool, err)
		}
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	imageTar := lastLine(run("scripts/build-workload-image.sh"))

	host := "ar" + randomString(t, 4)
	run("scripts/simhost.sh", "up", host)
	t.Cleanup(func() {
		cmd := exec.Command(filepath.Join(root, "scripts", "simhost.sh"), "down", host)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("simhost down %s: %v\n%s", host, err, out)
		}
	})
	hostRun := func(args ...string) string {
		t.Helper()
		return run(append([]string{"scripts/simhost.sh", "exec", host}, args...)...)
	}

	port := 20000 + randomInt(t, 20000)
	marker := "m" + randomString(t, 8)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	hostRun("podman", "load", "-q", "-i", imageTar)
	hostRun("podman", "run", "-d", "--name", "w", "--network", "host", "localhost/orchestrate-workload:latest",
		"-mib", "16", "-listen", addr, "-marker", marker, "-file", "/data/hello.txt")
	waitFor(t, 15*time.Second, func() bool {
		cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "simhost.sh"), "exec", host, "sh", "-c",
			fmt.Sprintf("echo | busybox nc 127.0.0.1 %d", port))
		out, err := cmd.Output()
		return err == nil && strings.Contains(string(out), `"counter"`)
	})

	// A file deleted from the image, for deleted.files.
	hostRun("podman", "exec", "w", "/bin/busybox", "rm", "/bin/ls")

	dir := t.TempDir()
	zst := filepath.Join(dir, "w.tar.zst")
	plain := filepath.Join(dir, "w.tar")
	hostRun("podman", "container", "checkpoint", "--leave-running", "--export", zst, "w")
	hostRun("podman", "container", "checkpoint", "--leave-running", "--compress", "none", "--export", plain, "w")

	for _, path := range []string{zst, plain} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			a, err := Open(path, DefaultConfig())
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			checkWorkload(t, a, port, marker)
		})
	}

	t.Run("gdb-core", func(t *testing.T) { checkCore(t, root, plain) })

	t.Run("damaged", func(t *testing.T) {
		raw, err := os.ReadFile(plain)
		if err != nil {
			t.Fatal(err)
		}
		z, err := os.ReadFile(zst)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name  string
			data  []byte
			want  error
			where string
		}{
			{"cut at 10%", raw[:len(raw)/10], ErrTruncated, ""},
			{"cut at 50%", raw[:len(raw)/2], ErrTruncated, ""},
			{"cut 1100 bytes short", raw[:len(raw)-1100], ErrTruncated, ""},
			{"zstd cut at 50%", z[:len(z)/2], ErrTruncated, ""},
			{"pstree magic", rewriteMember(t, raw, "checkpoint/pstree.img", func(b []byte) []byte {
				binary.LittleEndian.PutUint32(b[4:], 0xdeadbeef)
				return b
			}), ErrCorrupt, "checkpoint/pstree.img"},
			{"mm cut", rewriteMember(t, raw, "checkpoint/mm-1.img", func(b []byte) []byte { return b[:len(b)/2] }), ErrTruncated, "checkpoint/mm-1.img"},
			{"pages cut", rewriteMember(t, raw, "checkpoint/pages-1.img", func(b []byte) []byte { return b[:len(b)-4096] }), ErrTruncated, "pages-1.img"},
			{"files.img entry size", rewriteMember(t, raw, "checkpoint/files.img", func(b []byte) []byte {
				binary.LittleEndian.PutUint32(b[8:], 1<<30)
				return b
			}), ErrCorrupt, "checkpoint/files.img"},
			{"config.dump", rewriteMember(t, raw, "config.dump", func(b []byte) []byte { return b[:len(b)/2] }), ErrCorrupt, "config.dump"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "damaged.tar")
				if err := os.WriteFile(path, tc.data, 0o600); err != nil {
					t.Fatal(err)
				}
				for _, open := range []func() (*Archive, error){
					func() (*Archive, error) { return Open(path, DefaultConfig()) },
					func() (*Archive, error) { return readBytes(t, tc.data) },
				} {
					a, err := open()
					if err == nil {
						a.Close()
						t.Fatal("no error")
					}
					if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.where) {
						t.Errorf("error %q: want %q naming %q", err, tc.want, tc.where)
					}
				}
			})
		}
	})
}

func checkWorkload(t *testing.T, a *Archive, port int, marker string) {
	t.Helper()
	r := a.Report()
	var out bytes.Buffer
	if err := Render(&out, r); err != nil {
		t.Fatal(err)
	}
	t.Logf("rendered:\n%s", out.String())
	if r.Container.Name != "w" || r.Container.Image != "localhost/orchestrate-workload:latest" || r.Container.ImageID == "" ||
		r.Container.Engine != "Podman" || r.Container.Created.IsZero() {
		t.Errorf("container = %+v", r.Container)
	}
	i := slices.IndexFunc(r.Processes, func(p Process) bool { return len(p.Cmdline) > 0 && p.Cmdline[0] == "/bin/workload" })
	if i < 0 {
		t.Fatalf("no /bin/workload process in %+v", r.Processes)
	}
	p := r.Processes[i]
	if !slices.Contains(p.Cmdline, "-marker") || !slices.Contains(p.Cmdline, marker) || p.Comm != "workload" || p.Exe != "/bin/workload" {
		t.Errorf("workload process = %+v", p)
	}
	local := fmt.Sprintf("127.0.0.1:%d", port)
	if !slices.ContainsFunc(p.Sockets, func(s Socket) bool {
		return s.Local == local && s.State == "LISTEN" && s.Protocol == "TCP" && s.Family == "IPv4"
	}) {
		t.Errorf("no %s LISTEN socket in %+v", local, p.Sockets)
	}
	if p.MemoryDumped < 16<<20 || len(p.Mappings) == 0 {
		t.Errorf("memory dumped %d bytes in %d mappings, want >= 16 MiB", p.MemoryDumped, len(p.Mappings))
	}
	if !slices.ContainsFunc(r.RootfsDiff.Changed, func(d DiffEntry) bool { return d.Path == "data/hello.txt" && d.Type == "file" }) {
		t.Errorf("data/hello.txt not in the rootfs diff %+v", r.RootfsDiff)
	}
	if !slices.Contains(r.RootfsDiff.Deleted, "/bin/ls") {
		t.Errorf("/bin/ls not in the deleted files %+v", r.RootfsDiff.Deleted)
	}
	want := "ORCHESTRATE-MARKER:" + marker
	ms, err := a.Grep(want)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 || ms[0].PID != p.PID || ms[0].Text != want {
		t.Fatalf("Grep(%q) = %+v", want, ms)
	}
	out.Reset()
	RenderMatches(&out, ms)
	t.Logf("matches:\n%s", out.String())
}

// rewriteMember returns the tar raw with one member's content changed.
func rewriteMember(t *testing.T, raw []byte, name string, change func([]byte) []byte) []byte {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(raw))
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	found := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if cleanName(h.Name) == name {
			data = change(data)
			h.Size = int64(len(data))
			found = true
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatalf("no member %s in the archive", name)
	}
	return out.Bytes()
}

func waitFor(t *testing.T, timeout time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", timeout)
		}
		<-tick.C
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func randomString(t *testing.T, n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[randomInt(t, len(alphabet))]
	}
	return string(b)
}

func randomInt(t *testing.T, n int) int {
	v, err := rand.Int(rand.Reader, big.NewInt(int64(n)))
	if err != nil {
		t.Fatal(err)
	}
	return int(v.Int64())
}

// checkCore writes core files from a real checkpoint of the workload and
// loads them into Debian's gdb with an unstripped build of the workload
// (the image's copy is stripped; -s -w drop only symbols and DWARF, so the
// code is at the same addresses): registers and a backtrace with Go
// symbols must appear.
func checkCore(t *testing.T, root, archivePath string) {
	gdb, err := exec.LookPath("gdb")
	if err != nil {
		if os.Getenv("ORCHESTRATE_REQUIRE_HOSTS") == "1" {
			t.Fatalf("gdb not installed (scripts/install-test-tools.sh installs it): %v", err)
		}
		t.Skipf("gdb not installed: %v", err)
	}
	a, err := Open(archivePath, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	dir := t.TempDir()
	paths, err := a.WriteCores(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "workload")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "./cmd/workload")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the workload with symbols: %v\n%s", err, out)
	}
	var core string
	for _, p := range a.Report().Processes {
		if p.Comm == "workload" {
			core = filepath.Join(dir, fmt.Sprintf("core.%d", p.PID))
		}
	}
	if !slices.Contains(paths, core) {
		t.Fatalf("no core for the workload among %v", paths)
	}
	out, err := exec.Command(gdb, "-nx", "-batch", "-ex", "info registers", "-ex", "bt", "-ex", "info threads", bin, core).CombinedOutput()
	t.Logf("gdb:\n%s", out)
	if err != nil {
		t.Fatalf("gdb: %v", err)
	}
	for _, re := range []string{`(?m)^rip\s+0x[0-9a-f]+\s+0x[0-9a-f]+ <[a-z]`, `(?m)^rsp\s+0x[0-9a-f]+`, `(?m)^#0\s+.*(runtime|syscall)`, `(?m)^#[1-9].* in runtime\.`} {
		if !regexp.MustCompile(re).Match(out) {
			t.Errorf("gdb output lacks %s", re)
		}
	}
	if strings.Contains(string(out), "not in executable format") || strings.Contains(string(out), "is not a core dump") {
		t.Errorf("gdb did not load the core")
	}
}
