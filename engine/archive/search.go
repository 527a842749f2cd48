package archive

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pagemap"
)

// Where a Match was found.
const (
	WherePrivate = "private" // a process's own (private) memory
	WhereShared  = "shared"  // shared memory: MAP_SHARED anonymous, memfd, SysV
	WhereFile    = "file"    // a file on a tmpfs: /dev/shm and other tmpfs mounts
)

// Match is one hit of Search in the dumped memory.
type Match struct {
	Where   string `json:"where"` // WherePrivate, WhereShared or WhereFile
	PID     uint32 `json:"pid,omitempty"`
	Comm    string `json:"comm,omitempty"`
	Address Addr   `json:"address"`           // virtual address; for a file, the offset in it
	Mapping string `json:"mapping,omitempty"` // the VMA's name; for a file, its path
	Text    string `json:"text"`              // the match, non-printable bytes as '.'
	Context string `json:"context"`           // the match with the context bytes around it
}

// Query is what Search looks for, and where.
type Query struct {
	// Pattern is a literal; Regexp, when set, is used instead. A regular
	// expression match that crosses a chunk boundary is found when it is at
	// most Config.GrepOverlap bytes long; matches never span two separately
	// dumped page runs.
	Pattern string
	Regexp  *regexp.Regexp
	// PIDs limits the search to these processes' private memory and the
	// shared objects they map; empty means every process, and /dev/shm.
	PIDs []uint32
	// Context is how many bytes to show either side of a match; 0 means
	// Config.GrepContext, negative none.
	Context int
	// MaxMatches stops the search; 0 means Config.MaxMatches.
	MaxMatches int
	// Pages, when set, keeps only matches that start on a page it accepts
	// (page-aligned address; private and shared memory only): Compare's
	// changed pages.
	Pages func(pid uint32, page uint64) bool
}

// SearchResult is what Search found.
type SearchResult struct {
	Matches []Match `json:"matches"`
	// Truncated: the search stopped at MaxMatches; there may be more.
	Truncated  bool  `json:"truncated"`
	MaxMatches int   `json:"maxMatches"`
	Searched   int64 `json:"searched"` // bytes read
}

// Grep searches every process's dumped memory, shared memory and /dev/shm
// for the literal pattern. It returns ErrMatchLimit with the matches when
// it stopped at Config.MaxMatches.
func (a *Archive) Grep(pattern string) ([]Match, error) {
	res, err := a.Search(Query{Pattern: pattern})
	if err == nil && res.Truncated {
		err = ErrMatchLimit
	}
	return res.Matches, err
}

// GrepRegexp is Grep with a regular expression.
func (a *Archive) GrepRegexp(re *regexp.Regexp) ([]Match, error) {
	if re == nil {
		return nil, errors.New("grep: nil regular expression")
	}
	res, err := a.Search(Query{Regexp: re})
	if err == nil && res.Truncated {
		err = ErrMatchLimit
	}
	return res.Matches, err
}

const grepChunk = 1 << 20

// searcher is one Search in progress.
type searcher struct {
	a       *Archive
	q       Query
	re      *regexp.Regexp
	overlap int
	ctx     int
	max     int
	res     SearchResult
	buf     []byte
	pids    map[uint32]bool
}

var errStop = errors.New("stop")

// Search looks for q in the dumped memory: private memory of each process,
// shared memory objects (attributed to a process that maps them), and the
// files of tmpfs mounts such as /dev/shm (Podman's devshm-checkpoint.tar,
// CRIU's tmpfs images). Reaching MaxMatches is not an error: the result says
// Truncated.
func (a *Archive) Search(q Query) (SearchResult, error) {
	if a.report == nil {
		return SearchResult{}, errors.New("grep: archive is closed or was not read")
	}
	s := &searcher{a: a, q: q, ctx: q.Context, max: q.MaxMatches}
	switch {
	case q.Regexp != nil:
		s.re, s.overlap = q.Regexp, a.cfg.GrepOverlap
	case q.Pattern != "":
		s.re, s.overlap = regexp.MustCompile(regexp.QuoteMeta(q.Pattern)), len(q.Pattern)-1
	default:
		return SearchResult{}, errors.New("grep: empty pattern")
	}
	switch {
	case s.ctx == 0:
		s.ctx = a.cfg.GrepContext
	case s.ctx < 0:
		s.ctx = 0
	}
	if s.max <= 0 {
		s.max = a.cfg.MaxMatches
	}
	s.res.MaxMatches = s.max
	if len(q.PIDs) > 0 {
		s.pids = map[uint32]bool{}
		for _, p := range q.PIDs {
			s.pids[p] = true
		}
	}
	s.buf = make([]byte, 0, grepChunk+s.overlap)
	err := s.run()
	if errors.Is(err, errStop) {
		s.res.Truncated, err = true, nil
	}
	return s.res, err
}

func (s *searcher) run() error {
	a := s.a
	for _, p := range a.report.Processes {
		if s.pids != nil && !s.pids[p.PID] {
			continue
		}
		m := a.procs[p.PID]
		if m == nil || m.pages == nil {
			continue
		}
		for _, r := range m.runs {
			err := s.scan(m.pages.r, r.off, r.end-r.vaddr, func(pos uint64, buf []byte, loc []int, pre func(int) []byte) (Match, bool) {
				addr := r.vaddr + pos
				if s.q.Pages != nil && !s.q.Pages(p.PID, addr&^uint64(m.pageSize-1)) {
					return Match{}, false
				}
				mt := Match{Where: WherePrivate, PID: p.PID, Comm: p.Comm, Address: Addr(addr)}
				mt.Mapping = mappingName(m.mappings, addr)
				return mt, true
			})
			if err != nil {
				return fmt.Errorf("grep: pid %d: %w", p.PID, err)
			}
		}
	}
	for _, o := range a.shmem {
		user, ok := o.user(s.pids)
		if !ok {
			continue
		}
		for _, r := range o.runs {
			err := s.scan(o.pages.r, r.off, r.end-r.vaddr, func(pos uint64, buf []byte, loc []int, pre func(int) []byte) (Match, bool) {
				off := r.vaddr + pos
				mt := Match{Where: WhereShared, PID: user.pid, Comm: user.comm, Address: Addr(off), Mapping: fmt.Sprintf("shmem %d offset 0x%x", o.shmid, off)}
				if user.pid != 0 {
					mt.Address = Addr(user.start + off - user.pgoff)
					mt.Mapping = user.name
				}
				if s.q.Pages != nil && !s.q.Pages(mt.PID, uint64(mt.Address)&^uint64(a.cfg.PageSize-1)) {
					return Match{}, false
				}
				return mt, true
			})
			if err != nil {
				return fmt.Errorf("grep: shared memory %d: %w", o.shmid, err)
			}
		}
	}
	if s.pids != nil || s.q.Pages != nil {
		return nil
	}
	for _, name := range sortedKeys(a.blobs) {
		if err := s.scanTmpfs(name); err != nil {
			return fmt.Errorf("grep: %s: %w", name, err)
		}
	}
	return nil
}

// scan searches size bytes at off of r in chunks, with an overlap into the
// next chunk; only matches starting inside a chunk count, so none is found
// twice. at turns a match into a Match (or rejects it).
func (s *searcher) scan(r interface {
	ReadAt([]byte, int64) (int, error)
}, off int64, size uint64,
	at func(pos uint64, buf []byte, loc []int, pre func(int) []byte) (Match, bool)) error {
	for pos := uint64(0); pos < size; pos += grepChunk {
		n := min(uint64(grepChunk+s.overlap), size-pos)
		buf := s.buf[:n]
		if _, err := r.ReadAt(buf, off+int64(pos)); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				err = truncatedf("%v", err)
			}
			return err
		}
		s.res.Searched += int64(min(n, grepChunk))
		for _, loc := range s.re.FindAllIndex(buf, -1) {
			if loc[0] >= grepChunk || loc[1] == loc[0] {
				continue
			}
			pre := func(want int) []byte {
				w := min(uint64(want), pos)
				b := make([]byte, w)
				if _, err := r.ReadAt(b, off+int64(pos-w)); err != nil {
					return nil
				}
				return b
			}
			mt, ok := at(pos+uint64(loc[0]), buf, loc, pre)
			if !ok {
				continue
			}
			if len(s.res.Matches) >= s.max {
				return errStop
			}
			s.fill(&mt, buf, loc, pos, pre)
			s.res.Matches = append(s.res.Matches, mt)
		}
	}
	return nil
}

// fill sets a match's text and context; context before the chunk start is
// read with pre.
func (s *searcher) fill(mt *Match, buf []byte, loc []int, pos uint64, pre func(int) []byte) {
	lo, hi := max(0, loc[0]-s.ctx), min(len(buf), loc[1]+s.ctx)
	context := buf[lo:hi]
	if loc[0]-s.ctx < 0 && pos > 0 {
		context = append(pre(s.ctx-loc[0]), context...)
	}
	text := buf[loc[0]:loc[1]]
	if len(text) > 256 {
		text = text[:256]
	}
	mt.Text, mt.Context = printable(text), printable(context)
}

// scanTmpfs searches the files of a tmpfs tar: Podman's
// devshm-checkpoint.tar (plain) or CRIU's tmpfs-dev-N.tar.gz.img (gzip).
func (s *searcher) scanTmpfs(name string) error {
	b := s.a.blobs[name]
	var r io.Reader = bufio.NewReader(io.NewSectionReader(b.r, 0, b.size))
	mount := "/dev/shm"
	if strings.HasSuffix(name, tmpfsImageSuffix) {
		g, err := gzip.NewReader(r)
		if err != nil {
			return compressionErr("gzip", err)
		}
		defer g.Close()
		r = g
		mount = s.a.tmpfsMount(name)
	}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return corruptf("tar: %v", err)
		}
		if hdr.Typeflag != tar.TypeReg || hdr.Size == 0 {
			continue
		}
		// Tar members are read once, in order: buffer each file up to its
		// size in chunks through a temporary ReaderAt of one chunk.
		file := path.Join(mount, cleanName(hdr.Name))
		if err := s.scanStream(tr, hdr.Size, file); err != nil {
			return err
		}
	}
}

// scanStream searches a stream of size bytes (a file in a tar) chunk by
// chunk, keeping the overlap from the previous chunk.
func (s *searcher) scanStream(r io.Reader, size int64, file string) error {
	var prev []byte // the last overlap bytes of the previous chunk, for context
	for pos := int64(0); pos < size; {
		n := min(int64(grepChunk), size-pos)
		buf := make([]byte, len(prev), len(prev)+int(n))
		copy(buf, prev)
		chunk := buf[len(prev) : len(prev)+int(n)]
		if _, err := io.ReadFull(r, chunk); err != nil {
			return truncatedf("%s: %v", file, err)
		}
		buf = buf[:len(prev)+int(n)]
		base := pos - int64(len(prev))
		s.res.Searched += n
		for _, loc := range s.re.FindAllIndex(buf, -1) {
			if loc[1] == loc[0] || pos > 0 && loc[1] <= len(prev) {
				continue // inside the previous chunk: found there
			}
			if len(s.res.Matches) >= s.max {
				return errStop
			}
			mt := Match{Where: WhereFile, Address: Addr(base + int64(loc[0])), Mapping: file}
			s.fill(&mt, buf, loc, 0, nil)
			s.res.Matches = append(s.res.Matches, mt)
		}
		pos += n
		keep := min(len(buf), s.overlap+s.ctx)
		prev = append(prev[:0:0], buf[len(buf)-keep:]...)
	}
	return nil
}

func mappingName(ms []Mapping, addr uint64) string {
	i := slices.IndexFunc(ms, func(v Mapping) bool { return uint64(v.Start) <= addr && addr < uint64(v.End) })
	if i < 0 {
		return ""
	}
	return ms[i].Name
}

func printable(b []byte) string {
	out := make([]byte, len(b))
	for i, c := range b {
		if c >= 0x20 && c < 0x7f {
			out[i] = c
		} else {
			out[i] = '.'
		}
	}
	return string(out)
}

// shmemObj is one shared memory object CRIU dumped once for all its users
// (pagemap-shmem-<shmid>.img): run addresses are offsets in the object.
type shmemObj struct {
	shmid uint64
	pages *pagesFile
	runs  []pageRun
	users []shmemUser
}

// shmemUser is a process mapping a shared object.
type shmemUser struct {
	pid          uint32
	comm, name   string
	start, pgoff uint64
}

// user picks the process a match is attributed to: the first that maps the
// object (of pids, when given). Without users the object is reported by
// its id alone.
func (o *shmemObj) user(pids map[uint32]bool) (shmemUser, bool) {
	for _, u := range o.users {
		if pids == nil || pids[u.pid] {
			return u, true
		}
	}
	return shmemUser{}, pids == nil
}

// buildShmem reads pagemap-shmem-*.img and attributes each object to the
// processes whose mappings name it.
func (a *Archive) buildShmem(rep *Report) error {
	for _, name := range sortedKeys(a.files) {
		base := path.Base(name)
		if path.Dir(name) != CheckpointDirectory || !strings.HasPrefix(base, shmemPagemapPrefix) || !strings.HasSuffix(base, ".img") {
			continue
		}
		shmid, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(base, shmemPagemapPrefix), ".img"), 10, 64)
		if err != nil {
			return fileErr(name, corruptf("bad shared memory id"))
		}
		raw, err := imageEntries(a.files[name].data, "PAGEMAP")
		if err != nil {
			return fileErr(name, err)
		}
		if len(raw) == 0 {
			return fileErr(name, corruptf("no pagemap head"))
		}
		var head pagemap.PagemapHead
		if err := unmarshalOpts.Unmarshal(raw[0], &head); err != nil {
			return fileErr(name, corruptf("head: %v", err))
		}
		pf := a.pages[head.GetPagesId()]
		o := &shmemObj{shmid: shmid, pages: pf}
		var off int64
		for i, b := range raw[1:] {
			e, err := parsePagemapEntry(b)
			if err != nil {
				return fileErr(name, corruptf("entry %d: %v", i+1, err))
			}
			if e.flags&pePresent == 0 {
				continue
			}
			n := e.nrPages * uint64(a.cfg.PageSize)
			if e.nrPages > 1<<40 || e.vaddr+n < e.vaddr {
				return fileErr(name, corruptf("entry %d: page count overflows", i+1))
			}
			o.runs = append(o.runs, pageRun{vaddr: e.vaddr, end: e.vaddr + n, off: off})
			off += int64(n)
		}
		if len(o.runs) == 0 {
			continue
		}
		if pf == nil || pf.size < off {
			return fileErr(path.Join(CheckpointDirectory, fmt.Sprintf(pagesImageFmt, head.GetPagesId())),
				truncatedf("%s lists %d bytes of shared memory that are not there", base, off))
		}
		sort.Slice(o.runs, func(i, j int) bool { return o.runs[i].vaddr < o.runs[j].vaddr })
		for _, p := range rep.Processes {
			for _, m := range a.shmemMaps[p.PID] {
				if m.shmid == shmid {
					o.users = append(o.users, shmemUser{pid: p.PID, comm: p.Comm, name: m.name, start: m.start, pgoff: m.pgoff})
				}
			}
		}
		a.shmem = append(a.shmem, o)
	}
	return nil
}

// tmpfsMount names the mount a tmpfs-dev-<mnt id>.tar.gz.img belongs to,
// from the mount namespace images.
func (a *Archive) tmpfsMount(name string) string {
	base := path.Base(name)
	id, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(base, tmpfsImagePrefix), tmpfsImageSuffix), 10, 32)
	if err != nil {
		return "tmpfs " + base
	}
	for _, fname := range sortedKeys(a.files) {
		if !strings.HasPrefix(path.Base(fname), mountpointsPrefix) {
			continue
		}
		mnts, err := decodeImage(a.files[fname].data, "MNTS", func() *mnt.MntEntry { return new(mnt.MntEntry) })
		if err != nil {
			continue
		}
		for _, m := range mnts {
			if uint64(m.GetMntId()) == id {
				return m.GetMountpoint()
			}
		}
	}
	return fmt.Sprintf("tmpfs mount %d", id)
}

// shmemMap is one process's mapping of a shared memory object.
type shmemMap struct {
	shmid, start, pgoff uint64
	name                string
}
