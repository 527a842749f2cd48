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
}

// AllSections turns every optional section on.
var AllSections = RenderOptions{Mappings: true, Files: true, Sockets: true, Diff: true}

// Render writes r as a tree, in the manner of checkpointctl inspect, with
// every section but the memory mappings (tens of lines per process).
func Render(w io.Writer, r *Report) error {
	return RenderWith(w, r, RenderOptions{Files: true, Sockets: true, Diff: true})
}

// RenderWith writes r as a tree with the chosen sections.
func RenderWith(w io.Writer, r *Report, opts RenderOptions) error {
	c := r.Container
	root := &node{text: fmt.Sprintf("%s (%s)", orDash(c.Name), shortID(c.ID))}
	root.add("Image: %s", orDash(c.Image))
	if c.ImageID != "" {
		root.add("Image ID: %s", shortID(c.ImageID))
	}
	root.add("Engine: %s%s", orDash(c.Engine), prefixed(" ", c.EngineVersion))
	root.add("Runtime: %s%s", orDash(c.Runtime), prefixed(" ", r.Checkpoint.RuntimeVersion))
	root.add("Created: %s", fmtTime(c.Created))
	if len(c.Command) > 0 {
		root.add("Command: %s", strings.Join(c.Command, " "))
	}
	for _, n := range c.Networks {
		root.add("Network %s/%s: %s %s", n.Name, n.Interface, strings.Join(n.Addresses, ","), n.MAC)
	}

	ck := r.Checkpoint
	cn := root.add("Checkpoint")
	cn.add("Checkpointed: %s", fmtTime(ck.CheckpointedAt))
	if ck.CRIUVersion != "" {
		cn.add("CRIU: %s", ck.CRIUVersion)
	}
	if ck.Kernel != "" {
		cn.add("Kernel: %s%s", ck.Kernel, prefixed(" ", ck.HostArch))
	}
	cn.add("Archive: %s uncompressed (compression %s)", size(ck.ArchiveSize), ck.Compression)
	cn.add("CRIU images: %s, of which memory pages %s (page size %d)", size(ck.CheckpointSize), size(ck.MemorySize), ck.PageSize)
	if s := ck.Stats; s != nil {
		cn.add("Dump stats: frozen %v, memdump %v, memwrite %v, pages scanned %d, written %d",
			s.FrozenTime, s.MemdumpTime, s.MemwriteTime, s.PagesScanned, s.PagesWritten)
	}

	pt := root.add("Process tree")
	byPID := map[uint32]*node{}
	for i := range r.Processes {
		p := &r.Processes[i]
		parent := pt
		if pn, ok := byPID[p.PPID]; ok {
			parent = pn
		}
		n := parent.add("[%d] %s", p.PID, strings.Join(p.Cmdline, " "))
		byPID[p.PID] = n
		info := fmt.Sprintf("comm %s, %d thread(s), %s of memory dumped", p.Comm, max(1, len(p.Threads)), size(p.MemoryDumped))
		if p.Exe != "" {
			info += ", exe " + p.Exe
		}
		if p.Cwd != "" {
			info += ", cwd " + p.Cwd
		}
		n.add("%s", info)
		if opts.Sockets && len(p.Sockets) > 0 {
			sn := n.add("Sockets")
			for _, s := range p.Sockets {
				line := fmt.Sprintf("[%d] %s %s %s %s", s.FD, s.Family, s.Protocol, s.State, s.Local)
				if s.State != "LISTEN" && s.State != "UNCONN" {
					line += " -> " + s.Remote
				}
				sn.add("%s", line)
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
		fmt.Fprintf(&b, "pid %d (%s) 0x%012x %s: %q\n", m.PID, m.Comm, uint64(m.Address), orDash(m.Mapping), m.Context)
	}
	_, err := io.WriteString(w, b.String())
	return err
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
