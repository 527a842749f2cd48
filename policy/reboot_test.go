package policy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCompareVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"6.1.0-18-amd64", "6.1.0-9-amd64", 1},
		{"6.1.0-9-amd64", "6.1.0-18-amd64", -1},
		{"6.1.0-18-amd64", "6.1.0-18-amd64", 0},
		{"5.15.0-91-generic", "5.15.0-100-generic", -1},
		{"6.10.1", "6.9.12", 1},
		{"4.2.1", "4.2", 1},
		{"4.2", "4.2.1", -1},
		{"5.10.1", "5.10.rc1", 1},
		{"3.19", "4.0", -1},
		{"6.5.6-300.fc39.x86_64", "6.5.12-300.fc39.x86_64", -1},
	} {
		if got := CompareVersions(tc.a, tc.b); got != tc.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

// kernelTree makes a fake /boot and /lib/modules.
func kernelTree(t *testing.T, boot, modules []string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	b, m := filepath.Join(dir, "boot"), filepath.Join(dir, "modules")
	for _, d := range []string{b, m} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range boot {
		if err := os.WriteFile(filepath.Join(b, v), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range modules {
		if err := os.Mkdir(filepath.Join(m, v), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return b, m
}

func TestRebootCheckerKernel(t *testing.T) {
	for _, tc := range []struct {
		name          string
		running       string
		boot, modules []string
		want          bool
		reasonHas     string
	}{
		{"same kernel", "6.1.0-18-amd64", []string{"vmlinuz-6.1.0-18-amd64", "config-6.1.0-18-amd64"}, []string{"6.1.0-18-amd64"}, false, ""},
		{"newer in boot (numeric, not lexical)", "6.1.0-9-amd64", []string{"vmlinuz-6.1.0-9-amd64", "vmlinuz-6.1.0-18-amd64"}, nil, true, "6.1.0-18-amd64"},
		{"newer in modules only", "5.15.0-91-generic", nil, []string{"5.15.0-91-generic", "5.15.0-100-generic"}, true, "5.15.0-100-generic"},
		{"only older installed", "6.1.0-18-amd64", []string{"vmlinuz-6.1.0-17-amd64", "vmlinuz-6.1.0-18-amd64"}, nil, false, ""},
		{"other flavour ignored", "6.1.0-18-amd64", []string{"vmlinuz-6.1.0-20-cloud-amd64"}, nil, false, ""},
		{"rescue image ignored", "6.5.6-300.fc39.x86_64", []string{"vmlinuz-0-rescue-0123abcd", "vmlinuz-6.5.6-300.fc39.x86_64"}, nil, false, ""},
		{"newest of several", "6.1.0-9-amd64", []string{"vmlinuz-6.1.0-10-amd64", "vmlinuz-6.1.0-12-amd64"}, []string{"6.1.0-11-amd64"}, true, "6.1.0-12-amd64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, m := kernelTree(t, tc.boot, tc.modules)
			c := &RebootChecker{Kernel: true, BootDir: b, ModulesDir: m,
				RunningKernel: func() (string, error) { return tc.running + "\n", nil }}
			got, reason, err := c.RebootRequired(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want || !strings.Contains(reason, tc.reasonHas) {
				t.Fatalf("RebootRequired = %v %q, want %v containing %q", got, reason, tc.want, tc.reasonHas)
			}
		})
	}
}

func TestRebootCheckerKernelErrors(t *testing.T) {
	dir := t.TempDir()
	c := &RebootChecker{Kernel: true, BootDir: filepath.Join(dir, "absent"), ModulesDir: filepath.Join(dir, "absent2"),
		RunningKernel: func() (string, error) { return "6.1.0", nil }}
	if got, _, err := c.RebootRequired(context.Background()); err != nil || got {
		t.Fatalf("missing dirs: got %v, %v; want false, nil", got, err)
	}
	boom := errors.New("uname failed")
	c.RunningKernel = func() (string, error) { return "", boom }
	if _, _, err := c.RebootRequired(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("uname failure: err = %v, want %v", err, boom)
	}
	notDir := filepath.Join(dir, "file")
	os.WriteFile(notDir, nil, 0o644)
	c = &RebootChecker{Kernel: true, BootDir: notDir, RunningKernel: func() (string, error) { return "6.1.0", nil }}
	if _, _, err := c.RebootRequired(context.Background()); err == nil {
		t.Fatal("unreadable boot dir: want an error")
	}
}

func TestRebootCheckerSentinels(t *testing.T) {
	dir := t.TempDir()
	present := filepath.Join(dir, "reboot-required")
	os.WriteFile(present, nil, 0o644)
	absent := filepath.Join(dir, "nope")
	for _, tc := range []struct {
		name    string
		file    string
		cmd     []string
		want    bool
		wantErr bool
	}{
		{name: "nothing configured"},
		{name: "file present", file: present, want: true},
		{name: "file absent", file: absent},
		{name: "command exit 0", file: absent, cmd: []string{"sh", "-c", "exit 0"}, want: true},
		{name: "command exit 1", cmd: []string{"sh", "-c", "exit 1"}},
		{name: "command exit 7", cmd: []string{"sh", "-c", "exit 7"}},
		{name: "command missing", cmd: []string{filepath.Join(dir, "no-such-binary")}, wantErr: true},
		{name: "command killed", cmd: []string{"sh", "-c", "kill -9 $$"}, wantErr: true},
		{name: "file wins before a failing command", file: present, cmd: []string{filepath.Join(dir, "no-such-binary")}, want: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &RebootChecker{SentinelFile: tc.file, SentinelCommand: tc.cmd}
			got, reason, err := c.RebootRequired(context.Background())
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("RebootRequired = %v %q %v; want %v, err %v", got, reason, err, tc.want, tc.wantErr)
			}
			if got && reason == "" {
				t.Fatal("positive without a reason")
			}
		})
	}
}

func TestCommandRebooter(t *testing.T) {
	if err := (CommandRebooter{Command: []string{"true"}}).Reboot(context.Background()); err != nil {
		t.Fatal(err)
	}
	err := (CommandRebooter{Command: []string{"sh", "-c", "echo nope >&2; exit 3"}}).Reboot(context.Background())
	if err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("err = %v, want the command's output", err)
	}
	if err := (CommandRebooter{}).Reboot(context.Background()); err == nil {
		t.Fatal("empty command: want an error")
	}
}

func TestNextRebootAction(t *testing.T) {
	const d, l = RebootModeDrain, RebootModeLocal
	for _, tc := range []struct {
		s    RebootState
		want RebootAction
	}{
		{RebootState{}, RebootIdle},
		{RebootState{WindowOpen: true}, RebootIdle},
		{RebootState{LockHeld: true, Mode: d, Drained: true}, RebootFinish}, // back after the reboot
		{RebootState{LockHeld: true, Mode: l, Saved: true}, RebootFinish},
		{RebootState{LockHeld: true}, RebootFinish},
		{RebootState{Required: true}, RebootWait},
		{RebootState{Required: true, WindowOpen: true, Blocked: true}, RebootWait},
		{RebootState{Required: true, WindowOpen: true}, RebootAcquireLock},
		{RebootState{Required: true, WindowOpen: true, Mode: d}, RebootAcquireLock}, // a remembered mode does not replace the lock
		{RebootState{Required: true, WindowOpen: true, LockHeld: true}, RebootChooseMode},
		{RebootState{Required: true, LockHeld: true, Mode: RebootModeAuto}, RebootChooseMode}, // auto is never a chosen mode
		{RebootState{Required: true, WindowOpen: true, LockHeld: true, Mode: d}, RebootDrain},
		{RebootState{Required: true, LockHeld: true, Mode: d}, RebootDrain}, // window closed mid-way: carry on
		{RebootState{Required: true, LockHeld: true, Mode: l}, RebootSave},
		{RebootState{Required: true, LockHeld: true, Mode: l, Drained: true}, RebootSave}, // drained means nothing to a local reboot
		{RebootState{Required: true, LockHeld: true, Mode: d, Saved: true}, RebootDrain},
		{RebootState{Required: true, WindowOpen: true, LockHeld: true, Blocked: true, Mode: d}, RebootWait},
		{RebootState{Required: true, WindowOpen: true, LockHeld: true, Blocked: true, Mode: l}, RebootWait},
		{RebootState{Required: true, WindowOpen: true, LockHeld: true, Mode: d, Drained: true}, RebootNow},
		{RebootState{Required: true, LockHeld: true, Mode: d, Drained: true, Blocked: true}, RebootNow},
		{RebootState{Required: true, LockHeld: true, Mode: l, Saved: true}, RebootNow},
		{RebootState{Required: true, LockHeld: true, Mode: l, Saved: true, Blocked: true}, RebootNow},
		{RebootState{Required: true, LockHeld: true, Mode: d, Stuck: true}, RebootAbort},
		{RebootState{Required: true, LockHeld: true, Mode: l, Stuck: true}, RebootAbort},
		{RebootState{Required: true, LockHeld: true, Mode: l, Stuck: true, Blocked: true}, RebootAbort},
		{RebootState{Required: true, LockHeld: true, Mode: l, Saved: true, Stuck: true}, RebootAbort}, // the reboot command failed
		{RebootState{Required: true, Mode: d, Stuck: true}, RebootAbort},                              // the lock was lost meanwhile
		{RebootState{LockHeld: true, Mode: l, Stuck: true}, RebootFinish},
	} {
		got, reason := NextRebootAction(tc.s)
		if got != tc.want || reason == "" {
			t.Errorf("NextRebootAction(%+v) = %v %q, want %v", tc.s, got, reason, tc.want)
		}
	}
}

func TestChooseRebootMode(t *testing.T) {
	for _, tc := range []struct {
		mode     RebootMode
		unplaced int
		want     RebootMode
	}{
		{RebootModeAuto, 0, RebootModeDrain},
		{RebootModeAuto, 1, RebootModeLocal},
		{RebootModeDrain, 3, RebootModeDrain},
		{RebootModeLocal, 0, RebootModeLocal},
	} {
		if got := ChooseRebootMode(tc.mode, tc.unplaced); got != tc.want {
			t.Errorf("ChooseRebootMode(%s, %d) = %s, want %s", tc.mode, tc.unplaced, got, tc.want)
		}
	}
	for in, want := range map[string]RebootMode{"drain": RebootModeDrain, " Local": RebootModeLocal, "AUTO": RebootModeAuto} {
		if got, err := ParseRebootMode(in); err != nil || got != want {
			t.Errorf("ParseRebootMode(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseRebootMode("kexec"); err == nil {
		t.Error("ParseRebootMode(kexec): want an error")
	}
}

func TestPriorityAndOptOut(t *testing.T) {
	if Priority(map[string]string{LabelPriority: " 7 "}) != 7 || Priority(map[string]string{LabelPriority: "high"}) != 0 || Priority(nil) != 0 {
		t.Error("Priority")
	}
	if !OptedOut(map[string]string{LabelMigrate: "False"}) || OptedOut(map[string]string{LabelMigrate: "true"}) || OptedOut(nil) {
		t.Error("OptedOut")
	}
}
