package policy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// RebootChecker detects a pending reboot on this host from, in order: a
// sentinel file, a sentinel command, and an installed kernel newer than the
// running one. The first positive check wins. Any check that cannot be
// carried out returns an error at once (it is never read as "no reboot").
type RebootChecker struct {
	// SentinelFile: a reboot is needed while it exists. Empty skips.
	SentinelFile string
	// SentinelCommand: argv run without a shell. Exit 0 means needed, any
	// other exit status means not needed; failing to start it is an error.
	SentinelCommand []string
	// Kernel enables the installed-versus-running kernel comparison.
	Kernel bool
	// RunningKernel returns `uname -r`; nil reads /proc/sys/kernel/osrelease.
	RunningKernel func() (string, error)
	// BootDir (default /boot) is searched for vmlinuz-VERSION and ModulesDir
	// (default /lib/modules) for VERSION directories. A missing directory is
	// not an error (containers and some distributions have none).
	BootDir, ModulesDir string
}

var _ Checker = (*RebootChecker)(nil)

// NewRebootChecker builds the checker for cfg, with the kernel check on.
func NewRebootChecker(cfg RebootConfig) *RebootChecker {
	return &RebootChecker{SentinelFile: cfg.SentinelFile, SentinelCommand: cfg.SentinelCommand, Kernel: true}
}

// RebootRequired implements Checker.
func (c *RebootChecker) RebootRequired(ctx context.Context) (bool, string, error) {
	if c.SentinelFile != "" {
		_, err := os.Stat(c.SentinelFile)
		switch {
		case err == nil:
			return true, "sentinel file " + c.SentinelFile + " exists", nil
		case !errors.Is(err, fs.ErrNotExist):
			return false, "", fmt.Errorf("reboot sentinel file: %w", err)
		}
	}
	if len(c.SentinelCommand) > 0 {
		err := exec.CommandContext(ctx, c.SentinelCommand[0], c.SentinelCommand[1:]...).Run()
		var exit *exec.ExitError
		switch {
		case err == nil:
			return true, fmt.Sprintf("sentinel command %q exited 0", c.SentinelCommand), nil
		case errors.As(err, &exit) && exit.Exited():
			// Non-zero exit: no reboot needed.
		default: // could not start, or killed by a signal (ctx, OOM...)
			return false, "", fmt.Errorf("reboot sentinel command %q: %w", c.SentinelCommand, err)
		}
	}
	if c.Kernel {
		return c.newerKernel()
	}
	return false, "", nil
}

func (c *RebootChecker) newerKernel() (bool, string, error) {
	running, err := c.running()
	if err != nil {
		return false, "", fmt.Errorf("running kernel: %w", err)
	}
	installed, err := c.installedKernels()
	if err != nil {
		return false, "", err
	}
	flavour := kernelFlavour(running)
	newest := ""
	for _, v := range installed {
		if kernelFlavour(v) != flavour || CompareVersions(v, running) <= 0 {
			continue
		}
		if newest == "" || CompareVersions(v, newest) > 0 {
			newest = v
		}
	}
	if newest == "" {
		return false, "", nil
	}
	return true, fmt.Sprintf("kernel %s installed, %s running", newest, running), nil
}

func (c *RebootChecker) running() (string, error) {
	if c.RunningKernel != nil {
		v, err := c.RunningKernel()
		return strings.TrimSpace(v), err
	}
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b)), err
}

func (c *RebootChecker) installedKernels() ([]string, error) {
	boot, mods := c.BootDir, c.ModulesDir
	if boot == "" {
		boot = "/boot"
	}
	if mods == "" {
		mods = "/lib/modules"
	}
	var out []string
	for _, dir := range []struct {
		path, prefix string
	}{{boot, "vmlinuz-"}, {mods, ""}} {
		entries, err := os.ReadDir(dir.path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("installed kernels: %w", err)
		}
		for _, e := range entries {
			name := e.Name()
			if dir.prefix != "" {
				if !strings.HasPrefix(name, dir.prefix) {
					continue
				}
				name = strings.TrimPrefix(name, dir.prefix)
			} else if !e.IsDir() {
				continue
			}
			if name != "" && name[0] >= '0' && name[0] <= '9' {
				out = append(out, name)
			}
		}
	}
	return out, nil
}

// kernelFlavour is the part of a kernel release from its first segment
// holding a letter: "6.1.0-18-amd64" → "amd64", "5.15.0-91-generic" →
// "generic". Only kernels of the running flavour are compared, so an
// installed cloud or rt kernel does not count as an upgrade.
func kernelFlavour(v string) string {
	segs := strings.FieldsFunc(v, isVersionSep)
	for i, s := range segs {
		if strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
			return strings.Join(segs[i:], "-")
		}
	}
	return ""
}

func isVersionSep(r rune) bool { return r == '.' || r == '-' || r == '+' || r == '_' || r == '~' }

// CompareVersions compares dotted/dashed version strings segment by segment:
// numeric segments numerically ("6.1.0-18" > "6.1.0-9"), other segments as
// text, a numeric segment above a text one ("5.10.1" > "5.10.rc1"), and a
// longer version above its prefix ("4.2.1" > "4.2"). It returns -1, 0 or +1.
// Also used for CRIU versions.
func CompareVersions(a, b string) int {
	as, bs := strings.FieldsFunc(a, isVersionSep), strings.FieldsFunc(b, isVersionSep)
	for i := 0; i < len(as) && i < len(bs); i++ {
		x, y := as[i], bs[i]
		xn, xerr := strconv.ParseUint(x, 10, 64)
		yn, yerr := strconv.ParseUint(y, 10, 64)
		switch {
		case xerr == nil && yerr == nil:
			if xn != yn {
				if xn < yn {
					return -1
				}
				return 1
			}
		case xerr == nil:
			return 1
		case yerr == nil:
			return -1
		default:
			if c := strings.Compare(x, y); c != 0 {
				return c
			}
		}
	}
	switch {
	case len(as) < len(bs):
		return -1
	case len(as) > len(bs):
		return 1
	}
	return 0
}

// CommandRebooter runs Command (argv, no shell) to reboot the host.
type CommandRebooter struct{ Command []string }

var _ Rebooter = CommandRebooter{}

// Reboot implements Rebooter; the command's output is included in the error.
func (r CommandRebooter) Reboot(ctx context.Context) error {
	if len(r.Command) == 0 {
		return errors.New("reboot: no command configured")
	}
	out, err := exec.CommandContext(ctx, r.Command[0], r.Command[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("reboot %q: %w: %s", r.Command, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// RebootAction is the next step of the reboot sequence for one host.
type RebootAction int

const (
	// RebootIdle: nothing to do.
	RebootIdle RebootAction = iota
	// RebootWait: a reboot is needed but must wait (window, blocker, lock).
	RebootWait
	// RebootAcquireLock: take one of the reboot.concurrency slots.
	RebootAcquireLock
	// RebootDrain: cordon the host and migrate its containers away, so
	// their state survives the reboot.
	RebootDrain
	// RebootNow: run the reboot command.
	RebootNow
	// RebootFinish: the host is back and no longer needs a reboot: uncordon
	// and release the lock.
	RebootFinish
)

func (a RebootAction) String() string {
	switch a {
	case RebootIdle:
		return "idle"
	case RebootWait:
		return "wait"
	case RebootAcquireLock:
		return "acquire-lock"
	case RebootDrain:
		return "drain"
	case RebootNow:
		return "reboot"
	case RebootFinish:
		return "finish"
	}
	return "RebootAction(" + strconv.Itoa(int(a)) + ")"
}

// RebootState is what the caller knows about one host when deciding.
type RebootState struct {
	Required   bool // a Checker said so
	Blocked    bool // a Blocker said so
	WindowOpen bool // Window.Contains(now)
	LockHeld   bool // this host holds a reboot slot (kept across the reboot)
	Drained    bool // cordoned and every container migrated away
}

// NextRebootAction is the reboot sequence as a pure function:
// acquire lock (only inside the window and when not blocked) → drain →
// reboot → after the reboot, when the check is negative, finish (uncordon,
// release). Once the lock is held the drain and reboot proceed even if the
// window closes, because a half-drained host helps nobody; a blocker that
// appears before the drain ends makes the host wait with the lock held.
func NextRebootAction(s RebootState) (RebootAction, string) {
	switch {
	case !s.Required && s.LockHeld:
		return RebootFinish, "reboot no longer required: uncordon and release the lock"
	case !s.Required:
		return RebootIdle, "no reboot required"
	case !s.LockHeld && !s.WindowOpen:
		return RebootWait, "outside the maintenance window"
	case s.Blocked && !s.Drained:
		return RebootWait, "blocked"
	case !s.LockHeld:
		return RebootAcquireLock, "reboot required"
	case !s.Drained:
		return RebootDrain, "lock held: migrate containers away"
	default:
		return RebootNow, "drained: reboot"
	}
}
