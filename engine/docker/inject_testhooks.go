//go:build testhooks

package docker

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"
)

// injectEntries plays a malicious source for the attack tests: it appends
// the tar entries described in the JSON file named by
// ORCHESTRATE_FAULT_DOCKER_INJECT (when the variable is set and the file
// exists) to every checkpoint archive, after the writable layer, and
// returns how many it wrote. Only binaries built with the testhooks tag
// have it (inject.go is the production twin).
//
//	[{"name": "rootfs/x", "type": "symlink", "link": "/etc"},
//	 {"name": "rootfs/x/", "type": "dir", "mode": 1005},
//	 {"name": "rootfs/mem", "type": "char", "major": 1, "minor": 1},
//	 {"name": "rootfs/f", "type": "file", "body": "x", "xattrs": {"trusted.evil": "1"}}]
func injectEntries(tw *tar.Writer) (int, error) {
	path := os.Getenv("ORCHESTRATE_FAULT_DOCKER_INJECT")
	if path == "" {
		return 0, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var entries []struct {
		Name, Type, Link, Body string
		Mode, Major, Minor     int64
		Xattrs                 map[string]string
	}
	if err := json.Unmarshal(b, &entries); err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	types := map[string]byte{"file": tar.TypeReg, "dir": tar.TypeDir, "symlink": tar.TypeSymlink,
		"char": tar.TypeChar, "block": tar.TypeBlock, "fifo": tar.TypeFifo, "link": tar.TypeLink}
	for _, e := range entries {
		typ, ok := types[e.Type]
		if !ok {
			return 0, fmt.Errorf("%s: entry type %q", path, e.Type)
		}
		hdr := &tar.Header{Name: e.Name, Typeflag: typ, Linkname: e.Link, Mode: e.Mode, Size: int64(len(e.Body)),
			Devmajor: e.Major, Devminor: e.Minor, ModTime: time.Now(), Format: tar.FormatPAX}
		if hdr.Mode == 0 {
			hdr.Mode = 0o644
		}
		if typ != tar.TypeReg {
			hdr.Size = 0
		}
		for k, v := range e.Xattrs {
			if hdr.PAXRecords == nil {
				hdr.PAXRecords = map[string]string{}
			}
			hdr.PAXRecords[xattrPrefix+k] = v
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return 0, err
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.Body)); err != nil {
				return 0, err
			}
		}
	}
	return len(entries), nil
}
