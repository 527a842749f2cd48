package archive

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	criu_core "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fs"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/regfile"
	sk_inet "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-inet"
	"github.com/checkpoint-restore/go-criu/v7/stats"
)

// Report is everything the offline analysis finds in a checkpoint archive.
type Report struct {
	Container  Container      `json:"container"`
	Checkpoint CheckpointInfo `json:"checkpoint"`
	// Processes in pstree order (parents before children); see Process.PPID.
	Processes  []Process  `json:"processes"`
	RootfsDiff RootfsDiff `json:"rootfsDiff"`
	Volumes    []Volume   `json:"volumes,omitempty"`
	// Warnings are problems that did not stop the analysis, such as a
	// command line whose pages were not dumped.
	Warnings []string `json:"warnings,omitempty"`
}

// Container is the container's metadata, from config.dump and spec.dump.
type Container struct {
	Format        Format    `json:"format"`
	ID            string    `json:"id"`
	Name          string    `json:"name"`
	Image         string    `json:"image,omitempty"`
	ImageID       string    `json:"imageID,omitempty"`
	Runtime       string    `json:"runtime,omitempty"`
	Engine        string    `json:"engine,omitempty"`
	EngineVersion string    `json:"engineVersion,omitempty"`
	Created       time.Time `json:"created"`
	Hostname      string    `json:"hostname,omitempty"`
	Command       []string  `json:"command,omitempty"`
	// Env is the environment the container was created with (the spec's
	// or Docker's config); each process's own is Process.Env.
	Env         []string          `json:"env,omitempty"`
	Mounts      []Mount           `json:"mounts,omitempty"`
	Networks    []Network         `json:"networks,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// Pod and Namespace: the Kubernetes pod of a CRI-O or containerd
	// checkpoint.
	Pod       string `json:"pod,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// Mount is one mount of the container's configuration.
type Mount struct {
	Destination string   `json:"destination"`
	Type        string   `json:"type,omitempty"` // bind, tmpfs, volume, proc, ...
	Source      string   `json:"source,omitempty"`
	Options     []string `json:"options,omitempty"`
}

// Network is one interface from network.status.
type Network struct {
	Name      string   `json:"name"`
	Interface string   `json:"interface,omitempty"`
	Addresses []string `json:"addresses,omitempty"`
	MAC       string   `json:"mac,omitempty"`
}

// CheckpointInfo describes the checkpoint itself.
type CheckpointInfo struct {
	// CheckpointedAt comes from config.dump when recorded, else from the
	// archive's timestamp of checkpoint/inventory.img.
	CheckpointedAt time.Time `json:"checkpointedAt"`
	// Host, CRIUVersion, Kernel and HostArch come from the annotations
	// CRI-O writes, else from what orchestrate's agent recorded in the
	// archive (HostFactsFile); Podman's own archives carry neither.
	Host           string     `json:"host,omitempty"`
	CRIUVersion    string     `json:"criuVersion,omitempty"`
	RuntimeVersion string     `json:"runtimeVersion,omitempty"`
	Kernel         string     `json:"kernel,omitempty"`
	HostArch       string     `json:"hostArch,omitempty"`
	ImageVersion   uint32     `json:"imageVersion,omitempty"` // inventory img_version
	Compression    string     `json:"compression"`
	ArchiveSize    int64      `json:"archiveSize"`    // uncompressed tar bytes read
	CheckpointSize int64      `json:"checkpointSize"` // all of checkpoint/
	MemorySize     int64      `json:"memorySize"`     // pages-*.img
	DevShmSize     int64      `json:"devShmSize,omitempty"`
	PageSize       int        `json:"pageSize"`
	Stats          *DumpStats `json:"stats,omitempty"`
}

// DumpStats are CRIU's own figures from stats-dump.
type DumpStats struct {
	FreezingTime time.Duration `json:"freezingTime"`
	FrozenTime   time.Duration `json:"frozenTime"`
	MemdumpTime  time.Duration `json:"memdumpTime"`
	MemwriteTime time.Duration `json:"memwriteTime"`
	PagesScanned uint64        `json:"pagesScanned"`
	PagesWritten uint64        `json:"pagesWritten"`
}

// Process is one task of the container's process tree.
type Process struct {
	PID     uint32   `json:"pid"` // as seen inside the container's pid namespace
	PPID    uint32   `json:"ppid"`
	PGID    uint32   `json:"pgid"`
	SID     uint32   `json:"sid"`
	Threads []uint32 `json:"threads,omitempty"`
	Comm    string   `json:"comm"`
	// State is CRIU's task state: alive, stopped (with the stopping
	// signal), zombie (with its exit code) or dead.
	State string `json:"state"`
	// Cmdline is argv read from the dumped memory; when those pages were
	// not dumped it is just Comm.
	Cmdline []string `json:"cmdline"`
	// Env is the environment read from the dumped memory (between
	// mm_env_start and mm_env_end), as the process sees it now.
	Env          []string  `json:"env,omitempty"`
	Exe          string    `json:"exe,omitempty"`
	Cwd          string    `json:"cwd,omitempty"`
	Root         string    `json:"root,omitempty"`
	MemoryDumped int64     `json:"memoryDumped"` // bytes of pages in the checkpoint
	Mappings     []Mapping `json:"mappings,omitempty"`
	Files        []File    `json:"files,omitempty"`
	Sockets      []Socket  `json:"sockets,omitempty"`
}

// Addr is a virtual address. It is written to JSON as a "0x..." string:
// JSON numbers lose precision above 2^53 in most consumers (jq included).
type Addr uint64

func (a Addr) String() string { return fmt.Sprintf("0x%x", uint64(a)) }

// MarshalJSON writes a as a hex string.
func (a Addr) MarshalJSON() ([]byte, error) { return []byte(`"` + a.String() + `"`), nil }

// UnmarshalJSON reads a hex string (or a plain number).
func (a *Addr) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	v, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
	if !strings.HasPrefix(s, "0x") {
		v, err = strconv.ParseUint(s, 10, 64)
	}
	if err != nil {
		return fmt.Errorf("address %s: %w", b, err)
	}
	*a = Addr(v)
	return nil
}

// Mapping is one virtual memory area.
type Mapping struct {
	Start  Addr   `json:"start"`
	End    Addr   `json:"end"`
	Size   uint64 `json:"size"`
	Dumped uint64 `json:"dumped"` // bytes of this area present in the pages
	Prot   string `json:"prot"`   // "rw-p" as in /proc/PID/maps
	Name   string `json:"name,omitempty"`
}

// File is one open file descriptor.
type File struct {
	FD   uint32 `json:"fd"`
	Type string `json:"type"` // CRIU's fd type: REG, PIPE, INETSK, UNIXSK, ...
	Path string `json:"path"`
}

// Socket is one open socket of any family.
type Socket struct {
	FD       uint32 `json:"fd"`
	Inode    uint32 `json:"inode"`
	Family   string `json:"family"`   // IPv4, IPv6, UNIX, PACKET, NETLINK
	Type     string `json:"type"`     // STREAM, DGRAM, RAW, SEQPACKET
	Protocol string `json:"protocol"` // TCP, UDP, ...; for netlink its protocol (ROUTE, ...); for packet the ethertype
	State    string `json:"state"`    // LISTEN, ESTABLISHED, UNCONN, ...
	Local    string `json:"local"`    // addr:port, a unix path ("@name" when abstract), port id, interface
	Remote   string `json:"remote"`   // addr:port, the unix peer's path or socket:[inode], port id
	// InQueue and OutQueue are the bytes queued when the checkpoint was
	// taken: receive and send queues of TCP connections (tcp-stream
	// images), and the receive queue of unix and packet sockets
	// (sk-queues.img), with InPackets the number of queued messages.
	InQueue   int64 `json:"inQueue"`
	OutQueue  int64 `json:"outQueue"`
	InPackets int   `json:"inPackets,omitempty"`
	Backlog   int   `json:"backlog,omitempty"` // a listening socket's backlog
}

// RootfsDiff is what changed in the container's writable layer.
type RootfsDiff struct {
	Size    int64       `json:"size"` // of rootfs-diff.tar
	Changed []DiffEntry `json:"changed,omitempty"`
	Omitted int         `json:"omitted,omitempty"` // entries beyond Config.MaxDiffEntries
	Deleted []string    `json:"deleted,omitempty"`
}

// DiffEntry is a file added or changed in the rootfs.
type DiffEntry struct {
	Path string `json:"path"`
	Type string `json:"type"` // file, dir, symlink, ...
	Size int64  `json:"size"`
	Mode string `json:"mode"`
	Link string `json:"link,omitempty"` // a link's target
}

// Volume is a named volume's tar in volumes/.
type Volume struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

func (a *Archive) image(name string) ([]byte, bool) {
	m, ok := a.files[path.Join(CheckpointDirectory, name)]
	if !ok {
		return nil, false
	}
	return m.data, true
}

// parseNetworkStatus reads netavark's status blocks, keyed by network name
// (Podman 4). Older CNI results are reported as a warning, not an error.
func parseNetworkStatus(data []byte) ([]Network, error) {
	var st map[string]struct {
		Interfaces map[string]struct {
			Subnets []struct {
				IPNet string `json:"ipnet"`
			} `json:"subnets"`
			MAC string `json:"mac_address"`
		} `json:"interfaces"`
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("unrecognised format: %v", err)
	}
	var out []Network
	for _, name := range sortedKeys(st) {
		for _, ifname := range sortedKeys(st[name].Interfaces) {
			ifc := st[name].Interfaces[ifname]
			n := Network{Name: name, Interface: ifname, MAC: ifc.MAC}
			for _, s := range ifc.Subnets {
				n.Addresses = append(n.Addresses, s.IPNet)
			}
			out = append(out, n)
		}
	}
	return out, nil
}

func (a *Archive) buildCheckpoint(rep *Report) error {
	ck := &rep.Checkpoint
	name := path.Join(CheckpointDirectory, InventoryImage)
	if m, ok := a.files[name]; ok {
		inv, err := decodeSingle(m.data, "INVENTORY", func() *inventory.InventoryEntry { return new(inventory.InventoryEntry) })
		if err != nil {
			return fileErr(name, err)
		}
		ck.ImageVersion = inv.GetImgVersion()
		if ck.CheckpointedAt.IsZero() {
			ck.CheckpointedAt = m.modTime
		}
	} else {
		rep.Warnings = append(rep.Warnings, name+": missing")
	}
	if m, ok := a.files[StatsDumpFile]; ok {
		st, err := decodeSingle(m.data, "STATS", func() *stats.StatsEntry { return new(stats.StatsEntry) })
		if err != nil {
			return fileErr(StatsDumpFile, err)
		}
		if d := st.GetDump(); d != nil {
			us := func(v uint32) time.Duration { return time.Duration(v) * time.Microsecond }
			ck.Stats = &DumpStats{
				FreezingTime: us(d.GetFreezingTime()),
				FrozenTime:   us(d.GetFrozenTime()),
				MemdumpTime:  us(d.GetMemdumpTime()),
				MemwriteTime: us(d.GetMemwriteTime()),
				PagesScanned: d.GetPagesScanned(),
				PagesWritten: d.GetPagesWritten(),
			}
		}
	}
	return nil
}

func (a *Archive) buildProcesses(rep *Report) error {
	pstreeName := path.Join(CheckpointDirectory, PstreeImage)
	data, _ := a.image(PstreeImage)
	tasks, err := decodeImage(data, "PSTREE", func() *pstree.PstreeEntry { return new(pstree.PstreeEntry) })
	if err != nil {
		return fileErr(pstreeName, err)
	}
	if len(tasks) == 0 {
		return fileErr(pstreeName, corruptf("no processes"))
	}
	files, err := a.fileTable()
	if err != nil {
		return err
	}
	socks, err := a.sockets(files)
	if err != nil {
		return err
	}
	seen := map[uint32]bool{}
	for _, t := range tasks {
		p := Process{PID: t.GetPid(), PPID: t.GetPpid(), PGID: t.GetPgid(), SID: t.GetSid(), Threads: t.GetThreads()}
		if seen[p.PID] {
			return fileErr(pstreeName, corruptf("pid %d appears twice", p.PID))
		}
		seen[p.PID] = true
		if err := a.buildProcess(&p, files, socks, rep); err != nil {
			return err
		}
		rep.Processes = append(rep.Processes, p)
	}
	if rep.Checkpoint.PageSize == 0 {
		rep.Checkpoint.PageSize = a.cfg.PageSize
	}
	return nil
}

// fileTable indexes files.img (or the pre-3.15 reg-files.img and
// inetsk.img) by file id.
func (a *Archive) fileTable() (map[uint32]*fdinfo.FileEntry, error) {
	table := map[uint32]*fdinfo.FileEntry{}
	if data, ok := a.image(FilesImage); ok {
		fes, err := decodeImage(data, "FILES", func() *fdinfo.FileEntry { return new(fdinfo.FileEntry) })
		if err != nil {
			return nil, fileErr(path.Join(CheckpointDirectory, FilesImage), err)
		}
		for _, fe := range fes {
			table[fe.GetId()] = fe
		}
		return table, nil
	}
	if data, ok := a.image(LegacyRegFilesImage); ok {
		regs, err := decodeImage(data, "REG_FILES", func() *regfile.RegFileEntry { return new(regfile.RegFileEntry) })
		if err != nil {
			return nil, fileErr(path.Join(CheckpointDirectory, LegacyRegFilesImage), err)
		}
		for _, r := range regs {
			t := fdinfo.FdTypes_REG
			table[r.GetId()] = &fdinfo.FileEntry{Type: &t, Id: r.Id, Reg: r}
		}
	}
	if data, ok := a.image(LegacyInetSocksImage); ok {
		sks, err := decodeImage(data, "INETSK", func() *sk_inet.InetSkEntry { return new(sk_inet.InetSkEntry) })
		if err != nil {
			return nil, fileErr(path.Join(CheckpointDirectory, LegacyInetSocksImage), err)
		}
		for _, s := range sks {
			t := fdinfo.FdTypes_INETSK
			table[s.GetId()] = &fdinfo.FileEntry{Type: &t, Id: s.Id, Isk: s}
		}
	}
	return table, nil
}

func (a *Archive) buildProcess(p *Process, files map[uint32]*fdinfo.FileEntry, socks *socketIndex, rep *Report) error {
	pid := p.PID
	ck := CheckpointDirectory + "/"

	coreName := fmt.Sprintf(coreImageFmt, pid)
	if data, ok := a.image(coreName); ok {
		core, err := decodeSingle(data, "CORE", func() *criu_core.CoreEntry { return new(criu_core.CoreEntry) })
		if err != nil {
			return fileErr(ck+coreName, err)
		}
		p.Comm = core.GetTc().GetComm()
		p.State = taskState(core.GetTc())
	} else {
		rep.Warnings = append(rep.Warnings, ck+coreName+": missing")
	}

	mem, err := a.loadPagemap(pid)
	if err != nil {
		return err
	}

	mmName := fmt.Sprintf(mmImageFmt, pid)
	var mmEntry *mm.MmEntry
	if data, ok := a.image(mmName); ok {
		mmEntry, err = decodeSingle(data, "MM", func() *mm.MmEntry { return new(mm.MmEntry) })
		if err != nil {
			return fileErr(ck+mmName, err)
		}
		p.Exe = filePath(files, mmEntry.GetExeFileId())
		for _, v := range mmEntry.GetVmas() {
			if v.GetEnd() < v.GetStart() {
				return fileErr(ck+mmName, corruptf("vma end 0x%x before start 0x%x", v.GetEnd(), v.GetStart()))
			}
			m := Mapping{
				Start: Addr(v.GetStart()), End: Addr(v.GetEnd()), Size: v.GetEnd() - v.GetStart(),
				Prot: protString(v.GetProt(), v.GetFlags()),
				Name: vmaName(v.GetStatus(), v.GetShmid(), v.GetPgoff(), files),
			}
			if mem != nil {
				m.Dumped = mem.presentIn(v.GetStart(), v.GetEnd())
			}
			if v.GetStatus()&(vmaAnonShared|vmaAreaSysvipc|vmaAreaMemfd) != 0 {
				a.shmemMaps[pid] = append(a.shmemMaps[pid], shmemMap{shmid: v.GetShmid(), start: v.GetStart(), pgoff: v.GetPgoff(), name: m.Name})
			}
			p.Mappings = append(p.Mappings, m)
		}
	}
	if mem != nil {
		mem.mappings = p.Mappings
		a.procs[pid] = mem
		p.MemoryDumped = mem.dumped()
		rep.Checkpoint.PageSize = mem.pageSize
	}
	p.Cmdline = []string{p.Comm}
	if mmEntry != nil && mem != nil {
		argv, err := a.readArgv(mem, mmEntry.GetMmArgStart(), mmEntry.GetMmArgEnd())
		switch {
		case err != nil:
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("pid %d: command line: %v", pid, err))
		case len(argv) > 0:
			p.Cmdline = argv
		}
		env, err := a.readArgv(mem, mmEntry.GetMmEnvStart(), mmEntry.GetMmEnvEnd())
		if err != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("pid %d: environment: %v", pid, err))
		}
		p.Env = env
	}

	// Open files: ids-PID.img names the fdinfo image (fdinfo-<files_id>.img);
	// images from before CRIU 1.x used fdinfo-PID.img directly.
	fdID := pid
	idsName := fmt.Sprintf(idsImageFmt, pid)
	if data, ok := a.image(idsName); ok {
		ids, err := decodeSingle(data, "IDS", func() *criu_core.TaskKobjIdsEntry { return new(criu_core.TaskKobjIdsEntry) })
		if err != nil {
			return fileErr(ck+idsName, err)
		}
		fdID = ids.GetFilesId()
	}
	fdName := fmt.Sprintf(fdinfoImageFmt, fdID)
	if data, ok := a.image(fdName); ok {
		fds, err := decodeImage(data, "FDINFO", func() *fdinfo.FdinfoEntry { return new(fdinfo.FdinfoEntry) })
		if err != nil {
			return fileErr(ck+fdName, err)
		}
		for _, fd := range fds {
			fe := files[fd.GetId()]
			p.Files = append(p.Files, File{FD: fd.GetFd(), Type: fd.GetType().String(), Path: describeFile(fd.GetType(), fd.GetId(), fe)})
			if s, ok := a.socket(fd.GetFd(), fe, socks); ok {
				p.Sockets = append(p.Sockets, s)
			}
		}
		slices.SortFunc(p.Files, func(x, y File) int { return int(x.FD) - int(y.FD) })
		slices.SortFunc(p.Sockets, func(x, y Socket) int { return int(x.FD) - int(y.FD) })
	}

	fsName := fmt.Sprintf(fsImageFmt, pid)
	if data, ok := a.image(fsName); ok {
		fsEntry, err := decodeSingle(data, "FS", func() *fs.FsEntry { return new(fs.FsEntry) })
		if err != nil {
			return fileErr(ck+fsName, err)
		}
		p.Cwd = filePath(files, fsEntry.GetCwdId())
		p.Root = filePath(files, fsEntry.GetRootId())
	}
	return nil
}

func filePath(files map[uint32]*fdinfo.FileEntry, id uint32) string {
	fe := files[id]
	if fe == nil {
		return ""
	}
	return describeFile(fe.GetType(), id, fe)
}

// describeFile names an open file the way /proc/PID/fd links do.
func describeFile(t fdinfo.FdTypes, id uint32, fe *fdinfo.FileEntry) string {
	switch {
	case fe.GetReg() != nil:
		return fe.GetReg().GetName()
	case fe.GetPipe() != nil:
		return fmt.Sprintf("pipe:[%d]", fe.GetPipe().GetPipeId())
	case fe.GetFifo() != nil:
		return fmt.Sprintf("fifo:[%d]", fe.GetFifo().GetPipeId())
	case fe.GetIsk() != nil:
		return fmt.Sprintf("socket:[%d]", fe.GetIsk().GetIno())
	case fe.GetUsk() != nil:
		u := fe.GetUsk()
		if name := strings.TrimRight(string(u.GetName()), "\x00"); name != "" {
			if name[0] == 0 {
				name = "@" + name[1:]
			}
			return fmt.Sprintf("socket:[%d] %s", u.GetIno(), name)
		}
		return fmt.Sprintf("socket:[%d]", u.GetIno())
	case fe.GetMemfd() != nil:
		return fmt.Sprintf("memfd:[%d]", fe.GetMemfd().GetInodeId())
	case fe.GetEfd() != nil:
		return "anon_inode:[eventfd]"
	case fe.GetEpfd() != nil:
		return "anon_inode:[eventpoll]"
	case fe.GetSgfd() != nil:
		return "anon_inode:[signalfd]"
	case fe.GetTfd() != nil:
		return "anon_inode:[timerfd]"
	case fe.GetIfy() != nil:
		return "anon_inode:inotify"
	case fe.GetNsf() != nil:
		return fmt.Sprintf("ns:[%d]", fe.GetNsf().GetNsId())
	case fe.GetTty() != nil:
		return fmt.Sprintf("tty[%d]", fe.GetTty().GetTtyInfoId())
	}
	return fmt.Sprintf("%s[%d]", t.String(), id)
}

// VMA status bits, from criu/include/image.h.
const (
	vmaAreaRegular  = 1 << 0
	vmaAreaStack    = 1 << 1
	vmaAreaVsyscall = 1 << 2
	vmaAreaVdso     = 1 << 3
	vmaAreaHeap     = 1 << 5
	vmaFilePrivate  = 1 << 6
	vmaFileShared   = 1 << 7
	vmaAnonShared   = 1 << 8
	vmaAreaSysvipc  = 1 << 10
	vmaAreaSocket   = 1 << 11
	vmaAreaVvar     = 1 << 12
	vmaAreaAioring  = 1 << 13
	vmaAreaMemfd    = 1 << 14
)

func vmaName(status uint32, shmid, pgoff uint64, files map[uint32]*fdinfo.FileEntry) string {
	switch {
	case status&(vmaFilePrivate|vmaFileShared|vmaAreaMemfd) != 0:
		name := ""
		if shmid <= 1<<32-1 {
			name = filePath(files, uint32(shmid))
		}
		if name == "" {
			name = fmt.Sprintf("file[%d]", shmid)
		}
		return name
	case status&vmaAreaVdso != 0:
		return "[vdso]"
	case status&vmaAreaVvar != 0:
		return "[vvar]"
	case status&vmaAreaVsyscall != 0:
		return "[vsyscall]"
	case status&vmaAreaStack != 0:
		return "[stack]"
	case status&vmaAreaHeap != 0:
		return "[heap]"
	case status&vmaAreaSysvipc != 0:
		return fmt.Sprintf("[sysv-shm %d]", shmid)
	case status&vmaAreaSocket != 0:
		return "[packet-socket]"
	case status&vmaAreaAioring != 0:
		return "[aio]"
	case status&vmaAnonShared != 0:
		return "[anon-shared]"
	}
	return ""
}

func protString(prot, flags uint32) string {
	b := []byte("---p")
	if prot&1 != 0 {
		b[0] = 'r'
	}
	if prot&2 != 0 {
		b[1] = 'w'
	}
	if prot&4 != 0 {
		b[2] = 'x'
	}
	if flags&1 != 0 { // MAP_SHARED
		b[3] = 's'
	}
	return string(b)
}

// hostPort formats an address CRIU stores as network-order words.
func hostPort(words []uint32, port uint32) string {
	var b []byte
	for _, w := range words {
		b = append(b, byte(w), byte(w>>8), byte(w>>16), byte(w>>24))
	}
	var addr netip.Addr
	switch len(b) {
	case 4:
		addr = netip.AddrFrom4([4]byte(b))
	case 16:
		addr = netip.AddrFrom16([16]byte(b)).Unmap()
	default:
		return fmt.Sprintf("?:%d", port)
	}
	return netip.AddrPortFrom(addr, uint16(port)).String()
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
