// Command workload is orchestrate's test workload: a static program that holds
// N MiB of touched memory, ticks a counter every 10 ms, and reports what it saw
// over TCP. The e2e tests, the demo and the benchmarks run it in a container and
// read it before and after a migration.
//
// Each line sent to the listener is answered with one JSON line (the line
// "reset" also resets max_gap_ms after answering):
//
//	{"counter":..,"start":..,"checksum":..,"max_gap_ms":..,"mib":..,"pid":..}
//
// max_gap_ms is the longest time between two ticks: the downtime as the
// application itself saw it. A client may keep its connection open (an
// established TCP connection that a migration must carry), or send one line
// and hang up.
//
// With -startup-work the workload first works for about that long before it
// listens (a cold start that builds state, as a JIT warm-up or a cache load
// would): it hashes its memory over and over and keeps the result, which a
// copy restored from a checkpoint already has. ready_ms is how long the
// process took from its start to serving.
//
// With -rewrite-mibps the workload rewrites part of its memory at a steady rate
// (each rewrite changes page contents but not the checksum's definition, so the
// checksum is recomputed on demand). With -marker a string is kept in memory
// for forensic tests; with -file a file is written at start.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"hash/crc32"
	"log"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

const pageSize = 4096

type state struct {
	mu       sync.Mutex
	mem      []byte
	counter  uint64
	start    time.Time
	lastTick time.Time
	maxGap   time.Duration
	rng      *rand.Rand
	marker   []byte
	selfConn net.Conn // one established loopback connection, held open
	// The start-up phase's outcome, kept in memory like any warmed state.
	warmRounds int
	warm       uint32
	ready      time.Duration
}

type report struct {
	Counter  uint64 `json:"counter"`
	Start    string `json:"start"`
	Checksum string `json:"checksum"`
	MaxGapMS int64  `json:"max_gap_ms"`
	MiB      int    `json:"mib"`
	PID      int    `json:"pid"`
	Marker   string `json:"marker,omitempty"`
	SelfConn bool   `json:"self_conn"`
	// WarmRounds and ReadyMS describe the start-up phase (-startup-work).
	WarmRounds int    `json:"warm_rounds,omitempty"`
	Warm       string `json:"warm,omitempty"`
	ReadyMS    int64  `json:"ready_ms"`
}

func main() {
	mib := flag.Int("mib", 64, "MiB of memory to allocate and touch")
	listen := flag.String("listen", ":8080", "TCP address to report on")
	rewrite := flag.Float64("rewrite-mibps", 0, "MiB per second of memory to rewrite")
	marker := flag.String("marker", "", "a string to keep in memory")
	file := flag.String("file", "", "a file to write at start (its content is the marker or 'workload')")
	self := flag.Bool("self-conn", false, "hold an established TCP connection to its own listener")
	startup := flag.Duration("startup-work", 0, "work this long (hashing memory) before listening: a slow cold start")
	flag.Parse()

	s := &state{start: time.Now(), rng: rand.New(rand.NewPCG(uint64(*mib), 42))}
	s.mem = make([]byte, *mib<<20)
	for off := 0; off < len(s.mem); off += pageSize {
		s.fillPage(off)
	}
	if *marker != "" {
		s.marker = []byte("ORCHESTRATE-MARKER:" + *marker)
	}
	if *file != "" {
		content := "workload\n"
		if *marker != "" {
			content = *marker + "\n"
		}
		if err := os.WriteFile(*file, []byte(content), 0o644); err != nil {
			log.Fatalf("write %s: %v", *file, err)
		}
	}

	if *startup > 0 {
		s.warmUp(*startup)
	}
	s.ready = time.Since(s.start)

	// Go listens with MPTCP by default, and CRIU cannot dump MPTCP sockets
	// ("Unsupported proto 262"): use plain TCP.
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", *listen)
	if err != nil {
		log.Fatalf("listen %s: %v", *listen, err)
	}
	go s.serve(ln)
	if *self {
		var d net.Dialer
		d.SetMultipathTCP(false)
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			log.Fatalf("self connection: %v", err)
		}
		s.selfConn = c
	}
	log.Printf("workload: %d MiB touched, listening on %s", *mib, ln.Addr())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	// Pages to rewrite per tick, carried as a fraction across ticks.
	perTick := *rewrite * float64(1<<20) / pageSize / 100
	var carry float64
	s.lastTick = time.Now().Round(0)
	for {
		select {
		case <-sig:
			return
		case <-tick.C:
			// Wall-clock time, not the monotonic reading: a restored process
			// may see a monotonic clock that does not count the time it was
			// frozen, and the gap is exactly what we want to see.
			now := time.Now().Round(0)
			s.mu.Lock()
			s.counter++
			if gap := now.Sub(s.lastTick); gap > s.maxGap {
				s.maxGap = gap
			}
			s.lastTick = now
			carry += perTick
			for ; carry >= 1 && len(s.mem) > 0; carry-- {
				s.fillPage(s.rng.IntN(len(s.mem)/pageSize) * pageSize)
			}
			s.mu.Unlock()
		}
	}
}

// warmUp is the start-up phase: rounds of hashing the memory, each seeded
// with the last, until d has passed. The result stays in memory.
func (s *state) warmUp(d time.Duration) {
	table := crc32.MakeTable(crc32.Castagnoli)
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		for off := 0; off < len(s.mem) && time.Now().Before(end); off += 1 << 20 {
			s.warm = crc32.Update(s.warm, table, s.mem[off:min(off+1<<20, len(s.mem))])
		}
		s.warmRounds++
	}
}

// fillPage writes random bytes into the first half of a page and zeroes the
// second half, so compression has something to do but cannot remove it all.
func (s *state) fillPage(off int) {
	page := s.mem[off : off+pageSize]
	for i := 0; i < pageSize/2; i += 8 {
		binary.LittleEndian.PutUint64(page[i:], s.rng.Uint64())
	}
	clear(page[pageSize/2:])
}

func (s *state) snapshot() report {
	// The checksum is computed outside the lock: holding it for a pass over
	// a GiB would stall the ticker and show up as a false gap. With
	// -rewrite-mibps the memory changes anyway, so the sum is only
	// meaningful without it.
	sum := crc32.Checksum(s.mem, crc32.MakeTable(crc32.Castagnoli))
	s.mu.Lock()
	defer s.mu.Unlock()
	return report{
		Counter:    s.counter,
		Start:      s.start.UTC().Format(time.RFC3339Nano),
		Checksum:   fmt.Sprintf("%08x", sum),
		MaxGapMS:   s.maxGap.Milliseconds(),
		MiB:        len(s.mem) >> 20,
		PID:        os.Getpid(),
		Marker:     string(s.marker),
		SelfConn:   s.selfConn != nil,
		WarmRounds: s.warmRounds,
		Warm:       fmt.Sprintf("%08x", s.warm),
		ReadyMS:    s.ready.Milliseconds(),
	}
}

func (s *state) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			continue
		}
		go s.handle(c)
	}
}

func (s *state) handle(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	enc := json.NewEncoder(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if err := enc.Encode(s.snapshot()); err != nil {
			return
		}
		if strings.TrimSpace(line) == "reset" {
			s.mu.Lock()
			s.maxGap = 0
			s.mu.Unlock()
		}
	}
}
