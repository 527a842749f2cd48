package reboot

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgemigrate/orchestrate/policy"
)

// Sequence phases.
const (
	// PhaseActive: a reboot is wanted; the lock, the mode, the drain or
	// the save are under way.
	PhaseActive = "active"
	// PhaseRebooting: the reboot command ran. The next start of the agent
	// follows it (or the reboot did not happen): it restores and finishes.
	PhaseRebooting = "rebooting"
	// PhaseBack: the agent started after the reboot command; what is left
	// is to restore (local), uncordon, release the lock and, after a
	// drain, bring containers back.
	PhaseBack = "back"
	// PhaseDone: the sequence ended (Outcome says how). The record stays
	// until the next sequence, so that a reason the reboot did not clear
	// does not reboot the host again and again.
	PhaseDone = "done"
)

// Move is one container a drain moved away, for the return after the
// reboot.
type Move struct {
	Container string `json:"container"`
	Name      string `json:"name"`
	To        string `json:"to"`
	Migration string `json:"migration"`
}

// Sequence is the durable record of this host's reboot sequence: the
// policy agent writes it before every step that must survive the agent
// (or the host) going away, and reads it when it starts.
type Sequence struct {
	Reason string `json:"reason"`
	// Manual: an operator asked (`orchestrate reboot`); the reboot is
	// required until it happened, whatever the checks say.
	Manual bool `json:"manual,omitempty"`
	// Requested is the mode asked for: the operator's, or reboot.mode.
	Requested policy.RebootMode `json:"requested,omitempty"`
	// Mode is the mode chosen for this sequence (drain or local).
	Mode policy.RebootMode `json:"mode,omitempty"`
	// Command overrides reboot.command for this sequence (operator only).
	Command []string `json:"command,omitempty"`
	Phase   string   `json:"phase"`
	// Started, RebootAt, BackAt, DoneAt: when each phase began (this
	// host's clock).
	Started  time.Time `json:"started"`
	RebootAt time.Time `json:"reboot_at,omitzero"`
	BackAt   time.Time `json:"back_at,omitzero"`
	DoneAt   time.Time `json:"done_at,omitzero"`
	// BootID is the kernel's boot ID when the reboot command ran; BackBoot
	// the one the agent found when it started again.
	BootID   string `json:"boot_id,omitempty"`
	BackBoot string `json:"back_boot,omitempty"`
	// Drain: how many drains were asked for, and where containers went.
	Drains int    `json:"drains,omitempty"`
	Moves  []Move `json:"moves,omitempty"`
	// Stuck says why the drain or save cannot finish; the sequence aborts.
	Stuck string `json:"stuck,omitempty"`
	// Outcome, once done: rebooted, aborted: WHY, cancelled.
	Outcome string `json:"outcome,omitempty"`
}

// Active reports whether the sequence is still under way.
func (s *Sequence) Active() bool { return s != nil && s.Phase != "" && s.Phase != PhaseDone }

// SequenceFile is where the sequence is kept under Config.Dir.
func SequenceFile(dir string) string { return filepath.Join(dir, "sequence.json") }

// LoadSequence reads the sequence record; nil when there is none.
func LoadSequence(dir string) (*Sequence, error) {
	var s Sequence
	ok, err := readJSON(SequenceFile(dir), &s)
	if err != nil || !ok {
		return nil, err
	}
	return &s, nil
}

// SaveSequence writes the record durably.
func SaveSequence(dir string, s *Sequence) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return writeJSON(SequenceFile(dir), s)
}

// BootID returns the kernel's boot ID ("" when unknown): it changes with
// every boot, so the agent can tell a reboot from its own restart.
func BootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if errors.Is(err, os.ErrNotExist) || err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
