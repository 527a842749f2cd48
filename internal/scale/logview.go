package scale

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"time"
)

// Convergence from the agents' own logs. Polling 100 agents for their
// member lists while they converge costs them CPU (each answer is the
// whole table) on the cores they converge on; the agents log every change
// of a member's gossip status ("member alive|dead|left", with a
// millisecond timestamp), so when the fleet has converged the logs tell
// when each agent did, without asking anything while it happens.

// GossipViewAt returns when the agent's log last reached n members alive
// and stayed there until its end: the time its gossip view converged. It
// fails when the log ends with fewer than n alive. The count is
// memberlist's view; the API's "suspect" overlay (members not acked for
// two probe passes) is not in the log.
func GossipViewAt(a *Agent, n int) (time.Time, error) {
	f, err := os.Open(a.LogFile)
	if err != nil {
		return time.Time{}, err
	}
	defer f.Close()
	alive := map[string]bool{}
	var at time.Time
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for s.Scan() {
		t, member, status, ok := memberEvent(s.Text())
		if !ok {
			continue
		}
		was := len(alive)
		if status == "alive" {
			alive[member] = true
		} else {
			delete(alive, member)
		}
		if len(alive) == n && was != n {
			at = t
		}
	}
	if err := s.Err(); err != nil {
		return time.Time{}, err
	}
	if len(alive) != n || at.IsZero() {
		return time.Time{}, fmt.Errorf("%s: its log ends with %d of %d members alive", a.Name, len(alive), n)
	}
	return at, nil
}

// memberEvent parses an agent's slog line `time=... level=INFO msg="member
// alive" node=... member=NAME ...`.
func memberEvent(line string) (t time.Time, member, status string, ok bool) {
	rest, found := strings.CutPrefix(line, "time=")
	if !found {
		return
	}
	ts, rest, found := strings.Cut(rest, " ")
	if !found {
		return
	}
	_, rest, found = strings.Cut(rest, `msg="member `)
	if !found {
		return
	}
	status, rest, found = strings.Cut(rest, `"`)
	if !found || (status != "alive" && status != "dead" && status != "left") {
		return
	}
	_, rest, found = strings.Cut(rest, " member=")
	if !found {
		return
	}
	member, _, _ = strings.Cut(rest, " ")
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil || member == "" {
		return
	}
	return t, member, status, true
}

// FleetViewAt is the latest GossipViewAt over the agents: when the last of
// them converged.
func FleetViewAt(agents []*Agent, n int) (time.Time, error) {
	var last time.Time
	for _, a := range agents {
		t, err := GossipViewAt(a, n)
		if err != nil {
			return time.Time{}, err
		}
		if t.After(last) {
			last = t
		}
	}
	return last, nil
}
