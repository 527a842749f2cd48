package policy

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"sort"
	"testing"
)

// planRebalanceReference is PlanRebalance as it was before the spread
// index: every candidate recomputes Spread and variance over all hosts.
// The index must never change a plan.
func planRebalanceReference(hosts []HostLoad, containers []ContainerInfo, threshold float64, maxMoves int) []Move {
	hs := append([]HostLoad(nil), hosts...)
	idx := make(map[string]int, len(hs))
	for i, h := range hs {
		idx[h.Name] = i
	}
	cs := append([]ContainerInfo(nil), containers...)
	sort.Slice(cs, func(i, j int) bool { return cs[i].ID < cs[j].ID })
	moved := map[string]bool{}
	var moves []Move
	for len(moves) < maxMoves {
		cur := Spread(hs)
		if cur <= threshold {
			break
		}
		curVar := variance(hs)
		best, bestTo := -1, -1
		bestSpread, bestVar := cur, curVar
		for ci, c := range cs {
			si, ok := idx[c.Host]
			if !ok || moved[c.ID] || !movable(c) || c.MemoryBytes <= 0 || !hs[si].eligible() {
				continue
			}
			for ti := range hs {
				if !fits(c, hs[si], hs[ti]) {
					continue
				}
				hs[si].MemoryUsed -= c.MemoryBytes
				hs[ti].MemoryUsed += c.MemoryBytes
				s, v := Spread(hs), variance(hs)
				hs[si].MemoryUsed += c.MemoryBytes
				hs[ti].MemoryUsed -= c.MemoryBytes
				var better bool
				switch {
				case s < bestSpread-eps:
					better = true
				case s > bestSpread+eps:
				case v < bestVar-eps:
					better = true
				case v > bestVar+eps:
				default:
					better = best >= 0 && c.MemoryBytes < cs[best].MemoryBytes
				}
				if better {
					best, bestTo, bestSpread, bestVar = ci, ti, s, v
				}
			}
		}
		// bestSpread <= cur always holds here; require real progress.
		if best < 0 || (bestSpread > cur-eps && bestVar > curVar-eps) {
			break
		}
		c := cs[best]
		si := idx[c.Host]
		hs[si].MemoryUsed -= c.MemoryBytes
		hs[bestTo].MemoryUsed += c.MemoryBytes
		moved[c.ID] = true
		moves = append(moves, Move{Container: c.ID, From: c.Host, To: hs[bestTo].Name, Bytes: c.MemoryBytes})
	}
	return moves
}

func TestPlanRebalanceMatchesReference(t *testing.T) {
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 7))
		n := 2 + r.IntN(12)
		var hosts []HostLoad
		var cs []ContainerInfo
		for i := range n {
			h := HostLoad{Name: fmt.Sprintf("h%02d", i), Alive: r.IntN(10) > 0, Cordoned: r.IntN(10) == 0, Engine: "podman", Arch: "amd64",
				CRIUVersion: "4.2.1", MemoryCapacity: int64(4+r.IntN(60)) << 30}
			if r.IntN(15) == 0 {
				h.Engine = EngineNone
			}
			for j := range r.IntN(8) {
				c := ContainerInfo{ID: fmt.Sprintf("c%02d-%d", i, j), Host: h.Name, MemoryBytes: int64(1+r.IntN(8)) << 28}
				if r.IntN(10) == 0 {
					c.Labels = map[string]string{LabelMigrate: "false"}
				}
				h.MemoryUsed += c.MemoryBytes
				cs = append(cs, c)
			}
			h.MemoryUsed = min(h.MemoryUsed, h.MemoryCapacity)
			hosts = append(hosts, h)
		}
		th, max := []float64{0.01, 0.1, 0.3}[r.IntN(3)], 1+r.IntN(6)
		got, want := PlanRebalance(hosts, cs, th, max), planRebalanceReference(hosts, cs, th, max)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("seed %d: index plan %+v\nreference plan %+v", seed, got, want)
		}
	}
}
