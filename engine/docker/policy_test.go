package docker

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"

	"github.com/edgemigrate/orchestrate/engine"
)

func TestRestoreSpecOf(t *testing.T) {
	ordinary := &container.HostConfig{NetworkMode: "host", IpcMode: "private", CgroupnsMode: "host", Runtime: "runc",
		Binds: []string{"vol:/data", "other:/x:ro"}, CapAdd: []string{"CHOWN"}}
	if s := restoreSpecOf(ordinary); !reflect.DeepEqual(s, engine.RestoreSpec{}) {
		t.Fatalf("an ordinary container: %+v", s)
	}
	hc := &container.HostConfig{
		Privileged: true, PidMode: "host", IpcMode: "container:db", UTSMode: "host",
		SecurityOpt: []string{"seccomp:unconfined", "apparmor=unconfined", "label=disable", "no-new-privileges", "seccomp={\"defaultAction\":\"SCMP_ACT_ALLOW\"}"},
		Runtime:     "kata", VolumesFrom: []string{"victim"},
		Binds:  []string{"/:/host", "/etc:/etc2:ro", "named:/n"},
		Mounts: []mount.Mount{{Type: mount.TypeBind, Source: "/var/run/docker.sock", Target: "/s"}, {Type: mount.TypeVolume, Source: "v", Target: "/v"}},
		CapAdd: []string{"SYS_ADMIN", "cap_net_admin", "KILL"},
		Resources: container.Resources{Devices: []container.DeviceMapping{{PathOnHost: "/dev/mem"}},
			DeviceCgroupRules: []string{"c *:* rwm"}, CgroupParent: "/"},
	}
	s := restoreSpecOf(hc)
	want := engine.RestoreSpec{
		Privileged:     true,
		HostNamespaces: []string{"pid", "ipc", "uts"},
		Unconfined: []string{"seccomp=unconfined", "apparmor=unconfined", "label=disable", "a custom seccomp profile",
			"runtime kata", "cgroup parent /", "device cgroup rules c *:* rwm", "volumes from victim"},
		Binds:   []string{"/", "/etc", "/var/run/docker.sock"},
		Devices: []string{"/dev/mem"},
		CapAdd:  []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN"},
	}
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("restoreSpecOf:\n got %+v\nwant %+v", s, want)
	}
	// The zero policy refuses all of it, naming each.
	e := &Engine{}
	err := e.checkSpec("", s, false)
	if !errors.Is(err, engine.ErrPolicy) {
		t.Fatalf("checkSpec: %v", err)
	}
	for _, w := range []string{"privileged", "/var/run/docker.sock", "/dev/mem", "CAP_SYS_ADMIN", "volumes from victim"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%q lacks %q", err, w)
		}
	}
	// Binds are judged where their links lead: /etc/ssl/certs is under
	// /etc/ssl, a link elsewhere is not.
	e.cfg.Policy = engine.RestorePolicy{AllowedBindPaths: []string{"/usr/share"}}
	if err := e.checkSpec("", engine.RestoreSpec{Binds: []string{"/usr/share/zoneinfo"}}, false); err != nil {
		t.Fatalf("allowed bind: %v", err)
	}
	if err := e.checkSpec("", engine.RestoreSpec{Binds: []string{"/usr/share/../../etc"}}, false); !errors.Is(err, engine.ErrPolicy) {
		t.Fatalf("a bind out of the allowed path: %v", err)
	}
	if err := e.checkSpec("", engine.RestoreSpec{Binds: []string{"/usr/share/no-such-dir"}}, false); !errors.Is(err, ErrUnsupported) || errors.Is(err, engine.ErrPolicy) {
		t.Fatalf("a missing bind source: %v", err)
	}
	// A host's own archive (a local reboot) is not judged; its binds must
	// still exist.
	if err := e.checkSpec("", s, true); errors.Is(err, engine.ErrPolicy) {
		t.Fatalf("a local archive was judged: %v", err)
	}
}
