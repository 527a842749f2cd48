//go:build remote

package podman

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/edgemigrate/orchestrate/engine"
)

// The fixtures are the config.dump, spec.dump (trimmed to what the policy
// reads) and inspect data of three real containers of Podman 4.3.1:
//
//	pn: podman run --network none IMAGE
//	pp: podman run --network none --privileged IMAGE
//	pv: podman run --network none -v /tmp/s1bind:/data -v named1:/nv --cap-add SYS_ADMIN
//	    --cap-add NET_ADMIN --device /dev/fuse --security-opt seccomp=unconfined IMAGE
func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/policy/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSpecFromDumpsAndInspectAgree(t *testing.T) {
	want := map[string]engine.RestoreSpec{
		"pn": {},
		"pp": {Privileged: true},
		"pv": {Unconfined: []string{"seccomp=unconfined"}, Binds: []string{"/tmp/s1bind"}, Devices: []string{"/dev/fuse"},
			CapAdd: []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}},
	}
	for c, w := range want {
		s, err := specFromDumps(fixture(t, c+".config.dump"), fixture(t, c+".spec.dump"))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(s, w) {
			t.Errorf("%s from its archive:\n got %+v\nwant %+v", c, s, w)
		}
		var d inspectSecurity
		if err := json.Unmarshal(fixture(t, c+".inspect.json"), &d); err != nil {
			t.Fatal(err)
		}
		if s := specFromInspect(d); !reflect.DeepEqual(s, w) {
			t.Errorf("%s from inspect (the preflight):\n got %+v\nwant %+v", c, s, w)
		}
	}
}

// Archives a member could forge: every way spec.dump can reach the host is
// judged.
func TestSpecFromForgedDumps(t *testing.T) {
	base := func() map[string]any {
		var m map[string]any
		if err := json.Unmarshal(fixture(t, "pn.spec.dump"), &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	cfg := fixture(t, "pn.config.dump")
	linux := func(m map[string]any) map[string]any { return m["linux"].(map[string]any) }
	for _, c := range []struct {
		name   string
		forge  func(m map[string]any)
		expect string
	}{
		{"a hook runs a command on the host", func(m map[string]any) {
			m["hooks"] = map[string]any{"prestart": []any{map[string]any{"path": "/bin/sh", "args": []any{"sh", "-c", "id > /tmp/pwned"}}}}
		}, "OCI hooks"},
		{"CRIU config from the annotations", func(m map[string]any) {
			m["annotations"].(map[string]any)["org.criu.config"] = "/tmp/evil.conf"
		}, "CRIU configuration file"},
		{"a cgroup rule allowing /dev/mem", func(m map[string]any) {
			linux(m)["resources"] = map[string]any{"devices": []any{map[string]any{"allow": true, "type": "c", "major": 1, "minor": 1, "access": "rwm"}}}
		}, "device cgroup rule allowing c 1:1"},
		{"writable /sys", func(m map[string]any) {
			for _, x := range m["mounts"].([]any) {
				if mm := x.(map[string]any); mm["type"] == "sysfs" {
					mm["options"] = []any{"rw"}
				}
			}
		}, "writable /sys"},
		{"a disk mounted", func(m map[string]any) {
			m["mounts"] = append(m["mounts"].([]any), map[string]any{"destination": "/d", "type": "ext4", "source": "/dev/vda"})
		}, "ext4 mount of /dev/vda"},
		{"/ bound where /etc/hosts goes", func(m map[string]any) {
			for _, x := range m["mounts"].([]any) {
				if mm := x.(map[string]any); mm["destination"] == "/etc/hosts" {
					mm["source"] = "/"
				}
			}
		}, "host-path binds of /"},
		{"another container's userdata", func(m map[string]any) {
			m["mounts"] = append(m["mounts"].([]any), map[string]any{"destination": "/x", "type": "bind",
				"source": "/var/lib/containers/storage/overlay-containers/0000/userdata/../../../../../../etc"})
		}, "overlay-containers/0000/userdata/../"},
		{"the host's PID namespace", func(m map[string]any) {
			var keep []any
			for _, ns := range linux(m)["namespaces"].([]any) {
				if ns.(map[string]any)["type"] != "pid" {
					keep = append(keep, ns)
				}
			}
			linux(m)["namespaces"] = keep
		}, "shared host namespaces (pid)"},
		{"init's mount namespace joined", func(m map[string]any) {
			linux(m)["namespaces"] = append(linux(m)["namespaces"].([]any), map[string]any{"type": "mount", "path": "/proc/1/ns/mnt"})
		}, "mount (/proc/1/ns/mnt)"},
		{"no seccomp", func(m map[string]any) { delete(linux(m), "seccomp") }, "seccomp=unconfined"},
		{"/proc unmasked", func(m map[string]any) { delete(linux(m), "maskedPaths") }, "systempaths=unconfined"},
		{"all capabilities", func(m map[string]any) {
			m["process"].(map[string]any)["capabilities"].(map[string]any)["effective"] = []any{"CAP_SYS_MODULE"}
		}, "CAP_SYS_MODULE"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := base()
			c.forge(m)
			sp, _ := json.Marshal(m)
			s, err := specFromDumps(cfg, sp)
			if err != nil {
				t.Fatal(err)
			}
			err = engine.RestorePolicy{}.Check(s)
			if !errors.Is(err, engine.ErrPolicy) || !strings.Contains(err.Error(), c.expect) {
				t.Fatalf("policy: %v, want a refusal naming %q", err, c.expect)
			}
		})
	}
}

// archive builds a tar with the given config.dump and spec.dump followed by
// some checkpoint bytes.
func archive(t *testing.T, cfg, sp []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, b []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	add("devshm-checkpoint.tar", make([]byte, 10000))
	if cfg != nil {
		add("config.dump", cfg)
	}
	if sp != nil {
		add("spec.dump", sp)
	}
	add("checkpoint/pages-1.img", bytes.Repeat([]byte("p"), 3<<20))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// The reader the restore gives Podman passes an allowed archive through
// unchanged, and fails a refused or unjudgeable one before its end (Podman
// imports only at the end).
func TestCheckArchive(t *testing.T) {
	e := &Engine{}
	ok := archive(t, fixture(t, "pn.config.dump"), fixture(t, "pn.spec.dump"))
	got, err := io.ReadAll(e.checkArchive(bytes.NewReader(ok)))
	if err != nil || !bytes.Equal(got, ok) {
		t.Fatalf("an allowed archive: %d of %d bytes, %v", len(got), len(ok), err)
	}
	for name, a := range map[string][]byte{
		"privileged": archive(t, fixture(t, "pp.config.dump"), fixture(t, "pp.spec.dump")),
		"no dumps":   archive(t, nil, nil),
		"no spec":    archive(t, fixture(t, "pn.config.dump"), nil),
		"garbage":    bytes.Repeat([]byte{0xff}, 1<<20),
	} {
		got, err := io.ReadAll(e.checkArchive(bytes.NewReader(a)))
		if err == nil {
			t.Errorf("%s: read %d bytes without an error", name, len(got))
			continue
		}
		if name == "privileged" && (!errors.Is(err, engine.ErrPolicy) || len(got) >= len(a)) {
			t.Errorf("privileged: %v after %d of %d bytes", err, len(got), len(a))
		}
		if name != "privileged" && !errors.Is(err, engine.ErrBadArchive) {
			t.Errorf("%s: %v, want ErrBadArchive", name, err)
		}
	}
	// The host's policy can allow it.
	e.cfg.Policy.AllowPrivileged = true
	pp := archive(t, fixture(t, "pp.config.dump"), fixture(t, "pp.spec.dump"))
	if got, err := io.ReadAll(e.checkArchive(bytes.NewReader(pp))); err != nil || len(got) != len(pp) {
		t.Fatalf("privileged with allow_privileged: %v", err)
	}
}
