package archive

import (
	"encoding/binary"
	"fmt"
	"path"
	"strings"

	criu_core "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	sk_inet "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-inet"
	sk_packet "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-packet"
	tcp_stream "github.com/checkpoint-restore/go-criu/v7/crit/images/tcp-stream"
)

// Task states, from compel's task-state.h.
const (
	taskAlive   = 0x1
	taskDead    = 0x2
	taskStopped = 0x3
	taskZombie  = 0x6
)

func taskState(tc *criu_core.TaskCoreEntry) string {
	switch tc.GetTaskState() {
	case taskAlive:
		return "alive"
	case taskDead:
		return "dead"
	case taskStopped:
		if sig := tc.GetStopSigno(); sig != 0 {
			return fmt.Sprintf("stopped (signal %d)", sig)
		}
		return "stopped"
	case taskZombie:
		return fmt.Sprintf("zombie (exit code %d)", tc.GetExitCode())
	case 0:
		return "unknown"
	}
	return fmt.Sprintf("state-%d", tc.GetTaskState())
}

// Linux socket constants (kept here: the archive may come from any host).
var (
	tcpStates = map[uint32]string{
		1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
		6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
		12: "NEW_SYN_RECV",
	}
	sockTypes      = map[uint32]string{1: "STREAM", 2: "DGRAM", 3: "RAW", 4: "RDM", 5: "SEQPACKET", 10: "PACKET"}
	protos         = map[uint32]string{0: "IP", 1: "ICMP", 2: "IGMP", 6: "TCP", 17: "UDP", 58: "ICMPV6", 132: "SCTP", 136: "UDPLITE", 255: "RAW", 262: "MPTCP"}
	netlinkProtos  = map[uint32]string{0: "ROUTE", 2: "USERSOCK", 4: "SOCK_DIAG", 6: "XFRM", 9: "AUDIT", 10: "FIB_LOOKUP", 12: "NETFILTER", 15: "KOBJECT_UEVENT", 16: "GENERIC"}
	packetEthTypes = map[uint32]string{0x0003: "ETH_P_ALL", 0x0800: "ETH_P_IP", 0x0806: "ETH_P_ARP", 0x86dd: "ETH_P_IPV6"}
)

func lookup(m map[uint32]string, v uint32) string {
	if s, ok := m[v]; ok {
		return s
	}
	return fmt.Sprintf("%d", v)
}

// socketIndex is built once per archive: queued bytes per socket file id
// (sk-queues.img) and unix socket names by inode (for peers).
type socketIndex struct {
	queued    map[uint32]int64
	packets   map[uint32]int
	unixNames map[uint32]string
}

func (a *Archive) sockets(files map[uint32]*fdinfo.FileEntry) (*socketIndex, error) {
	ix := &socketIndex{queued: map[uint32]int64{}, packets: map[uint32]int{}, unixNames: map[uint32]string{}}
	for _, fe := range files {
		if u := fe.GetUsk(); u != nil {
			ix.unixNames[u.GetIno()] = unixName(u.GetName())
		}
	}
	data, ok := a.image(SkQueuesImage)
	if !ok {
		return ix, nil
	}
	// sk-queues.img: each SkPacketEntry is followed by its payload of
	// Length bytes, outside the protobuf.
	_, err := imageEntriesWithPayload(data, "SK_QUEUES", func(b []byte) (int, error) {
		var e sk_packet.SkPacketEntry
		if err := unmarshalOpts.Unmarshal(b, &e); err != nil {
			return 0, err
		}
		ix.queued[e.GetIdFor()] += int64(e.GetLength())
		ix.packets[e.GetIdFor()]++
		return int(e.GetLength()), nil
	})
	if err != nil {
		return nil, fileErr(path.Join(CheckpointDirectory, SkQueuesImage), err)
	}
	return ix, nil
}

// imageEntriesWithPayload walks an image whose entries each carry a
// payload after the protobuf; decode returns the payload's length.
func imageEntriesWithPayload(data []byte, magicName string, decode func([]byte) (int, error)) (int, error) {
	off, err := imageBody(data, magicName)
	if err != nil {
		return 0, err
	}
	n := 0
	for off < len(data) {
		if len(data)-off < 4 {
			return n, truncatedf("entry %d: %d bytes left, too short for a size", n, len(data)-off)
		}
		sz := int(binary.LittleEndian.Uint32(data[off:]))
		off += 4
		if sz > maxEntry || sz > len(data)-off {
			return n, truncatedf("entry %d: size %d but %d bytes left", n, sz, len(data)-off)
		}
		payload, err := decode(data[off : off+sz])
		if err != nil {
			return n, corruptf("entry %d: %v", n, err)
		}
		off += sz
		if payload < 0 || payload > len(data)-off {
			return n, truncatedf("entry %d: payload of %d bytes but %d left", n, payload, len(data)-off)
		}
		off += payload
		n++
	}
	return n, nil
}

func unixName(b []byte) string {
	name := strings.TrimRight(string(b), "\x00")
	if name != "" && name[0] == 0 {
		name = "@" + name[1:]
	}
	return name
}

// socket describes the socket behind an open file, if it is one.
func (a *Archive) socket(fd uint32, fe *fdinfo.FileEntry, ix *socketIndex) (Socket, bool) {
	switch {
	case fe.GetIsk() != nil:
		return a.inetSocket(fd, fe.GetIsk(), ix), true
	case fe.GetUsk() != nil:
		u := fe.GetUsk()
		s := Socket{FD: fd, Inode: u.GetIno(), Family: "UNIX", Type: lookup(sockTypes, u.GetType()), State: lookup(tcpStates, u.GetState()),
			Local: unixName(u.GetName()), Backlog: int(u.GetBacklog()),
			InQueue: ix.queued[u.GetId()], InPackets: ix.packets[u.GetId()]}
		if s.State == "CLOSE" && s.Type != "STREAM" {
			s.State = "UNCONN"
		}
		if peer := u.GetPeer(); peer != 0 {
			s.Remote = fmt.Sprintf("socket:[%d]", peer)
			if name := ix.unixNames[peer]; name != "" {
				s.Remote += " " + name
			}
		}
		return s, true
	case fe.GetPsk() != nil:
		p := fe.GetPsk()
		proto := uint32(uint16(p.GetProtocol())>>8 | uint16(p.GetProtocol())<<8) // network order
		s := Socket{FD: fd, Inode: p.GetId(), Family: "PACKET", Type: lookup(sockTypes, p.GetType()), Protocol: lookup(packetEthTypes, proto),
			State: "UNCONN", Local: fmt.Sprintf("ifindex %d", p.GetIfindex()),
			InQueue: ix.queued[p.GetId()], InPackets: ix.packets[p.GetId()]}
		if s.Protocol == fmt.Sprint(proto) {
			s.Protocol = fmt.Sprintf("0x%04x", proto)
		}
		return s, true
	case fe.GetNlsk() != nil:
		n := fe.GetNlsk()
		s := Socket{FD: fd, Inode: n.GetIno(), Family: "NETLINK", Type: "RAW", Protocol: lookup(netlinkProtos, n.GetProtocol()),
			State: lookup(tcpStates, n.GetState()), Local: fmt.Sprintf("portid %d", n.GetPortid()),
			InQueue: ix.queued[n.GetId()], InPackets: ix.packets[n.GetId()]}
		if s.State == "CLOSE" || s.State == "0" {
			s.State = "UNCONN"
		}
		if groups := n.GetGroups(); len(groups) > 0 && groups[0] != 0 {
			s.Local += fmt.Sprintf(" groups 0x%x", groups[0])
		}
		if n.GetDstPortid() != 0 {
			s.Remote = fmt.Sprintf("portid %d", n.GetDstPortid())
		}
		return s, true
	}
	return Socket{}, false
}

func (a *Archive) inetSocket(fd uint32, isk *sk_inet.InetSkEntry, ix *socketIndex) Socket {
	s := Socket{
		FD:       fd,
		Inode:    isk.GetIno(),
		Type:     lookup(sockTypes, isk.GetType()),
		Protocol: lookup(protos, isk.GetProto()),
		State:    lookup(tcpStates, isk.GetState()),
		Backlog:  int(isk.GetBacklog()),
		InQueue:  ix.queued[isk.GetId()], InPackets: ix.packets[isk.GetId()],
	}
	switch isk.GetFamily() {
	case 2:
		s.Family = "IPv4"
	case 10:
		s.Family = "IPv6"
	default:
		s.Family = fmt.Sprintf("%d", isk.GetFamily())
	}
	if s.Protocol != "TCP" && isk.GetState() == 7 {
		s.State = "UNCONN" // UDP and raw sockets sit in TCP_CLOSE
	}
	s.Local = hostPort(isk.GetSrcAddr(), isk.GetSrcPort())
	s.Remote = hostPort(isk.GetDstAddr(), isk.GetDstPort())
	if s.Protocol == "TCP" && s.State == "ESTABLISHED" {
		name := fmt.Sprintf(tcpStreamImageFmt, isk.GetIno())
		if data, ok := a.image(name); ok {
			if ts, err := decodeSingle(data, "TCP_STREAM", func() *tcp_stream.TcpStreamEntry { return new(tcp_stream.TcpStreamEntry) }); err == nil {
				s.InQueue, s.OutQueue = int64(ts.GetInqLen()), int64(ts.GetOutqLen())
			}
		}
	}
	return s
}
