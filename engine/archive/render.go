package archive

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// RenderOptions choose the optional sections of Render.
type RenderOptions struct {
	Mappings bool // list every memory mapping (long)
	Files    bool // list open files
	Sockets  bool // list sockets
	Diff     bool // list the rootfs diff entries
	Env      bool // list environment variables (the spec's and each process's)
	Mounts   bool // list the container's mounts
	// PIDs limits the process tree to these processes (and shows their
	// ancestors for context); empty means all.
	PIDs []uint32
}

// AllSections turns every optional section on.
var AllSections = RenderOptions{Mappings: true, Files: true, Sockets: true, Diff: true, Env: true, Mounts: true}

// Render writes r as a tree, in the manner of checkpointctl inspect, with
// every section but the memory mappings (tens of lines per process).
func Render(w io.Writer, r *Report) error {
	return RenderWith(w, r, RenderOptions{Files: true, Sockets: true, Diff: true, Env: true, Mounts: true})
}

// RenderWith writes r as a tree with the chosen sections.
func RenderWith(w io.Writer, r *Report, opts RenderOptions) error {
	c := r.Container
	root := &node{text: fmt.Sprintf("%s (%s)", orDash(c.Name), shortID(c.ID))}
	root.add("Image: %s", orDash(c.Image))
	if c.ImageID != "" {
		root.add("Image ID: %s", shortID(c.ImageID))
	}
	root.add("Engine: %s%s (%s archive)", orDash(c.Engine), prefixed(" ", c.EngineVersion), orDash(string(c.Format)))
	if c.Pod != "" {
		root.add("Pod: %s/%s", orDash(c.Namespace), c.Pod)
	}
	root.add("Runtime: %s%s", orDash(c.Runtime), prefixed(" ", r.Checkpoint.RuntimeVersion))
	root.add("Created: %s", fmtTime(c.Created))
	if len(c.Command) > 0 {
		root.add("Command: %s", strings.Join(c.Command, " "))
	}
	for _, n := range c.Networks {
		root.add("Network %s/%s: %s %s", n.Name, n.Interface, strings.Join(n.Addresses, ","), n.MAC)
	}
	if opts.Env && len(c.Env) > 0 {
		en := root.add("Environment (spec)")
		for _, e := range c.Env {
			en.add("%s", e)
		}
	}
	if opts.Mounts && len(c.Mounts) > 0 {
		mn := root.add("Mounts")
		for _, m := range c.Mounts {
			line := fmt.Sprintf("%s (%s)", m.Destination, orDash(m.Type))
			if m.Source != "" && m.Source != m.Type {
				line += " from " + m.Source
			}
			if len(m.Options) > 0 {
				line += " [" + strings.Join(m.Options, ",") + "]"
			}
			mn.add("%s", line)
		}
	}

	ck := r.Checkpoint
	cn := root.add("Checkpoint")
	cn.add("Checkpointed: %s%s", fmtTime(ck.CheckpointedAt), prefixed(" on ", ck.Host))
	cn.add("CRIU: %s", orDash(ck.CRIUVersion))
	cn.add("Kernel: %s%s", orDash(ck.Kernel), prefixed(" ", ck.HostArch))
	cn.add("Archive: %s uncompressed (compression %s)", size(ck.ArchiveSize), ck.Compression)
	cn.add("CRIU images: %s, of which memory pages %s (page size %d)", size(ck.CheckpointSize), size(ck.MemorySize), ck.PageSize)
	if s := ck.Stats; s != nil {
		cn.add("Dump stats: frozen %v, memdump %v, memwrite %v, pages scanned %d, written %d",
			s.FrozenTime, s.MemdumpTime, s.MemwriteTime, s.PagesScanned, s.PagesWritten)
	}

	pt := root.add("Process tree")
	byPID := map[uint32]*node{}
	show := shownPIDs(r.Processes, opts.PIDs)
	for i := range r.Processes {
		p := &r.Processes[i]
		if show != nil && !show[p.PID] {
			continue
		}
		parent := pt
		if pn, ok := byPID[p.PPID]; ok {
			parent = pn
		}
		n := parent.add("[%d] %s", p.PID, strings.Join(p.Cmdline, " "))
		byPID[p.PID] = n
		info := fmt.Sprintf("comm %s, %s, %d thread(s), %s of memory dumped", p.Comm, orDash(p.State), max(1, len(p.Threads)), size(p.MemoryDumped))
		if p.Exe != "" {
			info += ", exe " + p.Exe
		}
		if p.Cwd != "" {
			info += ", cwd " + p.Cwd
		}
		n.add("%s", info)
		if opts.Env && len(p.Env) > 0 {
			en := n.add("Environment")
			for _, e := range p.Env {
				en.add("%s", e)
			}
		}
		if opts.Sockets && len(p.Sockets) > 0 {
			sn := n.add("Sockets")
			for _, s := range p.Sockets {
				sn.add("%s", socketLine(s))
			}
		}
		if opts.Files && len(p.Files) > 0 {
			fn := n.add("Open files")
			for _, f := range p.Files {
				fn.add("[%d] %s %s", f.FD, f.Type, f.Path)
			}
		}
		if opts.Mappings && len(p.Mappings) > 0 {
			mn := n.add("Memory mappings")
			for _, m := range p.Mappings {
				mn.add("%012x-%012x %s %9s (dumped %s) %s", uint64(m.Start), uint64(m.End), m.Prot, size(int64(m.Size)), size(int64(m.Dumped)), m.Name)
			}
		}
	}

	d := r.RootfsDiff
	dn := root.add("Rootfs diff: %d changed, %d deleted (%s)", len(d.Changed)+d.Omitted, len(d.Deleted), size(d.Size))
	if opts.Diff {
		for _, e := range d.Changed {
			if e.Type == "dir" {
				continue
			}
			dn.add("+ %s (%s, %s)", e.Path, e.Type, size(e.Size))
		}
		if d.Omitted > 0 {
			dn.add("... %d more", d.Omitted)
		}
		for _, p := range d.Deleted {
			dn.add("- %s", p)
		}
	}
	for _, v := range r.Volumes {
		root.add("Volume %s (%s)", v.Name, size(v.Size))
	}
	if len(r.Warnings) > 0 {
		wn := root.add("Warnings")
		for _, s := range r.Warnings {
			wn.add("%s", s)
		}
	}
	var b strings.Builder
	root.write(&b, "", "")
	_, err := io.WriteString(w, b.String())
	return err
}

// RenderMatches writes Grep's matches, one per line.
func RenderMatches(w io.Writer, ms []Match) error {
	var b strings.Builder
	for _, m := range ms {
		b.WriteString(MatchLine(m))
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// MatchLine is one match as RenderMatches writes it.
func MatchLine(m Match) string {
	switch {
	case m.Where == WhereFile:
		return fmt.Sprintf("file %s offset %d: %q", m.Mapping, uint64(m.Address), m.Context)
	case m.PID == 0:
		return fmt.Sprintf("shared %s: %q", orDash(m.Mapping), m.Context)
	}
	where := ""
	if m.Where == WhereShared {
		where = " shared"
	}
	return fmt.Sprintf("pid %d (%s) 0x%012x%s %s: %q", m.PID, m.Comm, uint64(m.Address), where, orDash(m.Mapping), m.Context)
}

func socketLine(s Socket) string {
	line := fmt.Sprintf("[%d] %s %s %s %s %s", s.FD, s.Family, s.Type, orDash(s.Protocol), s.State, orDash(s.Local))
	if s.Remote != "" && s.State != "LISTEN" && s.State != "UNCONN" || s.Family == "UNIX" && s.Remote != "" {
		line += " -> " + s.Remote
	}
	line += fmt.Sprintf(", queued in %d B", s.InQueue)
	if s.InPackets > 0 {
		line += fmt.Sprintf(" (%d messages)", s.InPackets)
	}
	line += fmt.Sprintf(", out %d B", s.OutQueue)
	if s.Backlog > 0 {
		line += fmt.Sprintf(", backlog %d", s.Backlog)
	}
	return line
}

// shownPIDs is the set of processes to render for pids: those and their
// ancestors; nil means all.
func shownPIDs(ps []Process, pids []uint32) map[uint32]bool {
	if len(pids) == 0 {
		return nil
	}
	parent := map[uint32]uint32{}
	for _, p := range ps {
		parent[p.PID] = p.PPID
	}
	show := map[uint32]bool{}
	for _, pid := range pids {
		for p, seen := pid, 0; p != 0 && seen < len(ps)+1; p, seen = parent[p], seen+1 {
			show[p] = true
		}
	}
	return show
}

type node struct {
	text     string
	children []*node
}

func (n *node) add(format string, args ...any) *node {
	c := &node{text: fmt.Sprintf(format, args...)}
	n.children = append(n.children, c)
	return c
}

func (n *node) write(b *strings.Builder, first, rest string) {
	b.WriteString(first + n.text + "\n")
	for i, c := range n.children {
		if i == len(n.children)-1 {
			c.write(b, rest+"└── ", rest+"    ")
		} else {
			c.write(b, rest+"├── ", rest+"│   ")
		}
	}
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return orDash(id)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func prefixed(p, s string) string {
	if s == "" {
		return ""
	}
	return p + s
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
