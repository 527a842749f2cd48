package archive

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/pagemap"
	"google.golang.org/protobuf/encoding/protowire"
)

// Pagemap flags, from criu/include/pagemap.h.
const (
	peParent  = 1 << 0
	pePresent = 1 << 2
)

// pageRun is a run of contiguous dumped pages: nPages pages starting at the
// virtual address vaddr are stored at offset off of the pages file.
type pageRun struct {
	vaddr, end uint64
	off        int64
}

// procMem is what is needed to read one process's dumped memory.
type procMem struct {
	pid      uint32
	pages    *pagesFile
	pageSize int
	runs     []pageRun // sorted by vaddr
	mappings []Mapping
}

func (m *procMem) dumped() int64 {
	var n int64
	for _, r := range m.runs {
		n += int64(r.end - r.vaddr)
	}
	return n
}

// presentIn counts the dumped bytes in [start, end).
func (m *procMem) presentIn(start, end uint64) uint64 {
	var n uint64
	for _, r := range m.runs {
		lo, hi := max(r.vaddr, start), min(r.end, end)
		if lo < hi {
			n += hi - lo
		}
	}
	return n
}

// loadPagemap reads pagemap-PID.img and checks it against its pages file.
// It returns nil, nil when the process has no pagemap (no memory dumped).
func (a *Archive) loadPagemap(pid uint32) (*procMem, error) {
	name := fmt.Sprintf(pagemapImageFmt, pid)
	full := CheckpointDirectory + "/" + name
	data, ok := a.image(name)
	if !ok {
		return nil, nil
	}
	raw, err := imageEntries(data, "PAGEMAP")
	if err != nil {
		return nil, fileErr(full, err)
	}
	if len(raw) == 0 {
		return nil, fileErr(full, corruptf("no pagemap head"))
	}
	var head pagemap.PagemapHead
	if err := unmarshalOpts.Unmarshal(raw[0], &head); err != nil {
		return nil, fileErr(full, corruptf("head: %v", err))
	}
	type ent struct {
		vaddr  uint64
		nPages uint64
	}
	var present []ent
	var totalPages uint64
	for i, b := range raw[1:] {
		e, err := parsePagemapEntry(b)
		if err != nil {
			return nil, fileErr(full, corruptf("entry %d: %v", i+1, err))
		}
		// Pages kept in a parent image (pre-dump) or left for lazy
		// restore are not in this pages file.
		if e.flags&pePresent == 0 {
			continue
		}
		present = append(present, ent{e.vaddr, e.nrPages})
		totalPages += e.nrPages
		if e.nrPages > 1<<40 || totalPages > 1<<40 {
			return nil, fileErr(full, corruptf("page count overflows"))
		}
	}
	pagesName := CheckpointDirectory + "/" + fmt.Sprintf(pagesImageFmt, head.GetPagesId())
	pf := a.pages[head.GetPagesId()]
	if pf == nil {
		if totalPages == 0 {
			return &procMem{pid: pid, pageSize: a.cfg.PageSize}, nil
		}
		return nil, fileErr(pagesName, fmt.Errorf("%w: missing, but %s lists %d pages", ErrTruncated, name, totalPages))
	}
	pageSize := a.cfg.PageSize
	if totalPages > 0 {
		if pf.size%int64(totalPages) != 0 {
			return nil, fileErr(pagesName, truncatedf("%d bytes do not hold the %d pages %s lists", pf.size, totalPages, name))
		}
		ps := pf.size / int64(totalPages)
		switch ps {
		case 4096, 16384, 65536:
			pageSize = int(ps)
		default:
			return nil, fileErr(pagesName, truncatedf("%d bytes do not hold the %d pages %s lists", pf.size, totalPages, name))
		}
	}
	m := &procMem{pid: pid, pages: pf, pageSize: pageSize}
	var off int64
	for _, e := range present {
		n := e.nPages * uint64(pageSize)
		if e.vaddr+n < e.vaddr {
			return nil, fileErr(full, corruptf("run at 0x%x wraps around", e.vaddr))
		}
		m.runs = append(m.runs, pageRun{vaddr: e.vaddr, end: e.vaddr + n, off: off})
		off += int64(n)
	}
	sort.Slice(m.runs, func(i, j int) bool { return m.runs[i].vaddr < m.runs[j].vaddr })
	for i := 1; i < len(m.runs); i++ {
		if m.runs[i].vaddr < m.runs[i-1].end {
			return nil, fileErr(full, corruptf("runs at 0x%x and 0x%x overlap", m.runs[i-1].vaddr, m.runs[i].vaddr))
		}
	}
	return m, nil
}

type pagemapEntry struct {
	vaddr, nrPages uint64
	flags          uint32
}

// parsePagemapEntry decodes a pagemap_entry by hand: CRIU 4 moved nr_pages
// to a uint64 field 5 (keeping field 2 as compat_nr_pages), which go-criu's
// generated type does not know yet.
func parsePagemapEntry(b []byte) (pagemapEntry, error) {
	var e pagemapEntry
	var compat, nr uint64
	var hasFlags, hasNr, inParent bool
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return e, protowire.ParseError(n)
		}
		b = b[n:]
		if typ != protowire.VarintType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return e, protowire.ParseError(n)
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return e, protowire.ParseError(n)
		}
		b = b[n:]
		switch num {
		case 1:
			e.vaddr = v
		case 2:
			compat = v
		case 3:
			inParent = v != 0
		case 4:
			e.flags, hasFlags = uint32(v), true
		case 5:
			nr, hasNr = v, true
		}
	}
	e.nrPages = compat
	if hasNr {
		e.nrPages = nr
	}
	if !hasFlags {
		e.flags = pePresent
		if inParent {
			e.flags = peParent
		}
	}
	return e, nil
}

// errNotDumped: the requested memory is not in the checkpoint.
var errNotDumped = errors.New("pages not dumped")

// readMem reads [addr, addr+n) of a process's memory; every byte must be
// dumped.
func (m *procMem) readMem(addr uint64, n int) ([]byte, error) {
	if m.pages == nil {
		return nil, errNotDumped
	}
	out := make([]byte, 0, n)
	for len(out) < n {
		cur := addr + uint64(len(out))
		i := sort.Search(len(m.runs), func(i int) bool { return m.runs[i].end > cur })
		if i == len(m.runs) || m.runs[i].vaddr > cur {
			return nil, fmt.Errorf("%w at 0x%x", errNotDumped, cur)
		}
		r := m.runs[i]
		k := int(min(uint64(n-len(out)), r.end-cur))
		buf := make([]byte, k)
		if _, err := m.pages.r.ReadAt(buf, r.off+int64(cur-r.vaddr)); err != nil {
			return nil, pagesReadErr(m, err)
		}
		out = append(out, buf...)
	}
	return out, nil
}

func pagesReadErr(m *procMem, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = truncatedf("%v", err)
	}
	return fmt.Errorf("pid %d pages: %w", m.pid, err)
}

// readArgv reads the NUL-separated argv between mm_arg_start and mm_arg_end.
func (a *Archive) readArgv(m *procMem, start, end uint64) ([]string, error) {
	if end <= start {
		return nil, nil
	}
	n := end - start
	if n > uint64(a.cfg.MaxArgvBytes) {
		n = uint64(a.cfg.MaxArgvBytes)
	}
	b, err := m.readMem(start, int(n))
	if err != nil {
		return nil, err
	}
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil, nil
	}
	return strings.Split(string(b), "\x00"), nil
}
