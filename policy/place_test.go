package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestPlace(t *testing.T) {
	src := host("src", 10, 5)
	for _, tc := range []struct {
		name     string
		c        ContainerInfo
		hosts    []HostLoad
		counts   map[string]int
		images   map[string]bool
		want     string
		whyParts []string // when no target: each must appear in the error
	}{
		{name: "least utilised", c: ctr("c", "src", 1), hosts: []HostLoad{src, host("a", 10, 6), host("b", 10, 2)}, want: "b"},
		{name: "image present wins over load", c: ctr("c", "src", 1), hosts: []HostLoad{host("a", 10, 6), host("b", 10, 2)},
			images: map[string]bool{"a": true}, want: "a"},
		{name: "fewer containers first", c: ctr("c", "src", 1), hosts: []HostLoad{host("a", 10, 6), host("b", 10, 2)},
			counts: map[string]int{"b": 3, "a": 1}, want: "a"},
		{name: "constraint", c: ctr("c", "src", 1, "orchestrate.constraint.zone", "z1"),
			hosts: []HostLoad{host("a", 10, 0), with(host("b", 10, 9), func(h *HostLoad) { h.Labels = map[string]string{"zone": "z1"} })}, want: "b"},
		{name: "nothing fits", c: ctr("c", "src", 3),
			hosts: []HostLoad{src,
				with(host("dead", 10, 0), func(h *HostLoad) { h.Alive = false }),
				with(host("cord", 10, 0), func(h *HostLoad) { h.Cordoned = true }),
				host("full", 10, 8),
				with(host("docker", 10, 0), func(h *HostLoad) { h.Engine = "docker" }),
				with(host("oldcriu", 10, 0), func(h *HostLoad) { h.CRIUVersion = "3.17" }),
			},
			whyParts: []string{"dead: not alive", "cord: cordoned", "full: 2048 MiB free", "docker: engine docker", "oldcriu: CRIU"}},
		{name: "alone", c: ctr("c", "src", 1), hosts: []HostLoad{src}, whyParts: []string{"no other hosts"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Place(tc.c, src, tc.hosts, tc.counts, func(h string) bool { return tc.images[h] })
			if tc.want != "" {
				if err != nil || got != tc.want {
					t.Fatalf("Place = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if !errors.Is(err, ErrNoTarget) {
				t.Fatalf("Place = %q, %v; want ErrNoTarget", got, err)
			}
			for _, p := range tc.whyParts {
				if !strings.Contains(err.Error(), p) {
					t.Errorf("error %q lacks %q", err, p)
				}
			}
		})
	}
}
