package archive

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	criu_core "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mm"
)

// ErrNoCore: a process cannot be written as a core file (another
// architecture than x86-64, or its images lack registers or mappings).
var ErrNoCore = fmt.Errorf("%w: no core file for this process", ErrCorrupt)

// WriteCores writes an ELF core file per process into dir, named
// core.<pid>, in the form the kernel writes and gdb loads: a PT_NOTE with
// NT_PRPSINFO, per thread NT_PRSTATUS (the registers CRIU saved, the main
// thread first) and NT_FPREGSET, NT_AUXV and NT_FILE (the file-backed
// mappings), then a PT_LOAD per stretch of each mapping. Dumped pages are
// written (a sparse file: pages never dumped take no space); mappings or
// parts CRIU did not dump, such as program text, have no file contents, so
// gdb reads them from the executable given beside the core. pids limits
// which processes; empty means all. It returns the paths written.
func (a *Archive) WriteCores(dir string, pids []uint32) ([]string, error) {
	files, err := a.fileTable()
	if err != nil {
		return nil, err
	}
	want := map[uint32]bool{}
	for _, p := range pids {
		want[p] = true
	}
	var out []string
	for _, p := range a.report.Processes {
		if len(want) > 0 && !want[p.PID] {
			continue
		}
		path := filepath.Join(dir, fmt.Sprintf("core.%d", p.PID))
		if err := a.writeCore(path, p, files); err != nil {
			return out, fmt.Errorf("core of pid %d: %w", p.PID, err)
		}
		out = append(out, path)
	}
	return out, nil
}

// coreSegment is one PT_LOAD: [start, end) with the first filesz bytes
// read from r at off.
type coreSegment struct {
	start, end, filesz uint64
	flags              elf.ProgFlag
	r                  io.ReaderAt
	off                int64
	fileOff            uint64 // in the core file
}

func (a *Archive) writeCore(path string, p Process, files map[uint32]*fdinfo.FileEntry) (err error) {
	ck := CheckpointDirectory + "/"
	mainCore, err := a.coreImage(p.PID)
	if err != nil {
		return err
	}
	if mainCore.GetMtype() != criu_core.CoreEntry_X86_64 {
		return fmt.Errorf("%w: architecture %s (only x86-64 is written)", ErrNoCore, mainCore.GetMtype())
	}
	mmData, ok := a.image(fmt.Sprintf(mmImageFmt, p.PID))
	if !ok {
		return fmt.Errorf("%w: %s%s missing", ErrNoCore, ck, fmt.Sprintf(mmImageFmt, p.PID))
	}
	mme, err := decodeSingle(mmData, "MM", func() *mm.MmEntry { return new(mm.MmEntry) })
	if err != nil {
		return fileErr(ck+fmt.Sprintf(mmImageFmt, p.PID), err)
	}
	mem := a.procs[p.PID]

	// Notes.
	var notes bytes.Buffer
	writeNote(&notes, elf.NT_PRPSINFO, prpsinfo(p, mainCore))
	threads := p.Threads
	if len(threads) == 0 {
		threads = []uint32{p.PID}
	}
	// The main thread first: gdb takes the first NT_PRSTATUS as current.
	sort.SliceStable(threads, func(i, j int) bool { return threads[i] == p.PID && threads[j] != p.PID })
	for _, tid := range threads {
		tc := mainCore
		if tid != p.PID {
			if tc, err = a.coreImage(tid); err != nil {
				return err
			}
		}
		ti := tc.GetThreadInfo()
		if ti.GetGpregs() == nil {
			return fmt.Errorf("%w: thread %d has no registers", ErrNoCore, tid)
		}
		writeNote(&notes, elf.NT_PRSTATUS, prstatus(p, tid, ti.GetGpregs()))
		if fp := ti.GetFpregs(); fp != nil {
			writeNote(&notes, elf.NT_FPREGSET, fpregset(fp))
		}
	}
	if auxv := mme.GetMmSavedAuxv(); len(auxv) > 0 {
		var b bytes.Buffer
		for _, v := range auxv {
			binary.Write(&b, binary.LittleEndian, v)
		}
		writeNote(&notes, ntAuxv, b.Bytes())
	}

	// Segments, and NT_FILE for file-backed mappings.
	pageSize := uint64(a.cfg.PageSize)
	if mem != nil {
		pageSize = uint64(mem.pageSize)
	}
	var segs []coreSegment
	type fileMap struct {
		start, end, pgoff uint64
		name              string
	}
	var fileMaps []fileMap
	for _, v := range mme.GetVmas() {
		st := v.GetStatus()
		if st&(vmaAreaVvar|vmaAreaVsyscall) != 0 || v.GetEnd() <= v.GetStart() {
			continue
		}
		var flags elf.ProgFlag
		if v.GetProt()&1 != 0 {
			flags |= elf.PF_R
		}
		if v.GetProt()&2 != 0 {
			flags |= elf.PF_W
		}
		if v.GetProt()&4 != 0 {
			flags |= elf.PF_X
		}
		if st&(vmaFilePrivate|vmaFileShared) != 0 {
			if name := filePath(files, uint32(v.GetShmid())); name != "" {
				fileMaps = append(fileMaps, fileMap{v.GetStart(), v.GetEnd(), v.GetPgoff() / pageSize, name})
			}
		}
		// Split the mapping into dumped and undumped stretches.
		pos := v.GetStart()
		if mem != nil && mem.pages != nil {
			for _, r := range mem.runs {
				lo, hi := max(r.vaddr, v.GetStart()), min(r.end, v.GetEnd())
				if lo >= hi {
					continue
				}
				if lo > pos {
					segs = append(segs, coreSegment{start: pos, end: lo, flags: flags})
				}
				segs = append(segs, coreSegment{start: lo, end: hi, filesz: hi - lo, flags: flags, r: mem.pages.r, off: r.off + int64(lo-r.vaddr)})
				pos = hi
			}
		}
		if pos < v.GetEnd() {
			segs = append(segs, coreSegment{start: pos, end: v.GetEnd(), flags: flags})
		}
	}
	if len(fileMaps) > 0 {
		var b bytes.Buffer
		le := binary.LittleEndian
		binary.Write(&b, le, uint64(len(fileMaps)))
		binary.Write(&b, le, pageSize)
		for _, f := range fileMaps {
			binary.Write(&b, le, [3]uint64{f.start, f.end, f.pgoff})
		}
		for _, f := range fileMaps {
			b.WriteString(f.name)
			b.WriteByte(0)
		}
		writeNote(&notes, ntFile, b.Bytes())
	}
	if len(segs)+1 >= 0xffff {
		return fmt.Errorf("%w: %d segments, more than an ELF header counts", ErrNoCore, len(segs))
	}

	// Layout: header, program headers, notes, then page-aligned data.
	const ehsize, phsize = 64, 56
	phnum := len(segs) + 1
	notesOff := uint64(ehsize + phsize*phnum)
	dataOff := alignUp(notesOff+uint64(notes.Len()), pageSize)
	for i := range segs {
		if segs[i].filesz > 0 {
			segs[i].fileOff = dataOff
			dataOff += segs[i].filesz
		}
	}
	var hdr bytes.Buffer
	le := binary.LittleEndian
	ident := [16]byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT), byte(elf.ELFOSABI_NONE)}
	hdr.Write(ident[:])
	binary.Write(&hdr, le, struct {
		Type, Machine                                        uint16
		Version                                              uint32
		Entry, Phoff, Shoff                                  uint64
		Flags                                                uint32
		Ehsize, Phentsize, Phnum, Shentsize, Shnum, Shstrndx uint16
	}{uint16(elf.ET_CORE), uint16(elf.EM_X86_64), uint32(elf.EV_CURRENT), 0, ehsize, 0, 0, ehsize, phsize, uint16(phnum), 64, 0, 0})
	ph := func(typ elf.ProgType, flags elf.ProgFlag, off, vaddr, filesz, memsz, align uint64) {
		binary.Write(&hdr, le, struct {
			Type, Flags                             uint32
			Off, Vaddr, Paddr, Filesz, Memsz, Align uint64
		}{uint32(typ), uint32(flags), off, vaddr, 0, filesz, memsz, align})
	}
	ph(elf.PT_NOTE, 0, notesOff, 0, uint64(notes.Len()), 0, 4)
	for _, s := range segs {
		off := s.fileOff
		if s.filesz == 0 {
			off = dataOff // no contents: any offset within the file
		}
		ph(elf.PT_LOAD, s.flags, off, s.start, s.filesz, s.end-s.start, pageSize)
	}

	f, err := os.OpenFile(path+".partial", os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err = f.WriteAt(hdr.Bytes(), 0); err != nil {
		return err
	}
	if _, err = f.WriteAt(notes.Bytes(), int64(notesOff)); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for _, s := range segs {
		for done := uint64(0); done < s.filesz; {
			n := min(uint64(len(buf)), s.filesz-done)
			if _, err = s.r.ReadAt(buf[:n], s.off+int64(done)); err != nil {
				return pagesReadErr(mem, err)
			}
			if !allZero(buf[:n]) { // leave holes for zero pages
				if _, err = f.WriteAt(buf[:n], int64(s.fileOff+done)); err != nil {
					return err
				}
			}
			done += n
		}
	}
	if err = f.Truncate(int64(dataOff)); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func (a *Archive) coreImage(tid uint32) (*criu_core.CoreEntry, error) {
	name := fmt.Sprintf(coreImageFmt, tid)
	data, ok := a.image(name)
	if !ok {
		return nil, fmt.Errorf("%w: %s/%s missing", ErrNoCore, CheckpointDirectory, name)
	}
	c, err := decodeSingle(data, "CORE", func() *criu_core.CoreEntry { return new(criu_core.CoreEntry) })
	if err != nil {
		return nil, fileErr(CheckpointDirectory+"/"+name, err)
	}
	return c, nil
}

// Note types debug/elf does not name.
const (
	ntAuxv elf.NType = 6
	ntFile elf.NType = 0x46494c45
)

func alignUp(v, a uint64) uint64 { return (v + a - 1) / a * a }

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func writeNote(w *bytes.Buffer, typ elf.NType, desc []byte) {
	name := []byte("CORE\x00")
	le := binary.LittleEndian
	binary.Write(w, le, [3]uint32{uint32(len(name)), uint32(len(desc)), uint32(typ)})
	w.Write(name)
	w.Write(make([]byte, alignUp(uint64(len(name)), 4)-uint64(len(name))))
	w.Write(desc)
	w.Write(make([]byte, alignUp(uint64(len(desc)), 4)-uint64(len(desc))))
}

// prstatus is the x86-64 struct elf_prstatus (336 bytes).
func prstatus(p Process, tid uint32, r interface {
	GetR15() uint64
	GetR14() uint64
	GetR13() uint64
	GetR12() uint64
	GetBp() uint64
	GetBx() uint64
	GetR11() uint64
	GetR10() uint64
	GetR9() uint64
	GetR8() uint64
	GetAx() uint64
	GetCx() uint64
	GetDx() uint64
	GetSi() uint64
	GetDi() uint64
	GetOrigAx() uint64
	GetIp() uint64
	GetCs() uint64
	GetFlags() uint64
	GetSp() uint64
	GetSs() uint64
	GetFsBase() uint64
	GetGsBase() uint64
	GetDs() uint64
	GetEs() uint64
	GetFs() uint64
	GetGs() uint64
}) []byte {
	var b bytes.Buffer
	le := binary.LittleEndian
	b.Write(make([]byte, 12+4+16)) // siginfo, cursig, pad, sigpend, sighold
	binary.Write(&b, le, [4]uint32{tid, p.PPID, p.PGID, p.SID})
	b.Write(make([]byte, 4*16)) // utime, stime, cutime, cstime
	binary.Write(&b, le, [27]uint64{
		r.GetR15(), r.GetR14(), r.GetR13(), r.GetR12(), r.GetBp(), r.GetBx(), r.GetR11(), r.GetR10(),
		r.GetR9(), r.GetR8(), r.GetAx(), r.GetCx(), r.GetDx(), r.GetSi(), r.GetDi(), r.GetOrigAx(),
		r.GetIp(), r.GetCs(), r.GetFlags(), r.GetSp(), r.GetSs(), r.GetFsBase(), r.GetGsBase(),
		r.GetDs(), r.GetEs(), r.GetFs(), r.GetGs(),
	})
	binary.Write(&b, le, [2]uint32{1, 0}) // pr_fpvalid, padding
	return b.Bytes()
}

// fpregset is the 512-byte fxsave area (user_fpregs_struct).
func fpregset(fp interface {
	GetCwd() uint32
	GetSwd() uint32
	GetTwd() uint32
	GetFop() uint32
	GetRip() uint64
	GetRdp() uint64
	GetMxcsr() uint32
	GetMxcsrMask() uint32
	GetStSpace() []uint32
	GetXmmSpace() []uint32
}) []byte {
	var b bytes.Buffer
	le := binary.LittleEndian
	binary.Write(&b, le, [4]uint16{uint16(fp.GetCwd()), uint16(fp.GetSwd()), uint16(fp.GetTwd()), uint16(fp.GetFop())})
	binary.Write(&b, le, [2]uint64{fp.GetRip(), fp.GetRdp()})
	binary.Write(&b, le, [2]uint32{fp.GetMxcsr(), fp.GetMxcsrMask()})
	st, xmm := make([]uint32, 32), make([]uint32, 64)
	copy(st, fp.GetStSpace())
	copy(xmm, fp.GetXmmSpace())
	binary.Write(&b, le, st)
	binary.Write(&b, le, xmm)
	b.Write(make([]byte, 512-b.Len()))
	return b.Bytes()
}

// prpsinfo is the x86-64 struct elf_prpsinfo (136 bytes).
func prpsinfo(p Process, c *criu_core.CoreEntry) []byte {
	var b bytes.Buffer
	le := binary.LittleEndian
	state, sname := byte(0), byte('R')
	switch c.GetTc().GetTaskState() {
	case taskStopped:
		state, sname = 3, 'T'
	case taskZombie:
		state, sname = 4, 'Z'
	}
	b.Write([]byte{state, sname, 0, 0})
	b.Write(make([]byte, 4))        // padding
	binary.Write(&b, le, uint64(0)) // pr_flag
	var uid, gid uint32
	if cr := c.GetThreadCore().GetCreds(); cr != nil {
		uid, gid = cr.GetUid(), cr.GetGid()
	}
	binary.Write(&b, le, [6]uint32{uid, gid, p.PID, p.PPID, p.PGID, p.SID})
	var fname [16]byte
	copy(fname[:15], p.Comm)
	b.Write(fname[:])
	var args [80]byte
	cmd := []byte{}
	for i, s := range p.Cmdline {
		if i > 0 {
			cmd = append(cmd, ' ')
		}
		cmd = append(cmd, s...)
	}
	copy(args[:79], cmd)
	b.Write(args[:])
	return b.Bytes()
}
