package policy

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// RebootConfig holds the reboot.* settings. package config maps keys to
// fields; policy never reads configuration itself.
type RebootConfig struct {
	// Enabled (reboot.enabled) turns automatic reboots on.
	Enabled bool
	// SentinelFile (reboot.sentinel_file): a reboot is needed while this file
	// exists. Empty disables the check.
	SentinelFile string
	// SentinelCommand (reboot.sentinel_command): argv run without a shell;
	// exit 0 means a reboot is needed. Empty disables the check.
	SentinelCommand []string
	// Command (reboot.command): argv run without a shell to reboot the host.
	Command []string
	// Concurrency (reboot.concurrency): how many hosts may be rebooting (lock
	// held) at once across the cluster.
	Concurrency int
	// Window (reboot.window): when reboots may start, in ParseWindow syntax,
	// e.g. "Mon-Fri 02:00-05:00 Europe/Berlin". Empty means any time.
	Window string
	// Mode (reboot.mode): drain, local or auto (see RebootMode).
	Mode RebootMode
	// Return (reboot.return): after a drain and reboot, containers that
	// left live-migrate back once the host is up and uncordoned, if their
	// new host still has them and placement allows it.
	Return bool
	// Timeout (reboot.timeout): how long after the reboot command the host
	// may take to go down. After that the reboot counts as failed: locally
	// saved containers are restored here and the host is uncordoned.
	Timeout time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultRebootConfig: disabled, Debian/Ubuntu's sentinel file, systemctl
// reboot, one host at a time, any time of day, by draining, 10 minutes for
// the host to go down.
func DefaultRebootConfig() RebootConfig {
	return RebootConfig{
		SentinelFile: "/var/run/reboot-required",
		Command:      []string{"systemctl", "reboot"},
		Concurrency:  1,
		Mode:         RebootModeDrain,
		Timeout:      10 * time.Minute,
	}
}

// Validate reports the first bad setting, naming the key, the value and
// what is expected.
func (c RebootConfig) Validate() error {
	if len(c.Command) == 0 || strings.TrimSpace(c.Command[0]) == "" {
		return fmt.Errorf("reboot.command: got %q, want a command such as \"systemctl reboot\"", c.Command)
	}
	if len(c.SentinelCommand) > 0 && strings.TrimSpace(c.SentinelCommand[0]) == "" {
		return fmt.Errorf("reboot.sentinel_command: got %q, want empty or a command whose exit status 0 means a reboot is needed", c.SentinelCommand)
	}
	if c.Concurrency < 1 {
		return fmt.Errorf("reboot.concurrency: got %d, want an integer >= 1", c.Concurrency)
	}
	if _, err := ParseRebootMode(string(c.Mode)); err != nil {
		return fmt.Errorf("reboot.mode: got %q, want drain, local or auto", c.Mode)
	}
	if c.Timeout < time.Second {
		return fmt.Errorf("reboot.timeout: got %v, want a duration of at least 1s, e.g. 10m", c.Timeout)
	}
	if c.Window != "" {
		if _, err := ParseWindow(c.Window); err != nil {
			return fmt.Errorf("reboot.window: got %q, want e.g. \"Mon-Fri 02:00-05:00 Europe/Berlin\": %w", c.Window, err)
		}
	}
	return nil
}

// RebalanceConfig holds the rebalance.* settings.
type RebalanceConfig struct {
	// Schedule (rebalance.schedule): a standard 5-field cron spec or a
	// descriptor (@hourly, @every 1h), optionally prefixed "CRON_TZ=Zone ".
	// Empty disables scheduled rebalancing.
	Schedule string
	// Threshold (rebalance.threshold): the memory spread (max-min of
	// used/capacity across eligible hosts, a fraction in (0,1]) above which
	// a rebalance moves containers. See Spread.
	Threshold float64
	// MaxMoves (rebalance.max_moves): at most this many moves per rebalance.
	MaxMoves int
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultRebalanceConfig: no schedule (opt in), rebalance when hosts differ
// by more than 20 percentage points of memory, at most 3 moves at a time.
func DefaultRebalanceConfig() RebalanceConfig {
	return RebalanceConfig{Threshold: 0.2, MaxMoves: 3}
}

// Validate reports the first bad setting, naming the key, the value and
// what is expected.
func (c RebalanceConfig) Validate() error {
	if c.Schedule != "" {
		if _, err := cron.ParseStandard(c.Schedule); err != nil {
			return fmt.Errorf("rebalance.schedule: got %q, want a 5-field cron spec or a descriptor such as \"@every 1h\": %w", c.Schedule, err)
		}
	}
	if !(c.Threshold > 0 && c.Threshold <= 1) { // also rejects NaN
		return fmt.Errorf("rebalance.threshold: got %v, want a fraction in (0, 1], e.g. 0.2", c.Threshold)
	}
	if c.MaxMoves < 1 {
		return fmt.Errorf("rebalance.max_moves: got %d, want an integer >= 1", c.MaxMoves)
	}
	return nil
}
