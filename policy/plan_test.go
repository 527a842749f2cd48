package policy

import (
	"reflect"
	"testing"
	"time"
)

const gib = int64(1) << 30

func host(name string, capGiB, usedGiB int64) HostLoad {
	return HostLoad{Name: name, Alive: true, Engine: "podman", Arch: "amd64", CRIUVersion: "4.0",
		MemoryCapacity: capGiB * gib, MemoryUsed: usedGiB * gib}
}

func ctr(id, h string, memGiB int64, labels ...string) ContainerInfo {
	c := ContainerInfo{ID: id, Host: h, MemoryBytes: memGiB * gib, Labels: map[string]string{}}
	for i := 0; i+1 < len(labels); i += 2 {
		c.Labels[labels[i]] = labels[i+1]
	}
	return c
}

func with(h HostLoad, f func(*HostLoad)) HostLoad { f(&h); return h }

func TestSpread(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hosts []HostLoad
		want  float64
	}{
		{"none", nil, 0},
		{"one", []HostLoad{host("a", 10, 5)}, 0},
		{"two", []HostLoad{host("a", 10, 8), host("b", 10, 2)}, 0.6},
		{"dead and cordoned ignored", []HostLoad{host("a", 10, 8), host("b", 10, 2),
			with(host("c", 10, 0), func(h *HostLoad) { h.Alive = false }),
			with(host("d", 10, 10), func(h *HostLoad) { h.Cordoned = true })}, 0.6},
	} {
		if got := Spread(tc.hosts); got < tc.want-1e-9 || got > tc.want+1e-9 {
			t.Errorf("%s: Spread = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestPlanRebalance(t *testing.T) {
	for _, tc := range []struct {
		name       string
		hosts      []HostLoad
		containers []ContainerInfo
		threshold  float64
		maxMoves   int
		want       []Move
	}{
		{
			name:       "under threshold: no-op",
			hosts:      []HostLoad{host("a", 10, 5), host("b", 10, 4)},
			containers: []ContainerInfo{ctr("c1", "a", 1)},
			threshold:  0.2, maxMoves: 5,
		},
		{
			name:       "one move evens two hosts",
			hosts:      []HostLoad{host("a", 10, 8), host("b", 10, 2)},
			containers: []ContainerInfo{ctr("c1", "a", 3), ctr("c2", "a", 5)},
			threshold:  0.1, maxMoves: 5,
			want: []Move{{Container: "c1", From: "a", To: "b", Bytes: 3 * gib}},
		},
		{
			name:  "max moves caps the plan",
			hosts: []HostLoad{host("a", 10, 9), host("b", 10, 0)},
			containers: []ContainerInfo{ctr("c1", "a", 1), ctr("c2", "a", 1), ctr("c3", "a", 1),
				ctr("c4", "a", 1), ctr("c5", "a", 1), ctr("c6", "a", 1), ctr("c7", "a", 1), ctr("c8", "a", 1), ctr("c9", "a", 1)},
			threshold: 0.05, maxMoves: 2,
			want: []Move{{Container: "c1", From: "a", To: "b", Bytes: gib}, {Container: "c2", From: "a", To: "b", Bytes: gib}},
		},
		{
			name:       "opted-out container stays",
			hosts:      []HostLoad{host("a", 10, 8), host("b", 10, 2)},
			containers: []ContainerInfo{ctr("c1", "a", 3, LabelMigrate, "false"), ctr("c2", "a", 5)},
			threshold:  0.1, maxMoves: 5,
			// Moving c2 (5 GiB) gives 0.3/0.7: spread 0.4 < 0.6, so it still helps.
			want: []Move{{Container: "c2", From: "a", To: "b", Bytes: 5 * gib}},
		},
		{
			name:       "a move that would worsen the spread is not made",
			hosts:      []HostLoad{host("a", 10, 8), host("b", 10, 2)},
			containers: []ContainerInfo{ctr("big", "a", 8)},
			threshold:  0.1, maxMoves: 5,
		},
		{
			name: "constraint labels pick the matching host",
			hosts: []HostLoad{host("a", 10, 8), host("b", 10, 2),
				with(host("c", 10, 3), func(h *HostLoad) { h.Labels = map[string]string{"zone": "west"} })},
			containers: []ContainerInfo{ctr("c1", "a", 2, LabelConstraintPrefix+"zone", "west"), ctr("c2", "a", 6, LabelMigrate, "false")},
			threshold:  0.2, maxMoves: 1,
			want: []Move{{Container: "c1", From: "a", To: "c", Bytes: 2 * gib}},
		},
		{
			name: "incompatible hosts are not targets",
			hosts: []HostLoad{host("a", 10, 8),
				with(host("arm", 10, 0), func(h *HostLoad) { h.Arch = "arm64" }),
				with(host("docker", 10, 0), func(h *HostLoad) { h.Engine = "docker" }),
				with(host("oldcriu", 10, 0), func(h *HostLoad) { h.CRIUVersion = "3.17" }),
				with(host("nocriu", 10, 0), func(h *HostLoad) { h.CRIUVersion = "" }),
				host("ok", 10, 4)},
			containers: []ContainerInfo{ctr("c1", "a", 2)},
			threshold:  0.1, maxMoves: 3,
			// Spread counts every eligible host (0.8 - 0 = 0.8); moving c1 to
			// "ok" lowers the max (0.6 - 0 = 0.6) and is the only legal move.
			want: []Move{{Container: "c1", From: "a", To: "ok", Bytes: 2 * gib}},
		},
		{
			name:       "not enough free memory",
			hosts:      []HostLoad{host("a", 16, 14), host("b", 4, 3)},
			containers: []ContainerInfo{ctr("c1", "a", 2)},
			threshold:  0.05, maxMoves: 3,
		},
		{
			name: "cordoned and dead hosts neither give nor take",
			hosts: []HostLoad{host("a", 10, 6), host("b", 10, 2),
				with(host("cordoned", 10, 10), func(h *HostLoad) { h.Cordoned = true }),
				with(host("dead", 10, 0), func(h *HostLoad) { h.Alive = false })},
			containers: []ContainerInfo{ctr("x", "cordoned", 2), ctr("c1", "a", 2)},
			threshold:  0.1, maxMoves: 3,
			want: []Move{{Container: "c1", From: "a", To: "b", Bytes: 2 * gib}},
		},
		{
			name:       "two full hosts, two empty: progress through equal spreads",
			hosts:      []HostLoad{host("a", 10, 8), host("b", 10, 8), host("c", 10, 0), host("d", 10, 0)},
			containers: []ContainerInfo{ctr("a1", "a", 4), ctr("a2", "a", 4), ctr("b1", "b", 4), ctr("b2", "b", 4)},
			threshold:  0.1, maxMoves: 5,
			want: []Move{
				{Container: "a1", From: "a", To: "c", Bytes: 4 * gib}, // spread still .8, variance down
				{Container: "b1", From: "b", To: "d", Bytes: 4 * gib}, // 4,4,4,4: spread 0
			},
		},
		{
			name:  "three hosts, several moves, each container once",
			hosts: []HostLoad{host("a", 10, 9), host("b", 10, 1), host("c", 10, 2)},
			containers: []ContainerInfo{ctr("c1", "a", 4), ctr("c2", "a", 3), ctr("c3", "a", 2),
				ctr("d1", "c", 2)},
			threshold: 0.1, maxMoves: 5,
			want: []Move{
				{Container: "c1", From: "a", To: "b", Bytes: 4 * gib}, // 5,5,2: spread .3
				{Container: "c3", From: "a", To: "c", Bytes: 2 * gib}, // 3,5,4: spread .2
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := Spread(tc.hosts)
			in := append([]HostLoad(nil), tc.hosts...)
			got := PlanRebalance(tc.hosts, tc.containers, tc.threshold, tc.maxMoves)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("PlanRebalance = %+v\nwant %+v", got, tc.want)
			}
			if !reflect.DeepEqual(in, tc.hosts) {
				t.Fatal("PlanRebalance mutated its input")
			}
			if after := Spread(apply(tc.hosts, got)); after > before {
				t.Fatalf("spread worsened: %v → %v", before, after)
			}
		})
	}
}

func apply(hosts []HostLoad, moves []Move) []HostLoad {
	hs := append([]HostLoad(nil), hosts...)
	for _, m := range moves {
		for i := range hs {
			if hs[i].Name == m.From {
				hs[i].MemoryUsed -= m.Bytes
			}
			if hs[i].Name == m.To {
				hs[i].MemoryUsed += m.Bytes
			}
		}
	}
	return hs
}

func TestPlanEvacuation(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	// 1 s overhead + 1 GiB/s: a container of n GiB takes 1+n seconds.
	model := MigrationModel{Overhead: time.Second, BytesPerSecond: float64(gib), MaxParallel: 4}
	src := with(host("doomed", 32, 10), func(h *HostLoad) { h.Cordoned = true })
	cs := []ContainerInfo{
		ctr("big", "doomed", 4),
		ctr("small", "doomed", 1),
		ctr("vip", "doomed", 3, LabelPriority, "10"),
		ctr("pinned", "doomed", 1, LabelMigrate, "false"),
		ctr("mid", "doomed", 2),
		ctr("elsewhere", "b", 1),
	}
	hosts := []HostLoad{src, host("b", 10, 2), host("c", 10, 1)}
	for _, tc := range []struct {
		name      string
		deadline  time.Duration // from now; 0 = none
		wantPar   int
		wantFits  bool
		wantSpan  time.Duration
		hostsOver []HostLoad
		wantOrder []string
		wantTo    []string
		unplaced  []string
	}{
		// Estimates in order vip(4s) small(2s) mid(3s) big(5s): 14 s serial.
		{name: "no deadline: serial", wantPar: 1, wantFits: true, wantSpan: 14 * time.Second},
		{name: "plenty of time: serial", deadline: 2 * time.Minute, wantPar: 1, wantFits: true, wantSpan: 14 * time.Second},
		// Two lanes: vip 0-4, small 0-2, mid 2-5, big 4-9 → 9 s.
		{name: "tight: two lanes", deadline: 10 * time.Second, wantPar: 2, wantFits: true, wantSpan: 9 * time.Second},
		// Three lanes: vip 0-4, small 0-2, mid 0-3, big 2-7 → 7 s > 6 s; four: 5 s.
		{name: "very tight: four lanes", deadline: 6 * time.Second, wantPar: 4, wantFits: true, wantSpan: 5 * time.Second},
		{name: "impossible: best effort", deadline: 3 * time.Second, wantPar: 4, wantFits: false, wantSpan: 5 * time.Second},
		{
			name: "room for only two", hostsOver: []HostLoad{src, host("b", 5, 1)},
			wantPar: 1, wantFits: true, wantSpan: 6 * time.Second,
			wantOrder: []string{"vip", "small"}, wantTo: []string{"b", "b"}, unplaced: []string{"pinned", "mid", "big"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trig := Trigger{Kind: KindSpotTerminate, Host: "doomed"}
			if tc.deadline > 0 {
				trig.Deadline = now.Add(tc.deadline)
			}
			hs := hosts
			if tc.hostsOver != nil {
				hs = tc.hostsOver
			}
			ev := PlanEvacuation(now, trig, cs, hs, model)
			var order, to []string
			for _, m := range ev.Moves {
				order, to = append(order, m.Container), append(to, m.To)
				if m.From != "doomed" {
					t.Fatalf("move %+v not from the doomed host", m)
				}
			}
			wantOrder, unplaced := tc.wantOrder, tc.unplaced
			if wantOrder == nil {
				wantOrder, unplaced = []string{"vip", "small", "mid", "big"}, []string{"pinned"}
			}
			if !reflect.DeepEqual(order, wantOrder) {
				t.Fatalf("order = %v, want %v", order, wantOrder)
			}
			if tc.wantTo != nil && !reflect.DeepEqual(to, tc.wantTo) {
				t.Fatalf("targets = %v, want %v", to, tc.wantTo)
			}
			if !reflect.DeepEqual(ev.Unplaced, unplaced) {
				t.Fatalf("unplaced = %v, want %v", ev.Unplaced, unplaced)
			}
			if ev.Parallelism != tc.wantPar || ev.Fits != tc.wantFits || ev.Makespan != tc.wantSpan {
				t.Fatalf("parallelism %d fits %v makespan %v; want %d %v %v", ev.Parallelism, ev.Fits, ev.Makespan, tc.wantPar, tc.wantFits, tc.wantSpan)
			}
		})
	}
}

// Targets spread the load: each move goes to the host left least utilised.
func TestPlanEvacuationTargets(t *testing.T) {
	hosts := []HostLoad{host("doomed", 10, 6), host("b", 10, 0), host("c", 10, 1)}
	cs := []ContainerInfo{ctr("x", "doomed", 2), ctr("y", "doomed", 2), ctr("z", "doomed", 2)}
	ev := PlanEvacuation(time.Time{}, Trigger{Host: "doomed"}, cs, hosts, MigrationModel{})
	var to []string
	for _, m := range ev.Moves {
		to = append(to, m.To)
	}
	// x → b (0.2 vs 0.3), y → c (0.3 vs 0.4), z → b (0.4 vs 0.5).
	if want := []string{"b", "c", "b"}; !reflect.DeepEqual(to, want) {
		t.Fatalf("targets = %v, want %v", to, want)
	}
}
