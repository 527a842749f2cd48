package copies

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/policy"
)

// ErrClash: the copies would clash with what runs; nothing was started.
var ErrClash = errors.New("copies would clash")

// maxCopies bounds --count.
const maxCopies = 64

// Placement is the copies one host starts.
type Placement struct {
	Host  string   `json:"host"`
	Names []string `json:"names"`
}

// PlanInput is everything MakePlan decides from.
type PlanInput struct {
	Facts Facts
	// Host, Name, Count as the operator gave them (Count 0 means 1).
	Host  string
	Name  string
	Count int
	// Hosts are the cluster's hosts as placement sees them.
	Hosts []policy.HostLoad
	// Containers are each alive host's containers (any state).
	Containers map[string][]engine.Container
}

var nameRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// CopyNames are the copies' names: NAME for one copy, NAME-1..NAME-K for
// more; NAME defaults to the original's name with "-copy".
func CopyNames(base string, count int) []string {
	if count <= 1 {
		return []string{base}
	}
	out := make([]string, count)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", base, i+1)
	}
	return out
}

// MakePlan places the copies and refuses, before anything starts, what
// would clash: established TCP connections in the checkpoint, names in use
// on a target, and for a container on the host's network that listens, two
// copies on one host or a copy on the host where the original runs. It is
// a pure function.
func MakePlan(in PlanInput) ([]Placement, error) {
	f := in.Facts
	count := max(in.Count, 1)
	if count > maxCopies {
		return nil, fmt.Errorf("%w: --count %d: at most %d", ErrClash, in.Count, maxCopies)
	}
	if len(f.Established) > 0 {
		return nil, fmt.Errorf("%w: %s holds %d established TCP connection(s) (%s): a copy cannot take over another's connection; snapshot it while it has none",
			ErrClash, f.Name, len(f.Established), strings.Join(f.Established, ", "))
	}
	base := in.Name
	if base == "" {
		base = f.Name + "-copy"
	}
	names := CopyNames(base, count)
	for _, n := range names {
		if !nameRe.MatchString(n) || len(n) > 200 {
			return nil, fmt.Errorf("%w: %q is not a valid container name", ErrClash, n)
		}
	}
	exclusive := f.HostNetwork && len(f.Listening) > 0
	originalOn := map[string]bool{}
	for host, cs := range in.Containers {
		for _, c := range cs {
			if c.ID == f.Container && c.Running {
				originalOn[host] = true
			}
		}
	}
	ports := strings.Join(f.Listening, ", ")
	src := policy.HostLoad{Engine: f.Engine}
	ctr := policy.ContainerInfo{ID: base, Labels: f.Labels, MemoryBytes: f.MemoryBytes}
	hosts := slices.Clone(in.Hosts)
	var placed []string
	if in.Host != "" {
		dst, ok := find(hosts, in.Host)
		if !ok {
			return nil, fmt.Errorf("%w: no host %s in the cluster", ErrClash, in.Host)
		}
		if why := policy.Unfit(ctr, src, dst); why != "" {
			return nil, fmt.Errorf("%w: cannot start %s on %s: %s", ErrClash, base, in.Host, why)
		}
		if exclusive && (count > 1 || originalOn[in.Host]) {
			return nil, fmt.Errorf("%w: %s uses the host's network and listens on %s: %s", ErrClash, f.Name, ports, exclusiveWhy(count, originalOn[in.Host], in.Host))
		}
		for range names {
			placed = append(placed, in.Host)
		}
	} else {
		counts := map[string]int{}
		for h, cs := range in.Containers {
			for _, c := range cs {
				if c.Running {
					counts[h]++
				}
			}
		}
		for range names {
			cands := hosts[:0:0]
			for _, h := range hosts {
				if exclusive && (originalOn[h.Name] || slices.Contains(placed, h.Name)) {
					continue
				}
				cands = append(cands, h)
			}
			to, err := policy.Place(ctr, src, cands, counts, nil)
			if err != nil {
				if exclusive {
					return nil, fmt.Errorf("%w: %s uses the host's network and listens on %s: one copy per host, none next to the original; %d copies do not fit: %v", ErrClash, f.Name, ports, count, err)
				}
				return nil, fmt.Errorf("%w: no host for %d copies of %s: %v", ErrClash, count, f.Name, err)
			}
			placed = append(placed, to)
			counts[to]++
			for i := range hosts {
				if hosts[i].Name == to {
					hosts[i].MemoryUsed += f.MemoryBytes
				}
			}
		}
	}
	var out []Placement
	for i, host := range placed {
		for _, c := range in.Containers[host] {
			if c.Name == names[i] {
				return nil, fmt.Errorf("%w: a container named %s already exists on %s (%s); pick another with --name", ErrClash, names[i], host, c.State)
			}
		}
		j := slices.IndexFunc(out, func(p Placement) bool { return p.Host == host })
		if j < 0 {
			out = append(out, Placement{Host: host})
			j = len(out) - 1
		}
		out[j].Names = append(out[j].Names, names[i])
	}
	return out, nil
}

func exclusiveWhy(count int, original bool, host string) string {
	if original {
		return "the original runs on " + host + " with the same address"
	}
	return fmt.Sprintf("%d copies on %s would share one address", count, host)
}

func find(hosts []policy.HostLoad, name string) (policy.HostLoad, bool) {
	for _, h := range hosts {
		if h.Name == name {
			return h, true
		}
	}
	return policy.HostLoad{}, false
}
