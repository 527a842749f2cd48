package archive

import (
	"fmt"
	"io"
	"sort"
)

// DumpMemory writes the dumped memory of process pid to raw, every dumped
// page run one after the other in address order, and a maps file to maps
// that says where each run is: one line per run,
//
//	START-END PERMS OFFSET NAME
//
// with START and END the run's virtual addresses, PERMS and NAME those of the
// mapping it lies in (as in /proc/PID/maps), and OFFSET where the run starts
// in raw (all hexadecimal). Shared memory mapped by the process follows its
// private memory. Pages that were not dumped (file-backed text, untouched
// memory) are not in raw.
func (a *Archive) DumpMemory(pid uint32, raw, maps io.Writer) (int64, error) {
	m := a.procs[pid]
	if m == nil {
		return 0, fmt.Errorf("pid %d: %w", pid, errNotDumped)
	}
	type seg struct {
		start, end uint64
		r          io.ReaderAt
		off        int64
		prot, name string
	}
	var segs []seg
	mapping := func(addr uint64) (string, string) {
		for _, v := range m.mappings {
			if uint64(v.Start) <= addr && addr < uint64(v.End) {
				return v.Prot, v.Name
			}
		}
		return "----", ""
	}
	for _, r := range m.runs {
		prot, name := mapping(r.vaddr)
		segs = append(segs, seg{r.vaddr, r.end, m.pages.r, r.off, prot, name})
	}
	for _, o := range a.shmem {
		for _, u := range o.users {
			if u.pid != pid {
				continue
			}
			for _, r := range o.runs {
				start := u.start + r.vaddr - u.pgoff
				prot, name := mapping(start)
				segs = append(segs, seg{start, start + (r.end - r.vaddr), o.pages.r, r.off, prot, name})
			}
		}
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].start < segs[j].start })
	var off int64
	for _, s := range segs {
		n := int64(s.end - s.start)
		if _, err := fmt.Fprintf(maps, "%x-%x %s %08x %s\n", s.start, s.end, s.prot, off, s.name); err != nil {
			return off, err
		}
		if _, err := io.Copy(raw, io.NewSectionReader(s.r, s.off, n)); err != nil {
			return off, fmt.Errorf("pid %d memory at 0x%x: %w", pid, s.start, err)
		}
		off += n
	}
	return off, nil
}
