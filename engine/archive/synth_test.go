package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"testing"
	"time"

	criu_core "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fs"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mm"
	packet_sock "github.com/checkpoint-restore/go-criu/v7/crit/images/packet-sock"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pipe"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/regfile"
	sk_inet "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-inet"
	sk_netlink "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-netlink"
	sk_packet "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-packet"
	sk_unix "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-unix"
	tcp_stream "github.com/checkpoint-restore/go-criu/v7/crit/images/tcp-stream"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/vma"
	"github.com/checkpoint-restore/go-criu/v7/stats"
	"github.com/klauspost/compress/zstd"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// A synthetic checkpoint, built from CRIU's own protobuf types, so that the
// parser is tested (and fuzzed) without Podman. Its facts:
const (
	synthArgStart = 0x10010
	synthMarker   = "SECRET-ACROSS-PAGES" // starts 5 bytes before the second page
	synthMarkAddr = 0x11000 - 5
	synthBigRun   = 0x7f0000000000 // a run of 260 pages, for Grep's chunking
	synthBigMark  = "CHUNK-EDGE-MARKER"
	synthBigAddr  = synthBigRun + 1<<20 - 7 // crosses Grep's 1 MiB chunk boundary
)

var (
	synthArgv = []string{"/bin/app", "-listen", ":8080"}
	synthEnv  = []string{"SECRET_TOKEN=hunter2", "HOME=/"}
)

const (
	synthShmAddr   = 0x20000 // an anonymous shared mapping of shmem 4242
	synthShmMarker = "SHARED-SECRET"
	synthShmOff    = 100
	synthDevShm    = "DEVSHM-SECRET"
)

type member2 struct {
	name string
	data []byte
	dir  bool
}

// synthMembers returns the archive's members in Podman's order.
func synthMembers(t testing.TB) []member2 { return synthMembersSized(t, 260) }

// synthSmall is the synthetic archive with a 1-page second run: a seed small
// enough for the fuzzer to mutate quickly.
func synthSmall(t testing.TB) []member2 { return synthMembersSized(t, 1) }

func synthMembersSized(t testing.TB, bigPages uint64) []member2 {
	t.Helper()
	u32 := proto.Uint32
	u64 := proto.Uint64
	str := proto.String
	marshal := func(m proto.Message) []byte {
		b, err := proto.MarshalOptions{AllowPartial: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	jsonOf := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	// Pages: run 1 is two pages at 0x10000 holding argv and the marker; run
	// 2 is 260 pages holding the chunk-edge marker.
	pages := make([]byte, 2*4096+bigPages*4096)
	argv := []byte{}
	for _, a := range synthArgv {
		argv = append(argv, a...)
		argv = append(argv, 0)
	}
	copy(pages[synthArgStart-0x10000:], argv)
	env := []byte{}
	for _, e := range synthEnv {
		env = append(env, e...)
		env = append(env, 0)
	}
	envStart := synthArgStart + uint64(len(argv))
	copy(pages[envStart-0x10000:], env)
	copy(pages[synthMarkAddr-0x10000:], synthMarker)
	if bigPages == 260 {
		copy(pages[2*4096+(synthBigAddr-synthBigRun):], synthBigMark)
	}

	pmEntry := func(vaddr, n uint64, flags uint32, newStyle bool) []byte {
		var b []byte
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, vaddr)
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		if newStyle {
			b = protowire.AppendVarint(b, 0)
		} else {
			b = protowire.AppendVarint(b, n)
		}
		b = protowire.AppendTag(b, 4, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(flags))
		if newStyle {
			b = protowire.AppendTag(b, 5, protowire.VarintType)
			b = protowire.AppendVarint(b, n)
		}
		return b
	}

	reg := fdinfo.FdTypes_REG
	isk := fdinfo.FdTypes_INETSK
	pipeT := fdinfo.FdTypes_PIPE
	usk := fdinfo.FdTypes_UNIXSK
	psk := fdinfo.FdTypes_PACKETSK
	nlsk := fdinfo.FdTypes_NETLINKSK
	files := [][]byte{
		marshal(&fdinfo.FileEntry{Type: &reg, Id: u32(10), Reg: &regfile.RegFileEntry{Id: u32(10), Name: str("/bin/app")}}),
		marshal(&fdinfo.FileEntry{Type: &reg, Id: u32(11), Reg: &regfile.RegFileEntry{Id: u32(11), Name: str("/dev/null")}}),
		marshal(&fdinfo.FileEntry{Type: &isk, Id: u32(12), Isk: &sk_inet.InetSkEntry{
			Id: u32(12), Ino: u32(555), Family: u32(2), Type: u32(1), Proto: u32(6), State: u32(10),
			SrcPort: u32(8080), SrcAddr: []uint32{0}, DstAddr: []uint32{0}}}),
		marshal(&fdinfo.FileEntry{Type: &isk, Id: u32(13), Isk: &sk_inet.InetSkEntry{
			Id: u32(13), Ino: u32(556), Family: u32(10), Type: u32(1), Proto: u32(6), State: u32(1),
			SrcPort: u32(5000), DstPort: u32(40000),
			SrcAddr: []uint32{0, 0, 0, 0x01000000}, DstAddr: []uint32{0, 0, 0xffff0000, 0x0100007f}}}),
		marshal(&fdinfo.FileEntry{Type: &pipeT, Id: u32(14), Pipe: &pipe.PipeEntry{Id: u32(14), PipeId: u32(777)}}),
		marshal(&fdinfo.FileEntry{Type: &reg, Id: u32(15), Reg: &regfile.RegFileEntry{Id: u32(15), Name: str("/")}}),
		marshal(&fdinfo.FileEntry{Type: &reg, Id: u32(16), Reg: &regfile.RegFileEntry{Id: u32(16), Name: str("/srv")}}),
		marshal(&fdinfo.FileEntry{Type: &usk, Id: u32(17), Usk: &sk_unix.UnixSkEntry{Id: u32(17), Ino: u32(900), Type: u32(1), State: u32(1),
			Name: []byte("/run/app.sock"), Peer: u32(901)}}),
		marshal(&fdinfo.FileEntry{Type: &usk, Id: u32(18), Usk: &sk_unix.UnixSkEntry{Id: u32(18), Ino: u32(901), Type: u32(2), State: u32(7),
			Name: []byte("\x00abstract"), Peer: u32(0)}}),
		marshal(&fdinfo.FileEntry{Type: &psk, Id: u32(19), Psk: &packet_sock.PacketSockEntry{Id: u32(19), Type: u32(3), Protocol: u32(0x0300), Ifindex: u32(2)}}),
		marshal(&fdinfo.FileEntry{Type: &nlsk, Id: u32(20), Nlsk: &sk_netlink.NetlinkSkEntry{Id: u32(20), Ino: u32(902), Protocol: u32(0), State: u32(7), Portid: u32(1234)}}),
	}
	fdinfos := [][]byte{
		marshal(&fdinfo.FdinfoEntry{Id: u32(11), Type: &reg, Fd: u32(0)}),
		marshal(&fdinfo.FdinfoEntry{Id: u32(14), Type: &pipeT, Fd: u32(1)}),
		marshal(&fdinfo.FdinfoEntry{Id: u32(13), Type: &isk, Fd: u32(4)}),
		marshal(&fdinfo.FdinfoEntry{Id: u32(12), Type: &isk, Fd: u32(3)}),
		marshal(&fdinfo.FdinfoEntry{Id: u32(17), Type: &usk, Fd: u32(5)}),
		marshal(&fdinfo.FdinfoEntry{Id: u32(18), Type: &usk, Fd: u32(6)}),
		marshal(&fdinfo.FdinfoEntry{Id: u32(19), Type: &psk, Fd: u32(7)}),
		marshal(&fdinfo.FdinfoEntry{Id: u32(20), Type: &nlsk, Fd: u32(8)}),
	}
	skq := func(id uint32, payload string) []byte {
		b := marshal(&sk_packet.SkPacketEntry{IdFor: u32(id), Length: u32(uint32(len(payload)))})
		var out []byte
		out = binary.LittleEndian.AppendUint32(out, uint32(len(b)))
		out = append(out, b...)
		return append(out, payload...)
	}
	skQueues := imageWith(imgCommonMagic, "SK_QUEUES")
	skQueues = append(skQueues, skq(17, "hello")...)
	skQueues = append(skQueues, skq(17, "abc")...)
	shmPages := make([]byte, 4096)
	copy(shmPages[synthShmOff:], synthShmMarker)
	var devshm bytes.Buffer
	stw := tar.NewWriter(&devshm)
	stw.WriteHeader(&tar.Header{Name: "blob", Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(synthDevShm) + 10)})
	stw.Write([]byte("0123456789" + synthDevShm))
	stw.Close()
	march := criu_core.CoreEntry_X86_64
	core := func(comm string, state, exit uint32) []byte {
		return image("CORE", marshal(&criu_core.CoreEntry{Mtype: &march, Tc: &criu_core.TaskCoreEntry{Comm: str(comm), TaskState: u32(state), ExitCode: u32(exit)}}))
	}
	vm := func(start, end uint64, prot, status uint32, shmid uint64) *vma.VmaEntry {
		return &vma.VmaEntry{Start: u64(start), End: u64(end), Prot: u32(prot), Status: u32(status), Shmid: u64(shmid), Flags: u32(2)}
	}
	mm1 := &mm.MmEntry{
		MmArgStart: u64(synthArgStart), MmArgEnd: u64(envStart), ExeFileId: u32(10),
		MmEnvStart: u64(envStart), MmEnvEnd: u64(envStart + uint64(len(env))),
		Vmas: []*vma.VmaEntry{
			vm(0x400000, 0x401000, 5, vmaAreaRegular|vmaFilePrivate, 10),
			vm(0x10000, 0x12000, 3, vmaAreaRegular, 0),
			func() *vma.VmaEntry {
				v := vm(synthShmAddr, synthShmAddr+0x1000, 3, vmaAreaRegular|vmaAnonShared, 4242)
				v.Flags = u32(1) // MAP_SHARED
				return v
			}(),
			vm(synthBigRun, synthBigRun+bigPages*4096, 3, vmaAreaRegular|vmaAreaHeap, 0),
			vm(0x7ffff000, 0x80000000, 3, vmaAreaRegular|vmaAreaStack, 0),
		},
	}
	mm7 := &mm.MmEntry{MmArgStart: u64(0x7ffff100), MmArgEnd: u64(0x7ffff110), ExeFileId: u32(10)}
	pmHead := func(id uint32) []byte { return marshal(&pagemap.PagemapHead{PagesId: u32(id)}) }

	var diff bytes.Buffer
	dtw := tar.NewWriter(&diff)
	dtw.WriteHeader(&tar.Header{Name: "data/", Typeflag: tar.TypeDir, Mode: 0o755})
	dtw.WriteHeader(&tar.Header{Name: "data/hello.txt", Typeflag: tar.TypeReg, Mode: 0o644, Size: 6})
	dtw.Write([]byte("hello\n"))
	dtw.Close()

	return []member2{
		{name: "config.dump", data: jsonOf(map[string]any{
			"id": "0123456789abcdef0123", "name": "synth", "rootfsImageID": "feedfacecafe0000",
			"rootfsImageName": "localhost/synth:latest", "runtime": "runc",
			"createdTime": time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		})},
		{name: "spec.dump", data: jsonOf(map[string]any{
			"hostname": "synthhost",
			"process":  map[string]any{"args": synthArgv, "env": []string{"PATH=/bin", "MODE=spec"}},
			"mounts":   []map[string]any{{"destination": "/data", "type": "bind", "source": "/srv/data", "options": []string{"rbind", "rw"}}},
			"annotations": map[string]string{
				annotationManager: "libpod", annotationCRIUVersion: "4.2.1", annotationKernel: "6.18.0",
			},
		})},
		{name: "network.status", data: []byte(`{"podman":{"interfaces":{"eth0":{"subnets":[{"ipnet":"10.88.0.5/16","gateway":"10.88.0.1"}],"mac_address":"aa:bb:cc:dd:ee:ff"}}}}`)},
		{name: "stats-dump", data: imageWith(imgServiceMagic, "STATS", marshal(&stats.StatsEntry{Dump: &stats.DumpStatsEntry{
			FreezingTime: u32(10), FrozenTime: u32(2000), MemdumpTime: u32(300), MemwriteTime: u32(400),
			PagesScanned: u64(300), PagesWritten: u64(262)}}))},
		{name: "checkpoint/", dir: true},
		{name: "checkpoint/core-1.img", data: core("app", taskAlive, 0)},
		{name: "checkpoint/core-7.img", data: core("sleeper", taskZombie, 3)},
		{name: "checkpoint/fdinfo-2.img", data: image("FDINFO", fdinfos...)},
		{name: "checkpoint/files.img", data: image("FILES", files...)},
		{name: "checkpoint/fs-1.img", data: image("FS", marshal(&fs.FsEntry{CwdId: u32(16), RootId: u32(15)}))},
		{name: "checkpoint/ids-1.img", data: image("IDS", marshal(&criu_core.TaskKobjIdsEntry{FilesId: u32(2)}))},
		{name: "checkpoint/inventory.img", data: imageWith(imgServiceMagic, "INVENTORY", marshal(&inventory.InventoryEntry{ImgVersion: u32(2)}))},
		{name: "checkpoint/mm-1.img", data: image("MM", marshal(mm1))},
		{name: "checkpoint/mm-7.img", data: image("MM", marshal(mm7))},
		{name: "checkpoint/pagemap-1.img", data: image("PAGEMAP", pmHead(1),
			pmEntry(0x400000, 1, 0, true), // not present: file-backed text
			pmEntry(0x10000, 2, pePresent, false),
			pmEntry(synthBigRun, bigPages, pePresent, true))},
		{name: "checkpoint/pagemap-7.img", data: image("PAGEMAP", pmHead(7))},
		{name: "checkpoint/pagemap-shmem-4242.img", data: image("PAGEMAP", pmHead(2), pmEntry(0, 1, pePresent, true))},
		{name: "checkpoint/pages-2.img", data: shmPages},
		{name: "checkpoint/pages-1.img", data: pages},
		{name: "checkpoint/sk-queues.img", data: skQueues},
		{name: "checkpoint/tcp-stream-22c.img", data: image("TCP_STREAM", marshal(&tcp_stream.TcpStreamEntry{InqLen: u32(10), InqSeq: u32(1), OutqLen: u32(20), OutqSeq: u32(2)}))},
		{name: "checkpoint/pstree.img", data: image("PSTREE",
			marshal(&pstree.PstreeEntry{Pid: u32(1), Ppid: u32(0), Pgid: u32(1), Sid: u32(1), Threads: []uint32{1, 2}}),
			marshal(&pstree.PstreeEntry{Pid: u32(7), Ppid: u32(1), Pgid: u32(1), Sid: u32(1), Threads: []uint32{7}}))},
		{name: "rootfs-diff.tar", data: diff.Bytes()},
		{name: "deleted.files", data: []byte(`["/etc/motd"]`)},
		{name: "volumes/cache.tar", data: []byte("not read")},
		{name: "devshm-checkpoint.tar", data: devshm.Bytes()},
	}
}

func image(magicName string, entries ...[]byte) []byte {
	return imageWith(imgCommonMagic, magicName, entries...)
}

func imageWith(first uint32, magicName string, entries ...[]byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, first)
	b = binary.LittleEndian.AppendUint32(b, magicOf(magicName))
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(e)))
		b = append(b, e...)
	}
	return b
}

func tarOf(t testing.TB, ms []member2) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mt := time.Date(2026, 1, 2, 4, 0, 0, 0, time.UTC)
	for _, m := range ms {
		h := &tar.Header{Name: m.name, Mode: 0o600, Size: int64(len(m.data)), Typeflag: tar.TypeReg, ModTime: mt}
		if m.dir {
			h = &tar.Header{Name: m.name, Mode: 0o700, Typeflag: tar.TypeDir, ModTime: mt}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(m.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func synthTar(t testing.TB) []byte { return tarOf(t, synthMembers(t)) }

// withMember returns the synthetic members with one replaced (or removed,
// when data is nil).
func withMember(t testing.TB, name string, data []byte) []member2 {
	var out []member2
	for _, m := range synthMembers(t) {
		if m.name == name {
			if data == nil {
				continue
			}
			m.data = data
		}
		out = append(out, m)
	}
	return out
}

func gzipOf(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstdOf(t testing.TB, b []byte) []byte {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}
