package archive

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
)

// Diff is what changed between two checkpoints of one container, A the
// older and B the newer. checkpointctl's diff compares total memory sizes;
// this one compares memory page by page.
type Diff struct {
	A         DiffSide      `json:"a"`
	B         DiffSide      `json:"b"`
	Container []Change      `json:"container,omitempty"` // image, command, spec environment
	Processes []ProcessDiff `json:"processes,omitempty"`
	Rootfs    []Change      `json:"rootfs,omitempty"`
	Memory    []MemoryDiff  `json:"memory,omitempty"`
	// PagesChanged, PagesAdded and PagesRemoved total Memory.
	PagesChanged int `json:"pagesChanged"`
	PagesAdded   int `json:"pagesAdded"`
	PagesRemoved int `json:"pagesRemoved"`

	changed map[uint32]map[uint64]bool // pid -> pages changed or added in B
}

// DiffSide names one of the two checkpoints.
type DiffSide struct {
	ID             string `json:"id"`
	Name           string `json:"name"`
	CheckpointedAt string `json:"checkpointedAt"`
	MemorySize     int64  `json:"memorySize"`
}

// Change is one difference: Kind is "added", "removed" or "changed".
type Change struct {
	Kind string `json:"kind"`
	What string `json:"what"`
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
}

// ProcessDiff is what changed in one process (by pid).
type ProcessDiff struct {
	PID     uint32   `json:"pid"`
	Comm    string   `json:"comm"`
	Kind    string   `json:"kind"` // added, removed, changed
	Changes []Change `json:"changes,omitempty"`
}

// MemoryDiff counts the pages of one mapping that differ.
type MemoryDiff struct {
	PID     uint32 `json:"pid"`
	Start   Addr   `json:"start"`
	End     Addr   `json:"end"`
	Mapping string `json:"mapping,omitempty"`
	Changed int    `json:"changed"` // dumped in both, different content
	Added   int    `json:"added"`   // dumped only in B
	Removed int    `json:"removed"` // dumped only in A
}

// ChangedPages is a Query.Pages filter: the pages of B that changed or
// appeared since A, so that a search of B finds only what is new.
func (d *Diff) ChangedPages(pid uint32, page uint64) bool {
	return d.changed[pid][page]
}

// Compare diffs two checkpoints. Both must stay open while the result's
// ChangedPages is used with b.Search.
func Compare(a, b *Archive) (*Diff, error) {
	ra, rb := a.Report(), b.Report()
	if ra == nil || rb == nil {
		return nil, fmt.Errorf("diff: an archive is closed")
	}
	d := &Diff{A: side(ra), B: side(rb), changed: map[uint32]map[uint64]bool{}}
	ca, cb := ra.Container, rb.Container
	d.Container = append(d.Container, changeOf("image", ca.Image, cb.Image)...)
	d.Container = append(d.Container, changeOf("image id", ca.ImageID, cb.ImageID)...)
	d.Container = append(d.Container, changeOf("command", strings.Join(ca.Command, " "), strings.Join(cb.Command, " "))...)
	d.Container = append(d.Container, envDiff("spec env ", ca.Env, cb.Env)...)
	d.Container = append(d.Container, listDiff("mount ", mountNames(ca.Mounts), mountNames(cb.Mounts))...)

	pa, pb := byPID(ra.Processes), byPID(rb.Processes)
	for _, pid := range unionKeys(pa, pb) {
		x, inA := pa[pid]
		y, inB := pb[pid]
		switch {
		case !inA:
			d.Processes = append(d.Processes, ProcessDiff{PID: pid, Comm: y.Comm, Kind: "added", Changes: []Change{{Kind: "added", What: "cmdline", To: strings.Join(y.Cmdline, " ")}}})
		case !inB:
			d.Processes = append(d.Processes, ProcessDiff{PID: pid, Comm: x.Comm, Kind: "removed", Changes: []Change{{Kind: "removed", What: "cmdline", From: strings.Join(x.Cmdline, " ")}}})
		default:
			var cs []Change
			cs = append(cs, changeOf("cmdline", strings.Join(x.Cmdline, " "), strings.Join(y.Cmdline, " "))...)
			cs = append(cs, changeOf("state", x.State, y.State)...)
			cs = append(cs, changeOf("threads", fmt.Sprint(len(x.Threads)), fmt.Sprint(len(y.Threads)))...)
			cs = append(cs, changeOf("cwd", x.Cwd, y.Cwd)...)
			cs = append(cs, envDiff("env ", x.Env, y.Env)...)
			cs = append(cs, keyedDiff("fd ", fdMap(x.Files), fdMap(y.Files))...)
			cs = append(cs, keyedDiff("socket ", socketMap(x.Sockets), socketMap(y.Sockets))...)
			if len(cs) > 0 {
				d.Processes = append(d.Processes, ProcessDiff{PID: pid, Comm: y.Comm, Kind: "changed", Changes: cs})
			}
		}
	}
	d.Rootfs = keyedDiff("", rootfsMap(a, ra), rootfsMap(b, rb))
	d.Rootfs = append(d.Rootfs, listDiff("deleted ", ra.RootfsDiff.Deleted, rb.RootfsDiff.Deleted)...)

	for _, pid := range unionKeys(pa, pb) {
		if err := d.comparePages(pid, a.procs[pid], b.procs[pid], pb[pid], pa[pid]); err != nil {
			return nil, fmt.Errorf("diff: pid %d: %w", pid, err)
		}
	}
	return d, nil
}

func side(r *Report) DiffSide {
	return DiffSide{ID: r.Container.ID, Name: r.Container.Name, CheckpointedAt: fmtTime(r.Checkpoint.CheckpointedAt), MemorySize: r.Checkpoint.MemorySize}
}

// comparePages walks both processes' dumped pages in address order.
func (d *Diff) comparePages(pid uint32, ma, mb *procMem, pb, pa Process) error {
	ps := uint64(4096)
	if mb != nil {
		ps = uint64(mb.pageSize)
	} else if ma != nil {
		ps = uint64(ma.pageSize)
	}
	// Per mapping counters, keyed by the mapping of B (or A for pages that
	// went away).
	counts := map[Mapping]*MemoryDiff{}
	count := func(ms []Mapping, addr uint64) *MemoryDiff {
		i := slices.IndexFunc(ms, func(v Mapping) bool { return uint64(v.Start) <= addr && addr < uint64(v.End) })
		key := Mapping{}
		if i >= 0 {
			key = ms[i]
		}
		c := counts[key]
		if c == nil {
			c = &MemoryDiff{PID: pid, Start: key.Start, End: key.End, Mapping: key.Name}
			counts[key] = c
		}
		return c
	}
	changed := map[uint64]bool{}
	pages := func(m *procMem) []pageRun {
		if m == nil || m.pages == nil {
			return nil
		}
		return m.runs
	}
	ra, rb := pages(ma), pages(mb)
	bufA, bufB := make([]byte, 1<<20), make([]byte, 1<<20)
	// Pages only in A.
	for _, r := range ra {
		for addr := r.vaddr; addr < r.end; addr += ps {
			if !present(rb, addr) {
				count(pa.Mappings, addr).Removed++
				d.PagesRemoved++
			}
		}
	}
	for _, r := range rb {
		for addr := r.vaddr; addr < r.end; {
			// The stretch from addr that is dumped in both, or only in B.
			if j := runAt(ra, addr); j >= 0 {
				ar := ra[j]
				end := min(r.end, ar.end, addr+uint64(len(bufA)))
				n := int(end - addr)
				if _, err := mb.pages.r.ReadAt(bufB[:n], r.off+int64(addr-r.vaddr)); err != nil {
					return pagesReadErr(mb, err)
				}
				if _, err := ma.pages.r.ReadAt(bufA[:n], ar.off+int64(addr-ar.vaddr)); err != nil {
					return pagesReadErr(ma, err)
				}
				for o := 0; o < n; o += int(ps) {
					if !bytes.Equal(bufA[o:o+int(ps)], bufB[o:o+int(ps)]) {
						p := addr + uint64(o)
						count(pb.Mappings, p).Changed++
						changed[p] = true
						d.PagesChanged++
					}
				}
				addr = end
				continue
			}
			count(pb.Mappings, addr).Added++
			changed[addr] = true
			d.PagesAdded++
			addr += ps
		}
	}
	if len(changed) > 0 {
		d.changed[pid] = changed
	}
	var out []MemoryDiff
	for _, c := range counts {
		if c.Changed+c.Added+c.Removed > 0 {
			out = append(out, *c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start < out[j].Start })
	d.Memory = append(d.Memory, out...)
	return nil
}

// runAt returns the index of the run holding addr, or -1.
func runAt(runs []pageRun, addr uint64) int {
	i := sort.Search(len(runs), func(i int) bool { return runs[i].end > addr })
	if i < len(runs) && runs[i].vaddr <= addr {
		return i
	}
	return -1
}

func present(runs []pageRun, addr uint64) bool { return runAt(runs, addr) >= 0 }

func changeOf(what, from, to string) []Change {
	switch {
	case from == to:
		return nil
	case from == "":
		return []Change{{Kind: "added", What: what, To: to}}
	case to == "":
		return []Change{{Kind: "removed", What: what, From: from}}
	}
	return []Change{{Kind: "changed", What: what, From: from, To: to}}
}

func envDiff(prefix string, a, b []string) []Change {
	split := func(env []string) map[string]string {
		m := map[string]string{}
		for _, e := range env {
			k, v, _ := strings.Cut(e, "=")
			m[k] = v
		}
		return m
	}
	return keyedDiff(prefix, split(a), split(b))
}

// keyedDiff compares two maps of name -> description.
func keyedDiff(prefix string, a, b map[string]string) []Change {
	var out []Change
	for _, k := range unionKeys(a, b) {
		x, inA := a[k]
		y, inB := b[k]
		switch {
		case !inA:
			out = append(out, Change{Kind: "added", What: prefix + k, To: y})
		case !inB:
			out = append(out, Change{Kind: "removed", What: prefix + k, From: x})
		case x != y:
			out = append(out, Change{Kind: "changed", What: prefix + k, From: x, To: y})
		}
	}
	return out
}

func listDiff(prefix string, a, b []string) []Change {
	toMap := func(l []string) map[string]string {
		m := map[string]string{}
		for _, s := range l {
			m[s] = ""
		}
		return m
	}
	return keyedDiff(prefix, toMap(a), toMap(b))
}

func mountNames(ms []Mount) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Destination+" "+m.Type+" "+m.Source)
	}
	return out
}

func byPID(ps []Process) map[uint32]Process {
	m := map[uint32]Process{}
	for _, p := range ps {
		m[p.PID] = p
	}
	return m
}

func fdMap(fs []File) map[string]string {
	m := map[string]string{}
	for _, f := range fs {
		m[fmt.Sprint(f.FD)] = f.Type + " " + f.Path
	}
	return m
}

func socketMap(ss []Socket) map[string]string {
	m := map[string]string{}
	for _, s := range ss {
		m[fmt.Sprint(s.FD)] = socketLine(s)
	}
	return m
}

func rootfsMap(a *Archive, r *Report) map[string]string {
	m := map[string]string{}
	for _, e := range r.RootfsDiff.Changed {
		desc := fmt.Sprintf("%s %s %d B", e.Type, e.Mode, e.Size)
		if h := a.rootfs[e.Path]; h != "" {
			desc += " " + shortHash(h)
		}
		m[e.Path] = desc
	}
	return m
}

func shortHash(h string) string {
	if strings.HasPrefix(h, "link:") || len(h) <= 12 {
		return h
	}
	return "sha256:" + h[:12]
}

func unionKeys[K interface{ ~uint32 | ~string }, V any](a, b map[K]V) []K {
	seen := map[K]bool{}
	var out []K
	for k := range a {
		seen[k] = true
		out = append(out, k)
	}
	for k := range b {
		if !seen[k] {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// RenderDiff writes d as text.
func RenderDiff(w io.Writer, d *Diff) error {
	root := &node{text: fmt.Sprintf("%s (%s): %s -> %s", orDash(d.B.Name), shortID(d.B.ID), d.A.CheckpointedAt, d.B.CheckpointedAt)}
	if d.A.ID != d.B.ID {
		root.add("note: different containers (%s and %s)", shortID(d.A.ID), shortID(d.B.ID))
	}
	add := func(n *node, cs []Change) {
		for _, c := range cs {
			switch c.Kind {
			case "added":
				n.add("+ %s %s", c.What, c.To)
			case "removed":
				n.add("- %s %s", c.What, c.From)
			default:
				n.add("~ %s %s -> %s", c.What, c.From, c.To)
			}
		}
	}
	if len(d.Container) > 0 {
		add(root.add("Container"), d.Container)
	}
	pn := root.add("Processes: %d changed", len(d.Processes))
	for _, p := range d.Processes {
		add(pn.add("[%d] %s (%s)", p.PID, p.Comm, p.Kind), p.Changes)
	}
	rn := root.add("Rootfs: %d changes", len(d.Rootfs))
	add(rn, d.Rootfs)
	mn := root.add("Memory: %d pages changed, %d added, %d removed (of %s -> %s dumped)", d.PagesChanged, d.PagesAdded, d.PagesRemoved, size(d.A.MemorySize), size(d.B.MemorySize))
	for _, m := range d.Memory {
		mn.add("pid %d %012x-%012x %s: %d changed, %d added, %d removed", m.PID, uint64(m.Start), uint64(m.End), orDash(m.Mapping), m.Changed, m.Added, m.Removed)
	}
	var b strings.Builder
	root.write(&b, "", "")
	_, err := io.WriteString(w, b.String())
	return err
}
