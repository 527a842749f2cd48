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

// RebootMode is how a host keeps its containers' state across a reboot.
type RebootMode string

const (
	// RebootModeDrain live-migrates every movable container to other hosts
	// before the reboot.
	RebootModeDrain RebootMode = "drain"
	// RebootModeLocal checkpoints every movable container to the host's own
	// disk before the reboot and restores them after it: for a one-host
	// site, or a fleet where every host needs the new kernel at once.
	RebootModeLocal RebootMode = "local"
	// RebootModeAuto drains when other hosts have room for everything that
	// must move, and reboots locally otherwise (ChooseRebootMode).
	RebootModeAuto RebootMode = "auto"
)

// ParseRebootMode accepts drain, local or auto.
func ParseRebootMode(s string) (RebootMode, error) {
	switch m := RebootMode(strings.ToLower(strings.TrimSpace(s))); m {
	case RebootModeDrain, RebootModeLocal, RebootModeAuto:
		return m, nil
	}
	return "", fmt.Errorf("reboot mode %q: want drain, local or auto", s)
}

// ChooseRebootMode resolves auto for one sequence: drain when the drain's
// plan found a host for every container that must move (unplaced == 0),
// local otherwise. drain and local are returned as they are.
func ChooseRebootMode(m RebootMode, unplaced int) RebootMode {
	if m != RebootModeAuto {
		return m
	}
	if unplaced == 0 {
		return RebootModeDrain
	}
	return RebootModeLocal
}

// OptedOut reports whether a container's labels keep it out of every
// automatic move and local checkpoint (orchestrate.migrate=false): after a
// reboot it is left to its engine's restart policy.
func OptedOut(labels map[string]string) bool {
	return strings.EqualFold(strings.TrimSpace(labels[LabelMigrate]), "false")
}

// Priority is a container's orchestrate.priority (0 when absent or not an
// integer): higher moves, is checkpointed and is restored first.
func Priority(labels map[string]string) int {
	p, err := strconv.Atoi(strings.TrimSpace(labels[LabelPriority]))
	if err != nil {
		return 0
	}
	return p
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
	// RebootChooseMode: decide, for this sequence, between drain and local
	// (reboot.mode auto asks the leader for a drain plan first).
	RebootChooseMode
	// RebootDrain: cordon the host and migrate its containers away, so
	// their state survives the reboot.
	RebootDrain
	// RebootSave: checkpoint every movable container to the host's own
	// disk, so that it can be restored after the reboot.
	RebootSave
	// RebootNow: run the reboot command.
	RebootNow
	// RebootAbort: the drain or the save cannot finish: bring back what
	// was saved, uncordon, release the lock, and try again later.
	RebootAbort
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
	case RebootChooseMode:
		return "choose-mode"
	case RebootDrain:
		return "drain"
	case RebootSave:
		return "save"
	case RebootNow:
		return "reboot"
	case RebootAbort:
		return "abort"
	case RebootFinish:
		return "finish"
	}
	return "RebootAction(" + strconv.Itoa(int(a)) + ")"
}

// RebootState is what the caller observed about one host when deciding.
// The caller re-observes everything before every decision, so a step that
// failed (a lost leader, a write that timed out) is simply decided again.
type RebootState struct {
	Required   bool // a Checker said so, or an operator asked for it
	Blocked    bool // a Blocker said so
	WindowOpen bool // Window.Contains(now); an operator's request ignores the window
	LockHeld   bool // this host holds a reboot slot (kept across the reboot)
	// Mode is the mode chosen for this sequence (drain or local); empty
	// until chosen, and auto is never a chosen mode.
	Mode RebootMode
	// Drained: cordoned, no movable container runs here, and no migration
	// from here is in flight.
	Drained bool
	// Saved: every movable container is checkpointed to the local disk.
	Saved bool
	// Stuck: the drain, the save or the reboot command was tried and
	// cannot finish now.
	Stuck bool
}

// NextRebootAction is the reboot sequence as a pure function:
// acquire lock (only inside the window and when not blocked) → choose the
// mode → drain or save → reboot → after the reboot, when the check is
// negative, finish (uncordon, release). Once the lock is held the sequence
// proceeds even if the window closes, because a half-drained host helps
// nobody; a blocker that appears before the drain or save ends makes the
// host wait with the lock held. A drain, save or reboot command that
// cannot finish (Stuck) aborts: the caller undoes it and retries later.
func NextRebootAction(s RebootState) (RebootAction, string) {
	ready := s.Mode == RebootModeDrain && s.Drained || s.Mode == RebootModeLocal && s.Saved
	switch {
	case !s.Required && s.LockHeld:
		return RebootFinish, "reboot no longer required: uncordon and release the lock"
	case !s.Required:
		return RebootIdle, "no reboot required"
	case s.Stuck:
		return RebootAbort, "the " + string(s.Mode) + " reboot cannot go on: undo and retry later"
	case !s.LockHeld && !s.WindowOpen:
		return RebootWait, "outside the maintenance window"
	case s.Blocked && !ready:
		return RebootWait, "blocked"
	case !s.LockHeld:
		return RebootAcquireLock, "reboot required"
	case s.Mode != RebootModeDrain && s.Mode != RebootModeLocal:
		return RebootChooseMode, "lock held: choose between drain and local"
	case ready:
		if s.Mode == RebootModeLocal {
			return RebootNow, "containers saved to disk: reboot"
		}
		return RebootNow, "drained: reboot"
	case s.Mode == RebootModeLocal:
		return RebootSave, "lock held: checkpoint containers to the local disk"
	default:
		return RebootDrain, "lock held: migrate containers away"
	}
}

// CheckerFunc adapts a function to Checker (fakes, ad-hoc checks).
type CheckerFunc func(ctx context.Context) (bool, string, error)

// RebootRequired implements Checker.
func (f CheckerFunc) RebootRequired(ctx context.Context) (bool, string, error) { return f(ctx) }

// BlockerFunc adapts a function to Blocker.
type BlockerFunc func(ctx context.Context) (bool, string, error)

// IsBlocked implements Blocker.
func (f BlockerFunc) IsBlocked(ctx context.Context) (bool, string, error) { return f(ctx) }
