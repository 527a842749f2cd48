//go:build remote

package podman

import (
	"archive/tar"
	"bytes"
	"io"
	"strings"
	"testing"
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
