package archive

import (
	"archive/tar"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// writeBomb writes a zstd-compressed tar of n CRIU images of size bytes
// each, all zeros: a few hundred KiB that expand to n*size.
func writeBomb(t *testing.T, path string, n int, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zw, err := zstd.NewWriter(f, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(zw)
	zeros := make([]byte, 1<<20)
	add := func(name string, size int64) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o600, Size: size}); err != nil {
			t.Fatal(err)
		}
		for left := size; left > 0; {
			k := min(left, int64(len(zeros)))
			if _, err := tw.Write(zeros[:k]); err != nil {
				t.Fatal(err)
			}
			left -= k
		}
	}
	add("config.dump", 2)
	for i := range n {
		add(fmt.Sprintf("checkpoint/core-%d.img", i+1), size)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestZstdBomb: 768 MiB of CRIU images compressed to almost nothing are
// refused once the analysis would hold more than its memory cap, and the
// process reading them stays under that cap (measured as the child
// process's peak RSS, which includes the Go runtime's own few MiB).
func TestZstdBomb(t *testing.T) {
	if os.Getenv("ARCHIVE_BOMB_FILE") != "" {
		t.Skip("the child's own run")
	}
	path := filepath.Join(t.TempDir(), "bomb.tar.zst")
	writeBomb(t, path, 24, 32<<20)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("bomb: %d bytes compressed, %d MiB uncompressed", fi.Size(), 24*32)

	const capMiB = 64
	cmd := exec.Command(os.Args[0], "-test.run=^TestZstdBombChild$", "-test.v")
	cmd.Env = append(os.Environ(), "ARCHIVE_BOMB_FILE="+path, "ARCHIVE_BOMB_CAP="+strconv.Itoa(capMiB<<20), "GOGC=100")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "refused:") || !strings.Contains(string(out), "memory cap") {
		t.Fatalf("the bomb was not refused at the memory cap:\n%s", out)
	}
	rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss << 10 // KiB on Linux
	t.Logf("child peak RSS %d MiB with a cap of %d MiB", rss>>20, capMiB)
	// The cap bounds what the analysis holds; the runtime and the test
	// binary come on top (about 10 MiB).
	if rss > capMiB<<20+16<<20 {
		t.Fatalf("peak RSS %d MiB exceeds the cap of %d MiB (plus GC headroom and runtime)", rss>>20, capMiB)
	}
}

// TestZstdBombChild is TestZstdBomb's child process.
func TestZstdBombChild(t *testing.T) {
	path := os.Getenv("ARCHIVE_BOMB_FILE")
	if path == "" {
		t.Skip("run by TestZstdBomb")
	}
	capBytes, _ := strconv.ParseInt(os.Getenv("ARCHIVE_BOMB_CAP"), 10, 64)
	cfg := DefaultConfig()
	cfg.MaxMemory = capBytes
	cfg.TempDir = t.TempDir()
	a, err := Open(path, cfg)
	if err == nil {
		a.Close()
		t.Fatal("the bomb was read")
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("error %v does not wrap ErrCorrupt", err)
	}
	fmt.Printf("refused: %v\n", err)
}
