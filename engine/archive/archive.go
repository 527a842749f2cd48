package archive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Config tunes reading and searching. Zero fields take DefaultConfig's
// values.
type Config struct {
	// TempDir is where memory pages of compressed archives (or archives read
	// from a stream) are copied; "" means os.TempDir().
	TempDir string
	// MaxFileSize bounds every archive member that is held in memory
	// (metadata files and CRIU images other than pages). Larger members are
	// rejected as corrupt.
	MaxFileSize int64
	// MaxPagesSize bounds one pages-*.img (the memory of one process);
	// larger members are rejected as corrupt rather than copied.
	MaxPagesSize int64
	// MaxDiffEntries bounds how many rootfs-diff entries are listed; the rest
	// are counted.
	MaxDiffEntries int
	// MaxArgvBytes bounds the command line read from a process's memory.
	MaxArgvBytes int
	// PageSize is used when it cannot be inferred from the images (it
	// normally is: pagemap page counts against the pages file's size).
	PageSize int
	// GrepContext is how many bytes of context a Match shows on either
	// side; negative means none.
	GrepContext int
	// GrepOverlap is how far a regular expression match may run across two
	// read chunks of contiguous memory and still be found. Literal patterns
	// need no setting: their length is known.
	GrepOverlap int
	// MaxMatches stops Grep; it then returns ErrMatchLimit with the matches.
	MaxMatches int
}

// DefaultConfig returns limits that fit a 1 GiB checkpoint on a small host.
func DefaultConfig() Config {
	return Config{
		MaxFileSize:    64 << 20,
		MaxPagesSize:   64 << 30,
		MaxDiffEntries: 100000,
		MaxArgvBytes:   128 << 10,
		PageSize:       4096,
		GrepContext:    24,
		GrepOverlap:    4096,
		MaxMatches:     1000,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	set := func(v *int64, def int64) {
		if *v <= 0 {
			*v = def
		}
	}
	seti := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&c.MaxFileSize, d.MaxFileSize)
	set(&c.MaxPagesSize, d.MaxPagesSize)
	seti(&c.MaxDiffEntries, d.MaxDiffEntries)
	seti(&c.MaxArgvBytes, d.MaxArgvBytes)
	seti(&c.PageSize, d.PageSize)
	seti(&c.GrepOverlap, d.GrepOverlap)
	seti(&c.MaxMatches, d.MaxMatches)
	switch {
	case c.GrepContext == 0:
		c.GrepContext = d.GrepContext
	case c.GrepContext < 0:
		c.GrepContext = 0
	}
	return c
}

// Archive is an opened checkpoint archive. Its Report is built when it is
// opened; Grep reads memory pages on demand. Close removes temporary files
// and is safe to call more than once.
type Archive struct {
	cfg    Config
	report *Report

	files  map[string]*member // small members kept in memory, by archive path
	pages  map[uint32]*pagesFile
	procs  map[uint32]*procMem // per pid: page runs, for memory reads
	tmpDir string
	src    *os.File // the archive itself, when pages point into it
}

type member struct {
	data    []byte
	modTime time.Time
}

// pagesFile is one pages-<id>.img, either a section of the original archive
// or a temporary copy.
type pagesFile struct {
	r    io.ReaderAt
	size int64
}

// Open reads the checkpoint archive at path. An uncompressed archive is not
// copied: memory pages are read from it in place, so it must stay unchanged
// until Close.
func Open(path string, cfg Config) (*Archive, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open checkpoint archive: %w", err)
	}
	var head [6]byte
	n, _ := f.ReadAt(head[:], 0)
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && compressionOf(head[:n]) == "" {
		a, err := read(&seekingCounter{countingReader{r: f}, f}, f, "", cfg)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		a.src = f
		return a, nil
	}
	defer f.Close()
	a, err := Read(f, cfg)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return a, nil
}

// Read reads a checkpoint archive from r in one pass. Memory pages are
// copied to a temporary directory under cfg.TempDir.
func Read(r io.Reader, cfg Config) (*Archive, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, _ := br.Peek(6)
	comp := compressionOf(head)
	var tr io.Reader = br
	switch comp {
	case "zstd":
		d, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<27))
		if err != nil {
			return nil, fileErr("", corruptf("zstd: %v", err))
		}
		defer d.Close()
		tr = d
	case "gzip":
		g, err := gzip.NewReader(br)
		if err != nil {
			return nil, fileErr("", compressionErr("gzip", err))
		}
		defer g.Close()
		tr = g
	case "xz", "bzip2":
		return nil, fileErr("", corruptf("%s compression is not supported (Podman writes zstd, gzip or none)", comp))
	}
	return read(&countingReader{r: tr}, nil, comp, cfg)
}

func compressionOf(head []byte) string {
	switch {
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "zstd"
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return "gzip"
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return "xz"
	case bytes.HasPrefix(head, []byte("BZh")):
		return "bzip2"
	}
	return ""
}

func compressionErr(kind string, err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return truncatedf("%s stream: %v", kind, err)
	}
	return corruptf("%s stream: %v", kind, err)
}

// countingReader counts the bytes the tar reader consumed (the offset of
// the current member's data, for in-place pages) and how many of the last
// ones were zero (a complete tar ends in two zero blocks).
type countingReader struct {
	r     io.Reader
	n     int64
	zeros int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	i := n
	for i > 0 && p[i-1] == 0 {
		i--
	}
	if i == 0 {
		c.zeros += int64(n)
	} else {
		c.zeros = int64(n - i)
	}
	return n, err
}

func (c *countingReader) counter() *countingReader { return c }

// seekingCounter lets the tar reader seek over members of an uncompressed
// file instead of reading them.
type seekingCounter struct {
	countingReader
	s io.Seeker
}

func (c *seekingCounter) Seek(off int64, whence int) (int64, error) {
	pos, err := c.s.Seek(off, whence)
	if err == nil {
		c.n = pos
		c.zeros = 0
	}
	return pos, err
}

// read streams the tar. When src is set, cr reads src uncompressed and pages
// members are referenced in place instead of copied.
func read(r interface {
	io.Reader
	counter() *countingReader
}, src *os.File, comp string, cfg Config) (_ *Archive, err error) {
	cr := r.counter()
	cfg = cfg.withDefaults()
	a := &Archive{
		cfg:   cfg,
		files: map[string]*member{},
		pages: map[uint32]*pagesFile{},
		procs: map[uint32]*procMem{},
	}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	rep := &Report{}
	rep.Checkpoint.Compression = comp
	if rep.Checkpoint.Compression == "" {
		rep.Checkpoint.Compression = "none"
	}
	tr := tar.NewReader(r)
	entries := 0
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fileErr("", tarErr(err, comp))
		}
		entries++
		name := cleanName(hdr.Name)
		if name == "" {
			continue
		}
		if err := a.member(tr, hdr, name, cr, src, rep); err != nil {
			return nil, fileErr(name, tarErr(err, comp))
		}
	}
	if entries == 0 {
		return nil, fileErr("", fmt.Errorf("%w: empty tar", ErrNotCheckpoint))
	}
	// archive/tar accepts a stream that stops between members; a complete
	// archive ends with two zero blocks.
	if cr.zeros < 1024 {
		return nil, fileErr("", truncatedf("the tar stream ends without its end-of-archive blocks"))
	}
	rep.Checkpoint.ArchiveSize = cr.n
	if err := a.build(rep); err != nil {
		return nil, err
	}
	a.report = rep
	return a, nil
}

func tarErr(err error, comp string) error {
	switch {
	case errors.Is(err, ErrCorrupt), errors.Is(err, ErrTruncated), errors.Is(err, ErrNotCheckpoint):
		return err
	case errors.Is(err, io.ErrUnexpectedEOF):
		return truncatedf("%v", err)
	case errors.Is(err, tar.ErrHeader), errors.Is(err, tar.ErrFieldTooLong), errors.Is(err, tar.ErrInsecurePath):
		return corruptf("tar: %v", err)
	}
	if comp != "" {
		// Decompressor errors: the stream is damaged.
		var pe *os.PathError
		if !errors.As(err, &pe) {
			return corruptf("%s: %v", comp, err)
		}
	}
	return err
}

// cleanName turns a tar member name into a clean relative path.
func cleanName(name string) string {
	name = path.Clean("/" + name)
	return strings.TrimPrefix(name, "/")
}

func (a *Archive) member(tr *tar.Reader, hdr *tar.Header, name string, cr *countingReader, src *os.File, rep *Report) error {
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	if hdr.Typeflag == tar.TypeDir {
		if name == CheckpointDirectory {
			a.files[name] = &member{modTime: hdr.ModTime}
		}
		return nil
	}
	switch {
	case dir == CheckpointDirectory && strings.HasPrefix(base, PagesImagePrefix) && strings.HasSuffix(base, ".img"):
		id, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(base, PagesImagePrefix), ".img"), 10, 32)
		if err != nil {
			return corruptf("pages image with a bad id")
		}
		rep.Checkpoint.CheckpointSize += hdr.Size
		rep.Checkpoint.MemorySize += hdr.Size
		return a.pagesMember(tr, hdr, uint32(id), cr, src)
	case dir == CheckpointDirectory:
		rep.Checkpoint.CheckpointSize += hdr.Size
		if !strings.HasSuffix(base, ".img") || strings.Contains(base, ".tar") {
			return nil // descriptors.json, logs, tmpfs-dev-*.tar.gz.img
		}
	case name == RootFsDiffTar:
		rep.RootfsDiff.Size = hdr.Size
		return a.rootfsDiff(tr, rep)
	case dir == VolumesDirectory:
		rep.Volumes = append(rep.Volumes, Volume{Name: strings.TrimSuffix(base, ".tar"), Size: hdr.Size})
		return nil
	case name == DevShmCheckpointTar:
		rep.Checkpoint.DevShmSize = hdr.Size
		return nil
	case name == ConfigDumpFile, name == SpecDumpFile, name == StatusDumpFile, name == NetworkStatusFile,
		name == DeletedFilesFile, name == StatsDumpFile:
	default:
		return nil // logs, artifacts, pod files: not analysed
	}
	if hdr.Typeflag != tar.TypeReg {
		return corruptf("not a regular file (type %q)", hdr.Typeflag)
	}
	if hdr.Size > a.cfg.MaxFileSize {
		return corruptf("size %d exceeds the limit of %d", hdr.Size, a.cfg.MaxFileSize)
	}
	data, err := io.ReadAll(io.LimitReader(tr, a.cfg.MaxFileSize+1))
	if err != nil {
		return err
	}
	if _, dup := a.files[name]; dup {
		return corruptf("appears twice in the archive")
	}
	a.files[name] = &member{data: data, modTime: hdr.ModTime}
	return nil
}

// pagesMember records where a pages image's bytes are: in place when the
// archive is an uncompressed file and the member is stored plainly, else in a
// temporary copy.
func (a *Archive) pagesMember(tr *tar.Reader, hdr *tar.Header, id uint32, cr *countingReader, src *os.File) error {
	if _, dup := a.pages[id]; dup {
		return corruptf("appears twice in the archive")
	}
	if hdr.Typeflag != tar.TypeReg {
		return corruptf("not a regular file (type %q)", hdr.Typeflag)
	}
	if hdr.Size > a.cfg.MaxPagesSize {
		return corruptf("size %d exceeds the limit of %d", hdr.Size, a.cfg.MaxPagesSize)
	}
	if src != nil && !isSparse(hdr) {
		off := cr.n
		if fi, err := src.Stat(); err == nil && off+hdr.Size > fi.Size() {
			return truncatedf("member of %d bytes at offset %d, but the archive has %d", hdr.Size, off, fi.Size())
		}
		a.pages[id] = &pagesFile{r: io.NewSectionReader(src, off, hdr.Size), size: hdr.Size}
		return nil // tar.Reader skips the data on the next Next()
	}
	if a.tmpDir == "" {
		d, err := os.MkdirTemp(a.cfg.TempDir, "orchestrate-inspect-")
		if err != nil {
			return fmt.Errorf("temporary directory for memory pages: %w", err)
		}
		a.tmpDir = d
	}
	f, err := os.Create(path.Join(a.tmpDir, fmt.Sprintf(pagesImageFmt, id)))
	if err != nil {
		return err
	}
	n, err := io.Copy(f, tr)
	if err != nil {
		f.Close()
		return err
	}
	if n != hdr.Size {
		f.Close()
		return truncatedf("%d of %d bytes", n, hdr.Size)
	}
	// Keep it open for Grep; Close closes it with the directory.
	a.pages[id] = &pagesFile{r: f, size: n}
	return nil
}

func isSparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// rootfsDiff lists rootfs-diff.tar, streaming: nothing is extracted.
func (a *Archive) rootfsDiff(r io.Reader, rep *Report) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := cleanName(hdr.Name)
		if name == "" {
			continue
		}
		if len(rep.RootfsDiff.Changed) >= a.cfg.MaxDiffEntries {
			rep.RootfsDiff.Omitted++
			continue
		}
		rep.RootfsDiff.Changed = append(rep.RootfsDiff.Changed, DiffEntry{
			Path: name,
			Type: tarType(hdr.Typeflag),
			Size: hdr.Size,
			Mode: fmt.Sprintf("%04o", hdr.Mode&0o7777),
		})
	}
}

func tarType(t byte) string {
	switch t {
	case tar.TypeReg, tar.TypeRegA:
		return "file"
	case tar.TypeDir:
		return "dir"
	case tar.TypeSymlink:
		return "symlink"
	case tar.TypeLink:
		return "hardlink"
	case tar.TypeChar, tar.TypeBlock:
		return "device"
	case tar.TypeFifo:
		return "fifo"
	}
	return fmt.Sprintf("type-%c", t)
}

// Report returns what was found in the archive. It is built once, by Open
// or Read; the caller must not modify it.
func (a *Archive) Report() *Report { return a.report }

// Close releases the archive file and removes temporary copies of memory
// pages. It is safe to call more than once.
func (a *Archive) Close() error {
	var errs []error
	for id, p := range a.pages {
		if f, ok := p.r.(*os.File); ok {
			errs = append(errs, f.Close())
		}
		delete(a.pages, id)
	}
	if a.src != nil {
		errs = append(errs, a.src.Close())
		a.src = nil
	}
	if a.tmpDir != "" {
		errs = append(errs, os.RemoveAll(a.tmpDir))
		a.tmpDir = ""
	}
	return errors.Join(errs...)
}
