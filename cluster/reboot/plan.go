package reboot

import (
	"fmt"
	"sort"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/policy"
)

// Skip is a container a local reboot leaves alone, and why.
type Skip struct {
	Container string `json:"container"`
	Name      string `json:"name"`
	Reason    string `json:"reason"`
}

// Plan is what a local reboot would do on this host.
type Plan struct {
	// Save lists the containers to checkpoint, in the order they are saved
	// and restored: orchestrate.priority (highest first), then name.
	Save []engine.Container `json:"save"`
	// Skipped are left to their engine: opted out or not running.
	Skipped []Skip `json:"skipped,omitempty"`
	// NeedBytes estimates the disk space the checkpoints take (their
	// memory plus a margin); zero when the engine reports no memory use.
	NeedBytes int64 `json:"need_bytes"`
	// FreeBytes is the space left under the data directory.
	FreeBytes int64 `json:"free_bytes"`
}

// Skip reasons.
const (
	SkipOptedOut   = policy.LabelMigrate + "=false: left to its engine's restart policy"
	SkipNotRunning = "not running: nothing to save"
)

// perContainerSlack covers what an archive holds besides memory (CRIU's
// metadata, the writable layer's changes, Podman's config).
const perContainerSlack = 16 << 20

// MakePlan decides what a local reboot saves: every running container not
// labelled orchestrate.migrate=false, highest orchestrate.priority first,
// then by name. It is a pure function of the container list.
func MakePlan(cs []engine.Container, free int64) Plan {
	p := Plan{FreeBytes: free}
	for _, c := range cs {
		switch {
		case policy.OptedOut(c.Labels):
			p.Skipped = append(p.Skipped, Skip{Container: c.ID, Name: c.Name, Reason: SkipOptedOut})
		case !c.Running:
			p.Skipped = append(p.Skipped, Skip{Container: c.ID, Name: c.Name, Reason: SkipNotRunning})
		default:
			p.Save = append(p.Save, c)
			if c.MemoryBytes > 0 {
				p.NeedBytes += c.MemoryBytes + perContainerSlack
			}
		}
	}
	sort.SliceStable(p.Save, func(i, j int) bool {
		pi, pj := policy.Priority(p.Save[i].Labels), policy.Priority(p.Save[j].Labels)
		if pi != pj {
			return pi > pj
		}
		return p.Save[i].Name < p.Save[j].Name
	})
	sort.Slice(p.Skipped, func(i, j int) bool { return p.Skipped[i].Name < p.Skipped[j].Name })
	return p
}

// Problem says why the plan cannot run, or "" when it can: the checkpoints
// would not fit on the disk.
func (p Plan) Problem() string {
	if p.NeedBytes > 0 && p.FreeBytes > 0 && p.NeedBytes > p.FreeBytes {
		return fmt.Sprintf("the checkpoints need about %d MiB under the data directory, which has %d MiB free", p.NeedBytes>>20, p.FreeBytes>>20)
	}
	return ""
}
