package docker

import (
	"archive/tar"
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/docker/docker/api/types/filters"
)

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func writeJSON(tw *tar.Writer, name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(b)), ModTime: time.Now(), Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		return err
	}
	_, err = tw.Write(b)
	return err
}

func jsonDecode(r io.Reader, v any) error { return json.NewDecoder(r).Decode(v) }

const xattrPrefix = "SCHILY.xattr."

// addTree writes the tree at dir under prefix: regular files, directories,
// symbolic links, hard links as copies, devices (overlay whiteouts are 0:0
// character devices) and FIFOs, with owners, modes, times and (withXattrs)
// extended attributes, which carry overlay's opaque-directory marks. It
// returns the number of entries written. A missing dir writes nothing.
func addTree(tw *tar.Writer, dir, prefix string, withXattrs bool) (int, error) {
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	n := 0
	buf := make([]byte, 1<<20)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		var link string
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		if fi.Mode()&fs.ModeSocket != 0 {
			return nil // sockets are recreated by their owners
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name = prefix + "/" + filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		hdr.Format = tar.FormatPAX
		if withXattrs {
			for k, v := range xattrs(p) {
				// Overlay's marks of the lower inode a file was copied
				// up from mean nothing on another host.
				if keep, err := xattrDecision(k, v); !keep && err == nil {
					continue
				}
				if hdr.PAXRecords == nil {
					hdr.PAXRecords = map[string]string{}
				}
				hdr.PAXRecords[xattrPrefix+k] = v
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		n++
		if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.CopyBuffer(tw, io.LimitReader(f, hdr.Size), buf)
			f.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
	return n, err
}

func xattrs(p string) map[string]string {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz <= 0 {
		return nil
	}
	names := make([]byte, sz)
	sz, err = unix.Llistxattr(p, names)
	if err != nil {
		return nil
	}
	out := map[string]string{}
	for _, name := range strings.Split(string(names[:sz]), "\x00") {
		if name == "" {
			continue
		}
		vsz, err := unix.Lgetxattr(p, name, nil)
		if err != nil || vsz < 0 {
			continue
		}
		v := make([]byte, vsz)
		vsz, err = unix.Lgetxattr(p, name, v)
		if err != nil {
			continue
		}
		out[name] = string(v[:vsz])
	}
	return out
}

func volumeFilter(name string) filters.Args { return filters.NewArgs(filters.Arg("volume", name)) }

// loadedImage reads the JSON message stream of an image load and returns
// the loaded image's name (or ID).
func loadedImage(r io.Reader) (string, error) {
	var name string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var msg struct {
			Stream string `json:"stream"`
			Error  string `json:"error"`
		}
		if json.Unmarshal(sc.Bytes(), &msg) != nil {
			continue
		}
		if msg.Error != "" {
			return "", errors.New(msg.Error)
		}
		s := strings.TrimSpace(msg.Stream)
		if v, ok := strings.CutPrefix(s, "Loaded image: "); ok && name == "" {
			name = v
		} else if v, ok := strings.CutPrefix(s, "Loaded image ID: "); ok && name == "" {
			name = v
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	if name == "" {
		return "", errors.New("the daemon loaded nothing")
	}
	return name, nil
}
