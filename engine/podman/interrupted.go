//go:build remote

package podman

// A checkpoint whose Podman service died after CRIU finished.
//
// Podman's checkpoint runs runc (and CRIU under it) as a child; if the
// service dies meanwhile, runc and CRIU go on: CRIU finishes the dump and
// kills the container's processes, and nobody records the checkpoint.
// Podman, started again, finds the container "stopped" (not exited), not
// checkpointed, and without the cleanup a finished checkpoint gets
// (network and storage released): its restore refuses the state. The
// images are whole, though, and on the page path the pages come back from
// the recording (ReplayPages). finishInterrupted tells such a container
// from one that merely stopped, by CRIU's own log of this run, and lets
// Podman clean it up so that Resume can restore it in place.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// dumpFinished is the last line of CRIU's log of a dump that completed.
const dumpFinished = "Dumping finished successfully"

// finishInterrupted readies container id for Resume when its last
// checkpoint completed in CRIU but not in Podman; otherwise it returns why
// not, and changes nothing.
func (e *Engine) finishInterrupted(ctx context.Context, id string) error {
	d, err := e.inspect(ctx, id)
	if err != nil {
		return err
	}
	if d.State.Status != "stopped" {
		return fmt.Errorf("no checkpoint was interrupted (state %s)", d.State.Status)
	}
	if err := interruptedDump(d.StaticDir, lastStart(d)); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	args := append(append([]string{}, e.cfg.CLI[1:]...), "container", "cleanup", d.ID)
	if out, err := exec.CommandContext(cctx, e.cfg.CLI[0], args...).CombinedOutput(); err != nil {
		return fmt.Errorf("podman container cleanup %s: %v: %s", d.ID, err, strings.TrimSpace(string(out)))
	}
	e.log.Warn("a checkpoint whose Podman service died after CRIU finished: cleaned up for the resume", "container", d.Name)
	return nil
}

// lastStart is when the container last started running (started or
// restored).
func lastStart(d inspectData) time.Time {
	if d.State.RestoredAt.After(d.State.StartedAt) {
		return d.State.RestoredAt
	}
	return d.State.StartedAt
}

// interruptedDump checks the container's bundle for a dump of this run
// that CRIU finished: its log (newer than the container's last start) ends
// with dumpFinished, and the images include the inventory.
func interruptedDump(bundle string, since time.Time) error {
	logPath := filepath.Join(bundle, "dump.log")
	fi, err := os.Stat(logPath)
	if err != nil {
		return fmt.Errorf("no dump log: %w", err)
	}
	if !fi.ModTime().After(since) {
		return fmt.Errorf("the dump log is from before the container last started (%s)", since.Format(time.RFC3339))
	}
	if last, err := lastLine(logPath); err != nil {
		return err
	} else if !strings.Contains(last, dumpFinished) {
		return fmt.Errorf("CRIU's dump did not finish: %q", last)
	}
	if _, err := os.Stat(filepath.Join(bundle, "checkpoint", "inventory.img")); err != nil {
		return fmt.Errorf("the checkpoint has no inventory: %w", err)
	}
	return nil
}

func lastLine(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var last string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			last = l
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, bufio.ErrTooLong) {
		return "", err
	}
	return last, nil
}
