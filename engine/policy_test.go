package engine

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestRestorePolicy(t *testing.T) {
	var zero RestorePolicy
	open := RestorePolicy{AllowPrivileged: true, AllowedBindPaths: []string{"/srv/data/", "/var/log"},
		AllowedDevices: []string{"/dev/fuse"}, AllowedCapabilities: []string{"net_admin", "CAP_SYS_PTRACE"}}
	for _, c := range []struct {
		name   string
		p      RestorePolicy
		s      RestoreSpec
		refuse []string // substrings of the error; none: allowed
	}{
		{"ordinary container", zero, RestoreSpec{CapAdd: []string{"CHOWN", "CAP_KILL"}}, nil},
		{"privileged", zero, RestoreSpec{Privileged: true}, []string{"a privileged container", "restore.allow_privileged"}},
		{"host pid", zero, RestoreSpec{HostNamespaces: []string{"pid"}}, []string{"shared host namespaces (pid)"}},
		{"seccomp off", zero, RestoreSpec{Unconfined: []string{"seccomp=unconfined"}}, []string{"seccomp=unconfined"}},
		{"bind of /", zero, RestoreSpec{Binds: []string{"/"}}, []string{"host-path binds of /", "restore.allowed_bind_paths"}},
		{"device", zero, RestoreSpec{Devices: []string{"/dev/mem"}}, []string{"devices /dev/mem", "restore.allowed_devices"}},
		{"capability", zero, RestoreSpec{CapAdd: []string{"sys_admin"}}, []string{"capabilities CAP_SYS_ADMIN", "restore.allowed_capabilities"}},
		{"everything at once lists everything", zero, RestoreSpec{Privileged: true, Binds: []string{"/etc"}, Devices: []string{"/dev/sda"}, CapAdd: []string{"ALL"}},
			[]string{"privileged", "/etc", "/dev/sda", "ALL"}},
		{"allowed by an open policy", open, RestoreSpec{Privileged: true, HostNamespaces: []string{"ipc"}, Binds: []string{"/srv/data", "/srv/data/x/y", "/var/log/app"},
			Devices: []string{"/dev/fuse"}, CapAdd: []string{"NET_ADMIN", "sys_ptrace"}}, nil},
		{"prefix is not a parent", open, RestoreSpec{Binds: []string{"/srv/database", "/var/logs"}}, []string{"/srv/database, /var/logs"}},
		{"dot-dot out of an allowed path", open, RestoreSpec{Binds: []string{"/srv/data/../../etc"}}, []string{"/srv/data/../../etc"}},
		{"relative bind", open, RestoreSpec{Binds: []string{"srv/data"}}, []string{"srv/data"}},
		{"other device", open, RestoreSpec{Devices: []string{"/dev/fuse2"}}, []string{"/dev/fuse2"}},
		{"other capability", open, RestoreSpec{CapAdd: []string{"SYS_ADMIN"}}, []string{"CAP_SYS_ADMIN"}},
		{"ALL allowed", RestorePolicy{AllowedCapabilities: []string{"all"}}, RestoreSpec{CapAdd: []string{"SYS_ADMIN", "ALL"}}, nil},
		{"bind of / allowed", RestorePolicy{AllowedBindPaths: []string{"/"}}, RestoreSpec{Binds: []string{"/etc"}}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.p.Check(c.s)
			if len(c.refuse) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrPolicy) {
				t.Fatalf("Check = %v, want ErrPolicy", err)
			}
			for _, w := range c.refuse {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q lacks %q", err, w)
				}
			}
		})
	}
}

func TestExtraCapabilities(t *testing.T) {
	got := ExtraCapabilities([]string{"chown", "SYS_ADMIN", "CAP_NET_ADMIN", "cap_sys_admin", "", "KILL"})
	if want := []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("ExtraCapabilities = %v, want %v", got, want)
	}
}
