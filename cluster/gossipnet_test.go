package cluster

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// A packet costs its own size: memberlist's NetTransport handed on a
// 64 KiB buffer per packet, which made a quarter of an agent's CPU while a
// hundred agents joined.
func TestGossipNetPacketsAreTheirOwnSize(t *testing.T) {
	gn, peer := gossipNetPair(t)
	for _, size := range []int{1, 200, 1400, maxPacket - 100} {
		want := bytes.Repeat([]byte{byte(size)}, size)
		if _, err := peer.WriteTo(want, gn.udp.LocalAddr().String()); err != nil {
			t.Fatal(err)
		}
		select {
		case p := <-gn.PacketCh():
			if !bytes.Equal(p.Buf, want) {
				t.Fatalf("size %d: got %d bytes, not the packet sent", size, len(p.Buf))
			}
			if cap(p.Buf) != size {
				t.Errorf("size %d: buffer capacity %d", size, cap(p.Buf))
			}
			if p.From.String() != peer.udp.LocalAddr().String() {
				t.Errorf("packet from %s, sent from %s", p.From, peer.udp.LocalAddr())
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("size %d: no packet", size)
		}
	}
	// A host name is resolved (NetTransport accepted them too).
	host := net.JoinHostPort("localhost", fmt.Sprint(gn.udp.LocalAddr().(*net.UDPAddr).Port))
	if _, err := peer.WriteTo([]byte("by name"), host); err != nil {
		t.Fatalf("write to %s: %v", host, err)
	}
	if p := <-gn.PacketCh(); string(p.Buf) != "by name" {
		t.Fatalf("by name: got %q", p.Buf)
	}
	// The next read must not have overwritten what was handed on.
	first, second := []byte("first"), []byte("second-packet")
	peer.WriteTo(first, gn.udp.LocalAddr().String())
	p1 := <-gn.PacketCh()
	peer.WriteTo(second, gn.udp.LocalAddr().String())
	p2 := <-gn.PacketCh()
	if string(p1.Buf) != "first" || string(p2.Buf) != "second-packet" {
		t.Fatalf("packets %q, %q", p1.Buf, p2.Buf)
	}
}

// Streams: a dial reaches the other side's StreamCh, from the bind
// address; the advertise address is the bind address and port.
func TestGossipNetStreamsAndAdvertise(t *testing.T) {
	gn, peer := gossipNetPair(t)
	ip, port, err := gn.FinalAdvertiseAddr("", 0)
	if err != nil || !ip.Equal(net.IPv4(127, 0, 0, 1)) || port != gn.tcp.Addr().(*net.TCPAddr).Port {
		t.Fatalf("advertise %s:%d, %v", ip, port, err)
	}
	if ip, port, err := gn.FinalAdvertiseAddr("10.1.2.3", 7946); err != nil || ip.String() != "10.1.2.3" || port != 7946 {
		t.Fatalf("explicit advertise: %s:%d, %v", ip, port, err)
	}
	if _, _, err := gn.FinalAdvertiseAddr("not-an-ip", 1); err == nil {
		t.Fatal("a bad advertise address was accepted")
	}
	// Bound to every address (the default cluster.bind): a private address
	// of this host and the bound port, or an error that says what to set.
	wild, err := newGossipNet("0.0.0.0", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer wild.Shutdown()
	ip, port, err = wild.FinalAdvertiseAddr("", 0)
	switch {
	case err != nil && !strings.Contains(err.Error(), "set cluster.bind"):
		t.Fatalf("bound to 0.0.0.0: %v", err)
	case err == nil && (ip.IsUnspecified() || port != wild.tcp.Addr().(*net.TCPAddr).Port):
		t.Fatalf("bound to 0.0.0.0: advertises %s:%d", ip, port)
	}
	c, err := peer.DialAddressTimeout(memberlist.Address{Addr: gn.tcp.Addr().String()}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("push/pull"))
	select {
	case s := <-gn.StreamCh():
		defer s.Close()
		buf := make([]byte, 9)
		if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "push/pull" {
			t.Fatalf("stream read %q, %v", buf, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no stream")
	}
}

// Shutdown returns while packets and streams arrive that nobody reads,
// and leaves nothing bound.
func TestGossipNetShutdownWithNobodyReading(t *testing.T) {
	gn, err := newGossipNet("127.0.0.1", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := gn.udp.LocalAddr().String()
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for range 50 {
		conn.Write([]byte("unread"))
	}
	if c, err := net.Dial("tcp", gn.tcp.Addr().String()); err == nil {
		defer c.Close()
	}
	time.Sleep(50 * time.Millisecond)
	done := make(chan error, 1)
	go func() { done <- gn.Shutdown() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return with packets and a stream unread")
	}
	if err := gn.Shutdown(); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	again, err := newGossipNet("127.0.0.1", gn.tcp.Addr().(*net.TCPAddr).Port, nil)
	if err != nil {
		t.Fatalf("the port stayed bound after Shutdown: %v", err)
	}
	again.Shutdown()
}

// gossipNetPair is two gossipNets on loopback, shut down with the test.
func gossipNetPair(t *testing.T) (a, b *gossipNet) {
	t.Helper()
	for _, p := range []**gossipNet{&a, &b} {
		gn, err := newGossipNet("127.0.0.1", 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { gn.Shutdown() })
		*p = gn
	}
	return a, b
}

// A bind that fails half-way (the UDP port taken) leaves the TCP port free,
// and a bind address that is not an IP is refused by name.
func TestGossipNetBindFailuresLeaveNothingBound(t *testing.T) {
	taken, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port := taken.LocalAddr().(*net.UDPAddr).Port
	if gn, err := newGossipNet("127.0.0.1", port, nil); err == nil || !strings.Contains(err.Error(), "UDP") {
		if gn != nil {
			gn.Shutdown()
		}
		t.Fatalf("UDP port taken: %v", err)
	}
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatalf("the TCP port stayed bound after the failed bind: %v", err)
	}
	l.Close()
	if _, err := newGossipNet("gossip.example", 0, nil); err == nil || !strings.Contains(err.Error(), "not an IP address") {
		t.Fatalf("host name as bind address: %v", err)
	}
}
