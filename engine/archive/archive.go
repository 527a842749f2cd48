package archive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
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
	// MaxMemory caps what the analysis holds in memory in total: every
	// member kept (metadata and CRIU images other than pages), the rootfs
	// diff listing, and the decompressor's window (at most a quarter of
	// it). An archive that needs more is rejected as corrupt before the
	// cap is passed, so a decompression bomb cannot exhaust the host.
	MaxMemory int64
	// MaxTempSize caps the bytes copied to TempDir (memory pages and
	// /dev/shm contents of a compressed or streamed archive).
	MaxTempSize int64
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
		MaxMemory:      256 << 20,
		MaxTempSize:    64 << 30,
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
	set(&c.MaxMemory, d.MaxMemory)
	set(&c.MaxTempSize, d.MaxTempSize)
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
	format Format

	files map[string]*member // small members kept in memory, by archive path
	pages map[uint32]*pagesFile
	blobs map[string]*pagesFile // /dev/shm and tmpfs contents, by archive path
	procs map[uint32]*procMem   // per pid: page runs, for memory reads
	shmem []*shmemObj           // shared memory objects, for Grep
	// shmemMaps: per pid, the mappings of shared memory objects.
	shmemMaps map[uint32][]shmemMap
	rootfs    map[string]string // rootfs change path -> sha256 of its content, for Diff
	tmpDir    string
	src       *os.File // the archive itself, when pages point into it

	held    int64 // bytes held in memory, against cfg.MaxMemory
	tempUse int64 // bytes copied to tmpDir, against cfg.MaxTempSize
}

type member struct {
	data    []byte
	modTime time.Time
}

// pagesFile is one pages-<id>.img (or another large member), either a
// section of the original archive or a temporary copy.
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
	cfg = cfg.withDefaults()
	br := bufio.NewReaderSize(r, 64<<10)
	head, _ := br.Peek(6)
	comp := compressionOf(head)
	var tr io.Reader = br
	switch comp {
	case "zstd":
		d, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(uint64(decoderWindow(cfg))), zstd.WithDecoderMaxMemory(uint64(decoderWindow(cfg))))
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

// decoderWindow is the largest zstd window accepted: a quarter of the
// memory cap, at most 128 MiB (zstd --long=27). Podman's archives use 8 MiB.
func decoderWindow(cfg Config) int64 {
	return max(1<<20, min(1<<27, cfg.MaxMemory/4))
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
		cfg:    cfg,
		files:  map[string]*member{},
		pages:  map[uint32]*pagesFile{},
		blobs:  map[string]*pagesFile{},
		procs:  map[uint32]*procMem{},
		rootfs: map[string]string{},

		shmemMaps: map[uint32][]shmemMap{},
	}
	if comp != "" {
		a.held = decoderWindow(cfg)
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

// hold charges n bytes against the memory cap.
func (a *Archive) hold(n int64) error {
	if n < 0 || a.held+n > a.cfg.MaxMemory {
		return corruptf("analysis would hold more than its memory cap of %d bytes (%d held, %d more asked): raise it with --max-memory if the archive is trusted", a.cfg.MaxMemory, a.held, n)
	}
	a.held += n
	return nil
}

// keep reads a member into memory, within the per-file limit and the
// memory cap. The buffer is allocated once, at the member's size.
func (a *Archive) keep(tr io.Reader, hdr *tar.Header, name string) error {
	if hdr.Typeflag != tar.TypeReg {
		return corruptf("not a regular file (type %q)", hdr.Typeflag)
	}
	if hdr.Size > a.cfg.MaxFileSize {
		return corruptf("size %d exceeds the limit of %d", hdr.Size, a.cfg.MaxFileSize)
	}
	if _, dup := a.files[name]; dup {
		return corruptf("appears twice in the archive")
	}
	if err := a.hold(hdr.Size); err != nil {
		return err
	}
	data := make([]byte, hdr.Size)
	if _, err := io.ReadFull(tr, data); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	a.files[name] = &member{data: data, modTime: hdr.ModTime}
	return nil
}

// Top-level metadata files of the formats read, kept in memory.
var metadataFiles = map[string]bool{
	ConfigDumpFile: true, SpecDumpFile: true, StatusDumpFile: true, NetworkStatusFile: true,
	DeletedFilesFile: true, StatsDumpFile: true, ContainerdStatusFile: true, BindMountsFile: true,
	DockerManifestFile: true, HostFactsFile: true,
}

func (a *Archive) member(tr *tar.Reader, hdr *tar.Header, name string, cr *countingReader, src *os.File, rep *Report) error {
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	top, rest, _ := strings.Cut(name, "/")
	if hdr.Typeflag == tar.TypeDir && name == CheckpointDirectory {
		a.files[name] = &member{modTime: hdr.ModTime}
		return nil
	}
	switch {
	case top == DockerRootfsDirectory && a.files[DockerManifestFile] != nil:
		return a.dockerRootfs(tr, hdr, rest, rep)
	case top == VolumesDirectory && a.files[DockerManifestFile] != nil:
		vname, _, _ := strings.Cut(rest, "/")
		i := slices.IndexFunc(rep.Volumes, func(v Volume) bool { return v.Name == vname })
		if i < 0 {
			rep.Volumes = append(rep.Volumes, Volume{Name: vname})
			i = len(rep.Volumes) - 1
		}
		if hdr.Typeflag == tar.TypeReg {
			rep.Volumes[i].Size += hdr.Size
		}
		return nil
	}
	if hdr.Typeflag == tar.TypeDir {
		return nil
	}
	switch {
	case dir == CheckpointDirectory && strings.HasPrefix(base, PagesImagePrefix) && strings.HasSuffix(base, ".img"):
		id, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(base, PagesImagePrefix), ".img"), 10, 32)
		if err != nil {
			return corruptf("pages image with a bad id")
		}
		if _, dup := a.pages[uint32(id)]; dup {
			return corruptf("appears twice in the archive")
		}
		rep.Checkpoint.CheckpointSize += hdr.Size
		rep.Checkpoint.MemorySize += hdr.Size
		if hdr.Size > a.cfg.MaxPagesSize {
			return corruptf("size %d exceeds the limit of %d", hdr.Size, a.cfg.MaxPagesSize)
		}
		pf, err := a.blob(tr, hdr, cr, src, fmt.Sprintf(pagesImageFmt, id))
		if err != nil {
			return err
		}
		a.pages[uint32(id)] = pf
		return nil
	case dir == CheckpointDirectory && base == StatsDumpFile:
		// Docker's checkpoint directory holds CRIU's stats-dump itself.
		rep.Checkpoint.CheckpointSize += hdr.Size
		if _, ok := a.files[StatsDumpFile]; ok {
			return nil
		}
		return a.keep(tr, hdr, StatsDumpFile)
	case dir == CheckpointDirectory && strings.HasPrefix(base, tmpfsImagePrefix) && strings.HasSuffix(base, tmpfsImageSuffix):
		rep.Checkpoint.CheckpointSize += hdr.Size
		return a.keepBlob(tr, hdr, cr, src, name)
	case dir == CheckpointDirectory:
		rep.Checkpoint.CheckpointSize += hdr.Size
		if !strings.HasSuffix(base, ".img") || strings.Contains(base, ".tar") {
			return nil // descriptors.json, logs
		}
	case name == RootFsDiffTar:
		rep.RootfsDiff.Size = hdr.Size
		return a.rootfsDiff(tr, rep)
	case dir == VolumesDirectory:
		rep.Volumes = append(rep.Volumes, Volume{Name: strings.TrimSuffix(base, ".tar"), Size: hdr.Size})
		return nil
	case name == DevShmCheckpointTar:
		rep.Checkpoint.DevShmSize = hdr.Size
		return a.keepBlob(tr, hdr, cr, src, name)
	case metadataFiles[name]:
	default:
		return nil // logs, artifacts, pod files: not analysed
	}
	return a.keep(tr, hdr, name)
}

// keepBlob keeps a large member (a /dev/shm tar) out of memory for Grep.
func (a *Archive) keepBlob(tr io.Reader, hdr *tar.Header, cr *countingReader, src *os.File, name string) error {
	if _, dup := a.blobs[name]; dup {
		return corruptf("appears twice in the archive")
	}
	if hdr.Size > a.cfg.MaxPagesSize {
		return corruptf("size %d exceeds the limit of %d", hdr.Size, a.cfg.MaxPagesSize)
	}
	b, err := a.blob(tr, hdr, cr, src, strings.ReplaceAll(name, "/", "_"))
	if err != nil {
		return err
	}
	a.blobs[name] = b
	return nil
}

// blob records where a large member's bytes are: in place when the archive
// is an uncompressed file and the member is stored plainly, else in a
// temporary copy named file.
func (a *Archive) blob(tr io.Reader, hdr *tar.Header, cr *countingReader, src *os.File, file string) (*pagesFile, error) {
	if hdr.Typeflag != tar.TypeReg {
		return nil, corruptf("not a regular file (type %q)", hdr.Typeflag)
	}
	if src != nil && !isSparse(hdr) {
		off := cr.n
		if fi, err := src.Stat(); err == nil && off+hdr.Size > fi.Size() {
			return nil, truncatedf("member of %d bytes at offset %d, but the archive has %d", hdr.Size, off, fi.Size())
		}
		return &pagesFile{r: io.NewSectionReader(src, off, hdr.Size), size: hdr.Size}, nil // tar.Reader skips the data on the next Next()
	}
	if a.tempUse+hdr.Size > a.cfg.MaxTempSize {
		return nil, corruptf("would copy more than %d bytes to the temporary directory", a.cfg.MaxTempSize)
	}
	a.tempUse += hdr.Size
	if a.tmpDir == "" {
		d, err := os.MkdirTemp(a.cfg.TempDir, "orchestrate-inspect-")
		if err != nil {
			return nil, fmt.Errorf("temporary directory for memory pages: %w", err)
		}
		a.tmpDir = d
	}
	f, err := os.OpenFile(path.Join(a.tmpDir, file), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	n, err := io.Copy(f, tr)
	if err != nil {
		f.Close()
		return nil, err
	}
	if n != hdr.Size {
		f.Close()
		return nil, truncatedf("%d of %d bytes", n, hdr.Size)
	}
	// Keep it open for Grep; Close closes it with the directory.
	return &pagesFile{r: f, size: n}, nil
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
// Regular files are hashed, for Diff. containerd stores the diff as a
// gzip-compressed layer under the same name.
func (a *Archive) rootfsDiff(r io.Reader, rep *Report) error {
	br := bufio.NewReader(r)
	if head, _ := br.Peek(2); compressionOf(head) == "gzip" {
		g, err := gzip.NewReader(br)
		if err != nil {
			return compressionErr("gzip", err)
		}
		defer g.Close()
		r = g
	} else {
		r = br
	}
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
		if err := a.addChange(tr, hdr, name, rep); err != nil {
			return err
		}
	}
}

// addChange records one rootfs change, hashing a regular file's content.
func (a *Archive) addChange(r io.Reader, hdr *tar.Header, name string, rep *Report) error {
	if len(rep.RootfsDiff.Changed) >= a.cfg.MaxDiffEntries {
		rep.RootfsDiff.Omitted++
		return nil
	}
	if err := a.hold(int64(len(name)) + 128); err != nil {
		return err
	}
	e := DiffEntry{Path: name, Type: tarType(hdr.Typeflag), Size: hdr.Size, Mode: fmt.Sprintf("%04o", hdr.Mode&0o7777)}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA:
		h := sha256.New()
		if _, err := io.Copy(h, r); err != nil {
			return err
		}
		a.rootfs[name] = hex.EncodeToString(h.Sum(nil))
	case tar.TypeSymlink, tar.TypeLink:
		e.Link = hdr.Linkname
		a.rootfs[name] = "link:" + hdr.Linkname
	}
	rep.RootfsDiff.Changed = append(rep.RootfsDiff.Changed, e)
	return nil
}

// dockerRootfs records one entry of a Docker archive's rootfs/ (the
// overlay upper directory): a 0:0 character device is a whiteout, i.e. a
// deleted file.
func (a *Archive) dockerRootfs(r io.Reader, hdr *tar.Header, rel string, rep *Report) error {
	rel = strings.TrimSuffix(rel, "/")
	if rel == "" {
		return nil
	}
	if hdr.Typeflag == tar.TypeChar && hdr.Devmajor == 0 && hdr.Devminor == 0 {
		if err := a.hold(int64(len(rel)) + 16); err != nil {
			return err
		}
		rep.RootfsDiff.Deleted = append(rep.RootfsDiff.Deleted, "/"+rel)
		return nil
	}
	if hdr.Typeflag == tar.TypeReg {
		rep.RootfsDiff.Size += hdr.Size
	}
	return a.addChange(r, hdr, rel, rep)
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
	for name, p := range a.blobs {
		if f, ok := p.r.(*os.File); ok {
			errs = append(errs, f.Close())
		}
		delete(a.blobs, name)
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
