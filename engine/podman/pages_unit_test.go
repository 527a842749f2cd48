//go:build remote

package podman

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestScanTCPTable(t *testing.T) {
	// /proc/net/tcp: local 127.0.0.1:40000 (0x9C40) -> 127.0.0.1:27000 (0x6978).
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:9C40 0100007F:6978 01 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 20 4 30 10 -1
   1: 0100007F:9C41 0100007F:6978 01 00000000:00000000 00:00000000 00000000  1000        0 12346 1 0000000000000000 20 4 30 10 -1
`
	cases := []struct {
		inode    string
		from, to int
		want     bool
	}{
		{"12345", 40000, 27000, true},
		{"12345", 40001, 27000, false}, // another port
		{"99999", 40000, 27000, false}, // not the process's socket
		{"12346", 40001, 27000, false}, // uid 1000
	}
	for _, c := range cases {
		got := scanTCPTable(strings.NewReader(table), map[string]bool{c.inode: true}, c.from, c.to)
		if got != c.want {
			t.Errorf("inode %s %d->%d: %v, want %v", c.inode, c.from, c.to, got, c.want)
		}
	}
}

// After a page-server dump, page images in the archive can only be
// leftovers of an earlier checkpoint: they are dropped, everything else
// passes unchanged.
func TestCopyWithoutPages(t *testing.T) {
	var in bytes.Buffer
	tw := tar.NewWriter(&in)
	files := map[string]string{
		"config.dump": "{}", "checkpoint/inventory.img": "inv", "checkpoint/pagemap-1.img": "old",
		"checkpoint/pages-1.img": "old pages", "checkpoint/pagemap-shmem-5.img": "old", "rootfs-diff.tar": "diff",
		"volumes/pages-1.img": "a volume file that happens to be named so",
	}
	for _, name := range []string{"config.dump", "checkpoint/inventory.img", "checkpoint/pagemap-1.img", "checkpoint/pages-1.img",
		"checkpoint/pagemap-shmem-5.img", "rootfs-diff.tar", "volumes/pages-1.img"} {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(files[name]))})
		tw.Write([]byte(files[name]))
	}
	tw.Close()
	var out bytes.Buffer
	n, err := copyWithoutPages(&out, bytes.NewReader(in.Bytes()))
	if err != nil || n != int64(out.Len()) {
		t.Fatalf("copy: %d %v", n, err)
	}
	tr := tar.NewReader(&out)
	var got []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		if string(b) != files[h.Name] {
			t.Errorf("%s: %q", h.Name, b)
		}
		got = append(got, h.Name)
	}
	if strings.Join(got, ",") != "config.dump,checkpoint/inventory.img,rootfs-diff.tar,volumes/pages-1.img" {
		t.Fatalf("kept %v", got)
	}
}

// Only a dump of this run that CRIU finished counts as an interrupted
// checkpoint that Resume may restore.
func TestInterruptedDump(t *testing.T) {
	started := time.Now().Add(-time.Minute)
	for _, c := range []struct {
		name      string
		log       string
		inventory bool
		since     time.Time
		ok        bool
	}{
		{"finished", "(00.1) Writing stats\n(00.2) Dumping finished successfully\n\n", true, started, true},
		{"failed", "(00.1) Error (criu/cr-dump.c:1975): Dumping FAILED.\n", true, started, false},
		{"cut short", "(00.1) Dumping pages\n", true, started, false},
		{"no inventory", "(00.2) Dumping finished successfully\n", false, started, false},
		{"from before the last start", "(00.2) Dumping finished successfully\n", true, time.Now().Add(time.Minute), false},
		{"no log", "", true, started, false},
	} {
		dir := t.TempDir()
		if c.log != "" {
			if err := os.WriteFile(filepath.Join(dir, "dump.log"), []byte(c.log), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.MkdirAll(filepath.Join(dir, "checkpoint"), 0o700); err != nil {
			t.Fatal(err)
		}
		if c.inventory {
			if err := os.WriteFile(filepath.Join(dir, "checkpoint", "inventory.img"), []byte{1}, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := interruptedDump(dir, c.since); (err == nil) != c.ok {
			t.Errorf("%s: %v, want ok=%v", c.name, err, c.ok)
		}
	}
}
