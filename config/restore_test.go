package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/edgemigrate/orchestrate/engine"
)

func TestRestorePolicyKeys(t *testing.T) {
	c, err := Load(writeFile(t, base), nil)
	if err != nil {
		t.Fatal(err)
	}
	if p := c.RestorePolicy(); p.AllowPrivileged || len(p.AllowedBindPaths)+len(p.AllowedDevices)+len(p.AllowedCapabilities) != 0 {
		t.Fatalf("default restore policy allows something: %+v", p)
	}
	c, err = Load(writeFile(t, base+`restore:
  allow_privileged: true
  allowed_bind_paths: [/srv/data, /var/log]
  allowed_devices: [/dev/fuse]
  allowed_capabilities: [net_admin, CAP_SYS_PTRACE]
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := engine.RestorePolicy{AllowPrivileged: true, AllowedBindPaths: []string{"/srv/data", "/var/log"},
		AllowedDevices: []string{"/dev/fuse"}, AllowedCapabilities: []string{"net_admin", "CAP_SYS_PTRACE"}}
	if got := c.RestorePolicy(); !reflect.DeepEqual(got, want) {
		t.Fatalf("policy %+v, want %+v", got, want)
	}
	t.Setenv("ORCHESTRATE_RESTORE_ALLOWED_BIND_PATHS", "srv/data,/ok")
	t.Setenv("ORCHESTRATE_RESTORE_ALLOWED_DEVICES", "/etc/passwd")
	t.Setenv("ORCHESTRATE_RESTORE_ALLOWED_CAPABILITIES", "NET ADMIN")
	_, err = Load(writeFile(t, base), nil)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad restore keys: %v", err)
	}
	for _, w := range []string{`restore.allowed_bind_paths: "srv/data"`, `restore.allowed_devices: "/etc/passwd"`, `restore.allowed_capabilities: "NET ADMIN"`} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%q lacks %q", err, w)
		}
	}
}
