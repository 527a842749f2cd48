package archive

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func readBytes(t testing.TB, b []byte) (*Archive, error) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.TempDir = t.TempDir()
	return Read(bytes.NewReader(b), cfg)
}

func TestSyntheticArchive(t *testing.T) {
	raw := synthTar(t)
	path := filepath.Join(t.TempDir(), "synth.tar")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	open := func(t *testing.T) (*Archive, error) { return Open(path, DefaultConfig()) }
	for name, get := range map[string]func(t *testing.T) (*Archive, error){
		"open-in-place": open,
		"stream-tar":    func(t *testing.T) (*Archive, error) { return readBytes(t, raw) },
		"stream-gzip":   func(t *testing.T) (*Archive, error) { return readBytes(t, gzipOf(t, raw)) },
		"stream-zstd":   func(t *testing.T) (*Archive, error) { return readBytes(t, zstdOf(t, raw)) },
	} {
		t.Run(name, func(t *testing.T) {
			a, err := get(t)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			checkSynthReport(t, a.Report())
			checkSynthGrep(t, a)
			if err := a.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := a.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
		})
	}
}

func checkSynthReport(t *testing.T, r *Report) {
	t.Helper()
	c := r.Container
	if c.Name != "synth" || c.ID != "0123456789abcdef0123" || c.Image != "localhost/synth:latest" ||
		c.ImageID != "feedfacecafe0000" || c.Engine != "Podman" || c.Runtime != "runc" || c.Hostname != "synthhost" {
		t.Errorf("container = %+v", c)
	}
	if c.Created.IsZero() || r.Checkpoint.CheckpointedAt.IsZero() {
		t.Errorf("times not set: created %v checkpointed %v", c.Created, r.Checkpoint.CheckpointedAt)
	}
	if len(c.Networks) != 1 || c.Networks[0].Addresses[0] != "10.88.0.5/16" || c.Networks[0].MAC != "aa:bb:cc:dd:ee:ff" {
		t.Errorf("networks = %+v", c.Networks)
	}
	ck := r.Checkpoint
	if ck.CRIUVersion != "4.2.1" || ck.Kernel != "6.18.0" || ck.ImageVersion != 2 || ck.PageSize != 4096 {
		t.Errorf("checkpoint = %+v", ck)
	}
	if ck.Stats == nil || ck.Stats.FrozenTime.Milliseconds() != 2 || ck.Stats.PagesWritten != 262 {
		t.Errorf("stats = %+v", ck.Stats)
	}
	if len(r.Processes) != 2 {
		t.Fatalf("processes = %+v", r.Processes)
	}
	p := r.Processes[0]
	if p.PID != 1 || p.Comm != "app" || !slices.Equal(p.Cmdline, synthArgv) || p.Exe != "/bin/app" || p.Cwd != "/srv" ||
		p.MemoryDumped != 262*4096 || len(p.Threads) != 2 || p.State != "alive" || !slices.Equal(p.Env, synthEnv) {
		t.Errorf("process 1 = %+v", p)
	}
	if !slices.Equal(c.Env, []string{"PATH=/bin", "MODE=spec"}) || len(c.Mounts) != 1 || c.Mounts[0].Destination != "/data" || c.Mounts[0].Source != "/srv/data" {
		t.Errorf("container env %q, mounts %+v", c.Env, c.Mounts)
	}
	wantFiles := []File{{0, "REG", "/dev/null"}, {1, "PIPE", "pipe:[777]"}, {3, "INETSK", "socket:[555]"}, {4, "INETSK", "socket:[556]"},
		{5, "UNIXSK", "socket:[900] /run/app.sock"}, {6, "UNIXSK", "socket:[901] @abstract"}, {7, "PACKETSK", "PACKETSK[19]"}, {8, "NETLINKSK", "NETLINKSK[20]"}}
	if !slices.Equal(p.Files, wantFiles) {
		t.Errorf("files = %+v, want %+v", p.Files, wantFiles)
	}
	wantSk := []Socket{
		{FD: 3, Inode: 555, Family: "IPv4", Type: "STREAM", Protocol: "TCP", State: "LISTEN", Local: "0.0.0.0:8080", Remote: "0.0.0.0:0"},
		{FD: 4, Inode: 556, Family: "IPv6", Type: "STREAM", Protocol: "TCP", State: "ESTABLISHED", Local: "[::1]:5000", Remote: "127.0.0.1:40000", InQueue: 10, OutQueue: 20},
		{FD: 5, Inode: 900, Family: "UNIX", Type: "STREAM", State: "ESTABLISHED", Local: "/run/app.sock", Remote: "socket:[901] @abstract", InQueue: 8, InPackets: 2},
		{FD: 6, Inode: 901, Family: "UNIX", Type: "DGRAM", State: "UNCONN", Local: "@abstract"},
		{FD: 7, Inode: 19, Family: "PACKET", Type: "RAW", Protocol: "ETH_P_ALL", State: "UNCONN", Local: "ifindex 2"},
		{FD: 8, Inode: 902, Family: "NETLINK", Type: "RAW", Protocol: "ROUTE", State: "UNCONN", Local: "portid 1234"},
	}
	if !slices.Equal(p.Sockets, wantSk) {
		t.Errorf("sockets = %+v, want %+v", p.Sockets, wantSk)
	}
	names := map[string]Mapping{}
	for _, m := range p.Mappings {
		names[m.Name] = m
	}
	if m := names["/bin/app"]; m.Prot != "r-xp" || m.Size != 4096 || m.Dumped != 0 {
		t.Errorf("text mapping = %+v", m)
	}
	if m := names["[heap]"]; m.Dumped != 260*4096 {
		t.Errorf("heap mapping = %+v", m)
	}
	if _, ok := names["[stack]"]; !ok {
		t.Errorf("no stack mapping in %+v", p.Mappings)
	}
	q := r.Processes[1]
	if q.PID != 7 || q.PPID != 1 || !slices.Equal(q.Cmdline, []string{"sleeper"}) || q.State != "zombie (exit code 3)" {
		t.Errorf("process 7 = %+v", q)
	}
	if !slices.ContainsFunc(r.Warnings, func(s string) bool { return strings.Contains(s, "pid 7: command line") }) {
		t.Errorf("no warning about pid 7's command line: %q", r.Warnings)
	}
	d := r.RootfsDiff
	if len(d.Changed) != 2 || d.Changed[1] != (DiffEntry{Path: "data/hello.txt", Type: "file", Size: 6, Mode: "0644"}) ||
		!slices.Equal(d.Deleted, []string{"/etc/motd"}) {
		t.Errorf("rootfs diff = %+v", d)
	}
	if len(r.Volumes) != 1 || r.Volumes[0].Name != "cache" {
		t.Errorf("volumes = %+v", r.Volumes)
	}

	var out bytes.Buffer
	if err := RenderWith(&out, r, AllSections); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"synth (0123456789ab)", "[1] /bin/app -listen :8080", "[7] sleeper", "[3] IPv4 STREAM TCP LISTEN 0.0.0.0:8080",
		"ESTABLISHED [::1]:5000 -> 127.0.0.1:40000, queued in 10 B, out 20 B", "+ data/hello.txt", "- /etc/motd", "CRIU: 4.2.1", "[heap]",
		"SECRET_TOKEN=hunter2", "MODE=spec", "/data (bind) from /srv/data [rbind,rw]", "zombie (exit code 3)",
		"[5] UNIX STREAM - ESTABLISHED /run/app.sock -> socket:[901] @abstract, queued in 8 B (2 messages)", "[8] NETLINK RAW ROUTE UNCONN portid 1234",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("rendering lacks %q:\n%s", want, out.String())
		}
	}
	js, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(js, []byte(`"start":"0x400000"`)) {
		t.Errorf("JSON does not write addresses as hex strings: %s", js)
	}
	var back Report
	if err := json.Unmarshal(js, &back); err != nil || back.Processes[0].Mappings[0].Start != r.Processes[0].Mappings[0].Start {
		t.Errorf("JSON round trip: %v", err)
	}
}

func checkSynthGrep(t *testing.T, a *Archive) {
	t.Helper()
	ms, err := a.Grep(synthMarker)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].PID != 1 || ms[0].Address != Addr(synthMarkAddr) || ms[0].Text != synthMarker || !strings.Contains(ms[0].Context, synthMarker) {
		t.Fatalf("Grep(%q) = %+v", synthMarker, ms)
	}
	ms, err = a.Grep(synthBigMark)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Address != Addr(synthBigAddr) || ms[0].Mapping != "[heap]" {
		t.Fatalf("Grep across the chunk edge = %+v", ms)
	}
	ms, err = a.GrepRegexp(regexp.MustCompile(`[A-Z]+-EDGE-[A-Z]+`))
	if err != nil || len(ms) != 1 || ms[0].Text != synthBigMark {
		t.Fatalf("GrepRegexp = %+v, %v", ms, err)
	}
	if ms, err := a.Grep("not in there"); err != nil || len(ms) != 0 {
		t.Fatalf("Grep(absent) = %+v, %v", ms, err)
	}
	// Shared memory is searched and attributed to the process mapping it.
	ms, err = a.Grep(synthShmMarker)
	if err != nil || len(ms) != 1 || ms[0].Where != WhereShared || ms[0].PID != 1 || ms[0].Address != Addr(synthShmAddr+synthShmOff) || ms[0].Mapping != "[anon-shared]" {
		t.Fatalf("Grep(shared) = %+v, %v", ms, err)
	}
	// So is /dev/shm.
	ms, err = a.Grep(synthDevShm)
	if err != nil || len(ms) != 1 || ms[0].Where != WhereFile || ms[0].Mapping != "/dev/shm/blob" || ms[0].Address != 10 {
		t.Fatalf("Grep(/dev/shm) = %+v, %v", ms, err)
	}
	// --pid: pid 7 has no memory; --context N.
	res, err := a.Search(Query{Pattern: synthMarker, PIDs: []uint32{7}})
	if err != nil || len(res.Matches) != 0 {
		t.Fatalf("Search(pid 7) = %+v, %v", res, err)
	}
	res, err = a.Search(Query{Pattern: synthMarker, PIDs: []uint32{1}, Context: 3})
	if err != nil || len(res.Matches) != 1 || res.Matches[0].Context != "..."+synthMarker+"..." || res.Truncated {
		t.Fatalf("Search(pid 1, context 3) = %+v, %v", res, err)
	}
	// The environment is in memory too, and a cut is said.
	res, err = a.Search(Query{Regexp: regexp.MustCompile(`SECRET`), MaxMatches: 2})
	if err != nil || len(res.Matches) != 2 || !res.Truncated {
		t.Fatalf("Search(max 2) = %+v, %v", res, err)
	}
	var out bytes.Buffer
	RenderMatches(&out, ms)
}

// TestOpenFIFO: Open falls back to streaming for a path that is not a
// regular file (a pipe cannot be read in place).
func TestOpenFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	raw := synthTar(t)
	done := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err == nil {
			_, err = f.Write(raw)
			f.Close()
		}
		done <- err
	}()
	a, err := Open(path, Config{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ms, err := a.Grep(synthMarker); err != nil || len(ms) != 1 {
		t.Fatalf("Grep = %+v, %v", ms, err)
	}
}

func TestGrepMatchLimit(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxMatches = 2
	a, err := Read(bytes.NewReader(synthTar(t)), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ms, err := a.GrepRegexp(regexp.MustCompile(`[A-Z]`))
	if !errors.Is(err, ErrMatchLimit) || len(ms) != 2 {
		t.Fatalf("got %d matches, %v; want 2, ErrMatchLimit", len(ms), err)
	}
}

// TestBadArchives: every kind of damage gives an error that wraps a
// sentinel and names the file involved.
func TestBadArchives(t *testing.T) {
	good := synthTar(t)
	pstreeImg := image("PSTREE")
	badMagic := append([]byte{}, image("MM")...)
	oversized := image("PSTREE")
	oversized = append(oversized, 0xff, 0xff, 0xff, 0x7f, 1, 2, 3)
	for _, tc := range []struct {
		name  string
		data  []byte
		want  error
		where string
	}{
		{"empty input", nil, ErrNotCheckpoint, "checkpoint archive"},
		{"not a tar", []byte(strings.Repeat("garbage!", 200)), ErrCorrupt, "checkpoint archive"},
		{"truncated in a header", good[:700], ErrTruncated, ""},
		{"truncated in pages", good[:len(good)/2], ErrTruncated, ""},
		{"truncated gzip", func() []byte { z := gzipOf(t, good); return z[:len(z)/2] }(), ErrTruncated, ""},
		{"corrupt zstd", func() []byte { z := zstdOf(t, good); z[len(z)/2] ^= 0xff; z[len(z)/2+1] ^= 0xff; return z }(), ErrCorrupt, ""},
		{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0, 1, 2}, ErrCorrupt, "xz"},
		{"no config.dump", tarOf(t, withMember(t, "config.dump", nil)), ErrNotCheckpoint, "config.dump"},
		{"no pstree", tarOf(t, withMember(t, "checkpoint/pstree.img", nil)), ErrNotCheckpoint, "pstree.img"},
		{"config.dump not JSON", tarOf(t, withMember(t, "config.dump", []byte("{"))), ErrCorrupt, "config.dump"},
		{"deleted.files not JSON", tarOf(t, withMember(t, "deleted.files", []byte("[1"))), ErrCorrupt, "deleted.files"},
		{"empty pstree", tarOf(t, withMember(t, "checkpoint/pstree.img", pstreeImg)), ErrCorrupt, "pstree.img"},
		{"pstree entry too long", tarOf(t, withMember(t, "checkpoint/pstree.img", oversized)), ErrCorrupt, "pstree.img"},
		{"pstree cut", tarOf(t, withMember(t, "checkpoint/pstree.img", synthImage(t, "checkpoint/pstree.img")[:13])), ErrTruncated, "pstree.img"},
		{"core is an mm", tarOf(t, withMember(t, "checkpoint/core-1.img", badMagic)), ErrCorrupt, "core-1.img"},
		{"mm protobuf garbage", tarOf(t, withMember(t, "checkpoint/mm-1.img", image("MM", []byte{0xff, 0xff, 0xff}))), ErrCorrupt, "mm-1.img"},
		{"pages short", tarOf(t, withMember(t, "checkpoint/pages-1.img", make([]byte, 4096))), ErrTruncated, "pages-1.img"},
		{"pages missing", tarOf(t, withMember(t, "checkpoint/pages-1.img", nil)), ErrTruncated, "pages-1.img"},
		{"pagemap one byte", tarOf(t, withMember(t, "checkpoint/pagemap-1.img", []byte{1})), ErrTruncated, "pagemap-1.img"},
		{"files.img cut", tarOf(t, withMember(t, "checkpoint/files.img", func() []byte { b := synthImage(t, "checkpoint/files.img"); return b[:len(b)-3] }())), ErrTruncated, "files.img"},
		{"rootfs diff not a tar", tarOf(t, withMember(t, "rootfs-diff.tar", []byte(strings.Repeat("x", 1024)))), ErrCorrupt, "rootfs-diff.tar"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := readBytes(t, tc.data)
			if err == nil {
				a.Close()
				t.Fatal("no error")
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("error %q does not wrap %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.where) {
				t.Errorf("error %q does not name %q", err, tc.where)
			}
		})
	}
}

func synthImage(t testing.TB, name string) []byte {
	for _, m := range synthMembers(t) {
		if m.name == name {
			return m.data
		}
	}
	t.Fatalf("no member %s", name)
	return nil
}

// TestOpenTruncatedFile: an uncompressed archive on disk whose pages run
// past its end is caught before any read.
func TestOpenTruncatedFile(t *testing.T) {
	good := synthTar(t)
	path := filepath.Join(t.TempDir(), "cut.tar")
	if err := os.WriteFile(path, good[:len(good)-3000], 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := Open(path, DefaultConfig())
	if err == nil {
		a.Close()
		t.Fatal("no error")
	}
	if !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), path) {
		t.Fatalf("error %q: want ErrTruncated naming %s", err, path)
	}
}

// FuzzRead feeds damaged archives to Read (and Grep). Its seeds are the
// synthetic archive, compressed and not, and single CRIU images; the fuzzer
// mutates them. As a normal test it runs the seeds.
func FuzzRead(f *testing.F) {
	small := synthSmall(f)
	good := tarOf(f, small)
	f.Add(good)
	f.Add(gzipOf(f, good))
	f.Add(zstdOf(f, good))
	f.Add(good[:len(good)/3])
	for i, m := range small {
		if strings.HasSuffix(m.name, ".img") && !strings.Contains(m.name, "pages") {
			// Each image with three stray bytes: a truncated entry.
			ms := slices.Clone(small)
			ms[i].data = append(m.data[:len(m.data):len(m.data)], 0, 0, 0)
			f.Add(tarOf(f, ms))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := DefaultConfig()
		cfg.TempDir = t.TempDir()
		cfg.MaxFileSize = 1 << 20
		cfg.MaxPagesSize = 1 << 20
		a, err := Read(bytes.NewReader(data), cfg)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrNotCheckpoint) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		defer a.Close()
		RenderWith(&bytes.Buffer{}, a.Report(), AllSections)
		a.Grep("SECRET")
	})
}

// FuzzImage mutates one CRIU image at a time inside an otherwise good
// archive, which reaches the image decoders far more often than FuzzRead.
func FuzzImage(f *testing.F) {
	for i, m := range synthSmall(f) {
		if strings.HasSuffix(m.name, ".img") && !strings.Contains(m.name, "pages") || m.name == "stats-dump" {
			f.Add(uint8(i), m.data)
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		ms := synthSmall(t)
		i := int(which) % len(ms)
		if ms[i].dir {
			return
		}
		ms[i].data = data
		cfg := DefaultConfig()
		cfg.TempDir = t.TempDir()
		a, err := Read(bytes.NewReader(tarOf(t, ms)), cfg)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrNotCheckpoint) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		defer a.Close()
		RenderWith(&bytes.Buffer{}, a.Report(), AllSections)
		a.Grep("SECRET")
	})
}

func TestDumpMemory(t *testing.T) {
	a, err := readBytes(t, synthTar(t))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var raw, maps bytes.Buffer
	n, err := a.DumpMemory(1, &raw, &maps)
	if err != nil {
		t.Fatal(err)
	}
	if n != 263*4096 || int64(raw.Len()) != n {
		t.Fatalf("dumped %d bytes (%d written), want 263 pages", n, raw.Len())
	}
	lines := strings.Split(strings.TrimSpace(maps.String()), "\n")
	want := []string{
		"10000-12000 rw-p 00000000 ",
		"20000-21000 rw-s 00002000 [anon-shared]",
		"7f0000000000-7f0000104000 rw-p 00003000 [heap]",
	}
	if !slices.Equal(lines, want) {
		t.Fatalf("maps:\n%s\nwant:\n%s", maps.String(), strings.Join(want, "\n"))
	}
	if i := bytes.Index(raw.Bytes(), []byte(synthShmMarker)); i != 0x2000+synthShmOff {
		t.Fatalf("shared marker at %d in the raw dump", i)
	}
	if _, err := a.DumpMemory(99, &raw, &maps); err == nil {
		t.Fatal("no error for a pid not in the checkpoint")
	}
}

// TestCompare diffs the synthetic checkpoint against a later one in which
// a heap page changed, a page appeared, the environment and a socket
// changed, a file appeared in the rootfs and a process went away; --grep
// limited to changed pages finds only what is new.
func TestCompare(t *testing.T) {
	before := synthMembers(t)
	after := synthMembers(t)
	for i, m := range after {
		switch m.name {
		case "checkpoint/pages-1.img":
			data := slices.Clone(m.data)
			// Heap page 5 gets a new secret (the heap run starts after the
			// two pages of run 1).
			copy(data[(2+5)*4096+100:], "NEW-SECRET")
			after[i].data = data
		case "spec.dump":
			after[i].data = bytes.Replace(m.data, []byte("MODE=spec"), []byte("MODE=later"), 1)
		case "rootfs-diff.tar":
			after[i].data = bytes.Replace(m.data, []byte("hello\n"), []byte("HELLO\n"), 1)
		}
	}
	// pid 7 gone: keep only pid 1's pstree entry.
	for i, m := range after {
		if m.name == "checkpoint/pstree.img" {
			raw, err := imageEntries(synthImage(t, m.name), "PSTREE")
			if err != nil {
				t.Fatal(err)
			}
			after[i].data = image("PSTREE", raw[0])
		}
	}
	a, err := readBytes(t, tarOf(t, before))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := readBytes(t, tarOf(t, after))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	d, err := Compare(a, b)
	if err != nil {
		t.Fatal(err)
	}
	if d.PagesChanged != 1 || d.PagesAdded != 0 || d.PagesRemoved != 0 {
		t.Fatalf("pages changed %d added %d removed %d, want 1 0 0; memory %+v", d.PagesChanged, d.PagesAdded, d.PagesRemoved, d.Memory)
	}
	if len(d.Memory) != 1 || d.Memory[0].Mapping != "[heap]" || d.Memory[0].Changed != 1 {
		t.Fatalf("memory diff %+v", d.Memory)
	}
	if len(d.Processes) != 1 || d.Processes[0].PID != 7 || d.Processes[0].Kind != "removed" {
		t.Fatalf("process diff %+v", d.Processes)
	}
	// The old secret is everywhere in B; only the new one is on a changed page.
	res, err := b.Search(Query{Regexp: regexp.MustCompile(`[A-Z]+-SECRET|SECRET-[A-Z]+`), Pages: d.ChangedPages})
	if err != nil || len(res.Matches) != 1 || res.Matches[0].Text != "NEW-SECRET" {
		t.Fatalf("search of changed pages = %+v, %v", res, err)
	}
	var out bytes.Buffer
	if err := RenderDiff(&out, d); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Memory: 1 pages changed", "[heap]: 1 changed", "[7] sleeper (removed)",
		"~ spec env MODE spec -> later", "~ data/hello.txt file 0644 6 B sha256:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("diff rendering lacks %q:\n%s", want, out.String())
		}
	}
}
