package cluster

import (
	"fmt"
	"log/slog"
	"net"
	"testing"
	"time"
)

// Shutting gossip down while packets arrive returns: the transports' relays
// keep draining until the listeners they read from have stopped. (With the
// relay stopped first, a packet arriving during shutdown blocked
// memberlist's listener, and Shutdown, for good.)
func TestGossipShutdownUnderPackets(t *testing.T) {
	for i := range 20 {
		c := &Cluster{
			cfg: Config{NodeName: fmt.Sprintf("s%d", i), BindAddr: "127.0.0.1:0", Secret: []byte("antientropy-test-secret-0123456789"),
				ProbeInterval: time.Second, ProbeTimeout: 500 * time.Millisecond, SuspicionMult: 4},
			logger: slog.New(slog.DiscardHandler), members: map[string]*memberEntry{}, acks: map[string]time.Time{},
			wakeBootstrap: make(chan struct{}, 1), wakeReconcile: make(chan struct{}, 1),
		}
		if err := c.startGossip(); err != nil {
			t.Fatal(err)
		}
		to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(c.ml.LocalNode().Port)}
		conn, err := net.DialUDP("udp", nil, to)
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		flooded := make(chan struct{})
		go func() {
			defer close(flooded)
			junk := make([]byte, 512)
			for {
				select {
				case <-stop:
					return
				default:
					_, _ = conn.Write(junk)
				}
			}
		}()
		time.Sleep(20 * time.Millisecond)
		done := make(chan error, 1)
		go func() { done <- c.ml.Shutdown() }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: memberlist's Shutdown did not return within 5 s while packets arrived", i)
		}
		close(stop)
		<-flooded
		conn.Close()
	}
}
