package policy

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ErrNoTarget is returned when no host may take a container; the wrapping
// error says why each candidate was refused.
var ErrNoTarget = errors.New("no host can take the container")

// Unfit says why dst cannot take c from src, or "" when it can: alive and
// uncordoned, a different host with a container engine (never a witness),
// the same engine and architecture, CRIU at
// least the source's, enough free memory, and every
// orchestrate.constraint.KEY=VALUE label of c matched by dst's labels.
func Unfit(c ContainerInfo, src, dst HostLoad) string {
	switch {
	case dst.Name == src.Name:
		return "it is the source"
	case !dst.Alive:
		return "not alive"
	case dst.Cordoned:
		return "cordoned"
	case dst.Witness():
		return "a witness (engine none): never hosts containers"
	case dst.Engine != src.Engine:
		return fmt.Sprintf("engine %s, container needs %s", dst.Engine, src.Engine)
	case dst.Arch != src.Arch:
		return fmt.Sprintf("arch %s, container needs %s", dst.Arch, src.Arch)
	case src.CRIUVersion != "" && dst.CRIUVersion != src.CRIUVersion && // equal needs no parsing (planners call this per container and host)
		(dst.CRIUVersion == "" || CompareVersions(dst.CRIUVersion, src.CRIUVersion) < 0):
		return fmt.Sprintf("CRIU %q older than the source's %s", dst.CRIUVersion, src.CRIUVersion)
	case dst.MemoryCapacity <= 0:
		return "memory capacity unknown"
	case dst.MemoryCapacity-dst.MemoryUsed < c.MemoryBytes:
		return fmt.Sprintf("%d MiB free, container uses %d MiB", (dst.MemoryCapacity-dst.MemoryUsed)>>20, c.MemoryBytes>>20)
	}
	for k, v := range c.Labels {
		if key, ok := strings.CutPrefix(k, LabelConstraintPrefix); ok && dst.Labels[key] != v {
			return fmt.Sprintf("label %s=%q, container requires %q", key, dst.Labels[key], v)
		}
	}
	return ""
}

// Place picks the target for one container leaving src. Among hosts that
// fit (see Unfit), it prefers one that already holds the container's image
// (hasImage; no image transfer), then the one with the fewest containers
// (spread), then the one least utilised after the move, then by name. The
// error wraps ErrNoTarget and names each candidate's reason.
func Place(c ContainerInfo, src HostLoad, hosts []HostLoad, counts map[string]int, hasImage func(host string) bool) (string, error) {
	type cand struct {
		h     HostLoad
		image bool
	}
	var cands []cand
	var why []string
	for _, h := range hosts {
		if h.Name == src.Name {
			continue
		}
		if r := Unfit(c, src, h); r != "" {
			why = append(why, h.Name+": "+r)
			continue
		}
		cands = append(cands, cand{h, hasImage != nil && hasImage(h.Name)})
	}
	if len(cands) == 0 {
		if len(why) == 0 {
			why = append(why, "no other hosts")
		}
		return "", fmt.Errorf("place %s: %w (%s)", c.ID, ErrNoTarget, strings.Join(why, "; "))
	}
	sort.SliceStable(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if a.image != b.image {
			return a.image
		}
		if counts[a.h.Name] != counts[b.h.Name] {
			return counts[a.h.Name] < counts[b.h.Name]
		}
		if ua, ub := after(a.h, c), after(b.h, c); ua != ub {
			return ua < ub
		}
		return a.h.Name < b.h.Name
	})
	return cands[0].h.Name, nil
}
