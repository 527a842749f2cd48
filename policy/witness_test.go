package policy

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// A witness (engine none) takes part in raft but never hosts containers:
// no planner ever picks it, whatever its free memory, and its memory does
// not count in the rebalance metric.
func TestWitnessNeverPicked(t *testing.T) {
	src := host("src", 10, 8)
	witness := func(name string) HostLoad {
		return with(host(name, 64, 0), func(h *HostLoad) { h.Engine, h.CRIUVersion = EngineNone, "" })
	}
	unknown := with(host("unknown", 64, 0), func(h *HostLoad) { h.Engine = "" })
	c := ctr("c", "src", 1)
	for _, tc := range []struct {
		name  string
		hosts []HostLoad
		want  string // "" = no target
	}{
		{"only a witness", []HostLoad{src, witness("w")}, ""},
		{"an engine of unknown type", []HostLoad{src, unknown}, ""},
		{"an empty witness loses to a fuller host", []HostLoad{src, witness("w"), host("a", 10, 7)}, "a"},
		{"even when the witness holds the image", []HostLoad{src, witness("w"), host("b", 10, 5)}, "b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Place(c, src, tc.hosts, nil, func(h string) bool { return h == "w" })
			switch {
			case tc.want == "" && !errors.Is(err, ErrNoTarget):
				t.Fatalf("Place = %q, %v; want no target", got, err)
			case tc.want == "" && !strings.Contains(err.Error(), "never hosts containers"):
				t.Errorf("reason %q does not name the witness", err)
			case tc.want != "" && got != tc.want:
				t.Fatalf("Place = %q, %v; want %s", got, err, tc.want)
			}
			ev := PlanEvacuation(time.Time{}, Trigger{Host: "src"}, []ContainerInfo{c, ctr("d", "src", 1)}, tc.hosts, MigrationModel{MaxParallel: 1})
			for _, mv := range ev.Moves {
				if mv.To != tc.want {
					t.Errorf("evacuation moves %s to %s", mv.Container, mv.To)
				}
			}
			if tc.want == "" && len(ev.Unplaced) != 2 {
				t.Errorf("evacuation placed onto a witness: %+v", ev)
			}
		})
	}
	// The witness's empty memory does not make the spread look large, and
	// nothing is ever moved onto it.
	hosts := []HostLoad{host("a", 10, 9), host("b", 10, 1), witness("w")}
	if s := Spread(hosts); s < 0.8-1e-9 || s > 0.8+1e-9 {
		t.Errorf("Spread with a witness = %v, want 0.8", s)
	}
	for _, mv := range PlanRebalance(hosts, []ContainerInfo{ctr("x", "a", 2), ctr("y", "a", 1)}, 0.1, 5) {
		if mv.To == "w" {
			t.Errorf("rebalance moves %s onto the witness", mv.Container)
		}
	}
}
