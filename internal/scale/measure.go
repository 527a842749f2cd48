package scale

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
)

// Waiting and timing. The waits here poll the agents' APIs over their
// unix sockets, a few at a time (the machine runs the whole fleet), and
// time a condition from when the poll that saw it returned: the resolution
// of a time is one poll round, which the bench reports. Gossip convergence
// is the exception: it is read from the agents' logs (logview.go).

// pollEvery is the pause between two polls of one agent.
const pollEvery = 20 * time.Millisecond

func status(ctx context.Context, a *Agent) (cluster.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return a.Client().Status(ctx)
}

// WaitLeader polls agents until all of them name the same leader, other
// than not (a leader just killed).
func WaitLeader(ctx context.Context, agents []*Agent, not string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		leader := ""
		last = nil
		for _, a := range agents {
			st, err := status(ctx, a)
			switch {
			case err != nil:
				last = err
			case st.Leader == "" || st.Leader == not:
				last = fmt.Errorf("%s knows no leader (says %q)", a.Name, st.Leader)
			case leader != "" && st.Leader != leader:
				last = fmt.Errorf("%s says %s, another %s", a.Name, st.Leader, leader)
			}
			if last != nil {
				break
			}
			leader = st.Leader
		}
		if last == nil {
			return leader, nil
		}
		if err := sleep(ctx, pollEvery); err != nil {
			return "", err
		}
	}
	return "", fmt.Errorf("%w after %s waiting for a leader: %v", errTimeout, timeout, last)
}

// WaitElected polls agents (the voters left) until one of them, other than
// not, is leader, and returns it.
func WaitElected(ctx context.Context, agents []*Agent, not string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, a := range agents {
			if st, err := status(ctx, a); err == nil && st.State == "Leader" && a.Name != not {
				return a.Name, nil
			}
		}
		if err := sleep(ctx, pollEvery/2); err != nil {
			return "", err
		}
	}
	return "", fmt.Errorf("%w after %s waiting for an election", errTimeout, timeout)
}

// Check answers whether an agent reached the condition a wait is for.
type Check func(ctx context.Context, a *Agent) (bool, error)

// WaitAll polls every agent, at most par at a time and each in turn, until
// check holds for it. It returns when the last agent got there, measured
// from start, or an error naming the agents that did not within timeout.
// An agent is polled again only after every other pending one was.
func WaitAll(ctx context.Context, agents []*Agent, par int, timeout time.Duration, start time.Time, check Check) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	queue := make(chan *Agent, len(agents))
	for _, a := range agents {
		queue <- a
	}
	var mu sync.Mutex
	left, lastErr := len(agents), map[string]error{}
	var last time.Duration
	var wg sync.WaitGroup
	for range min(par, len(agents)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				var a *Agent
				select {
				case a = <-queue:
				case <-ctx.Done():
					return
				}
				ok, err := check(ctx, a)
				mu.Lock()
				if ok {
					left--
					last = max(last, time.Since(start))
					delete(lastErr, a.Name)
					if left == 0 {
						cancel()
					}
				} else {
					if err == nil {
						err = fmt.Errorf("not yet")
					}
					lastErr[a.Name] = err
				}
				mu.Unlock()
				if !ok {
					queue <- a
					if sleep(ctx, pollEvery) != nil {
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if left > 0 {
		var names []string
		for n, err := range lastErr {
			names = append(names, n+": "+err.Error())
		}
		slices.Sort(names)
		if len(names) > 5 {
			names = append(names[:5], fmt.Sprintf("and %d more", len(names)-5))
		}
		return time.Since(start), fmt.Errorf("%w after %s: %d agents not there: %s", errTimeout, timeout, left, strings.Join(names, "; "))
	}
	return last, nil
}

// SeesAlive holds when the agent sees n members alive.
func SeesAlive(n int) Check {
	return func(ctx context.Context, a *Agent) (bool, error) {
		ms, err := members(ctx, a, "")
		if err != nil {
			return false, err
		}
		alive := 0
		for _, m := range ms {
			if m.Status == cluster.StatusAlive {
				alive++
			}
		}
		return alive == n, fmt.Errorf("sees %d alive", alive)
	}
}

// KnowsLeader holds when the agent follows a leader other than not.
func KnowsLeader(not string) Check {
	return func(ctx context.Context, a *Agent) (bool, error) {
		st, err := status(ctx, a)
		if err != nil {
			return false, err
		}
		return st.Leader != "" && st.Leader != not, fmt.Errorf("leader %q", st.Leader)
	}
}

// SeesStatus holds when the agent sees member name with status.
func SeesStatus(name, want string) Check {
	return func(ctx context.Context, a *Agent) (bool, error) {
		ms, err := members(ctx, a, name)
		if err != nil {
			return false, err
		}
		got := "unknown"
		if len(ms) == 1 {
			got = ms[0].Status
		}
		return got == want, fmt.Errorf("sees %s %s", name, got)
	}
}

func members(ctx context.Context, a *Agent, name string) ([]cluster.Member, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var ms []cluster.Member
	path := "/v1/members"
	if name != "" {
		path += "?name=" + name
	}
	return ms, a.Client().Do(ctx, http.MethodGet, path, nil, &ms)
}

// RaftServers is how many raft servers (voters and non-voters) the agent
// sees.
func RaftServers(ctx context.Context, a *Agent) (int, error) {
	ms, err := members(ctx, a, "")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range ms {
		if m.Role != cluster.RoleNone {
			n++
		}
	}
	return n, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Time runs f n times and returns each duration, sorted.
func Time(n int, f func() error) ([]time.Duration, error) {
	out := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if err := f(); err != nil {
			return nil, err
		}
		out = append(out, time.Since(start))
	}
	slices.Sort(out)
	return out, nil
}

// Pct returns the p-th percentile (0-100, nearest rank) of sorted ds.
func Pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := (p*len(ds) + 99) / 100
	return ds[min(max(i-1, 0), len(ds)-1)]
}

// Median of unsorted values.
func Median[T int64 | float64 | time.Duration](vs []T) T {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// CLI runs the orchestrate CLI against the agent, output discarded.
func (a *Agent) CLI(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, a.bin, append(args, "--agent", a.Socket)...)
	cmd.Stdout = io.Discard
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("orchestrate %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return nil
}

// Proc is a process's CPU time and resident memory.
type Proc struct {
	CPU time.Duration // user + system
	RSS int64         // bytes
}

// ReadProc reads /proc/PID/stat and /proc/PID/status.
func ReadProc(pid int) (Proc, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Proc{}, err
	}
	// Fields after the command (which may hold spaces) start after ")".
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return Proc{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)                 // utime, field 14
	st, _ := strconv.ParseInt(f[12], 10, 64)                 // stime, field 15
	p := Proc{CPU: time.Duration(ut+st) * time.Second / 100} // USER_HZ is 100 on Linux
	sf, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Proc{}, err
	}
	defer sf.Close()
	sc := bufio.NewScanner(sf)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			p.RSS = kb << 10
		}
	}
	return p, sc.Err()
}

// NetBytes reads the agent's gossip and raft byte counters (in + out) from
// its /metrics.
func NetBytes(ctx context.Context, a *Agent) (gossip, raft float64, err error) {
	ms, err := Metrics(ctx, a, "orchestrate_gossip_bytes_total{", "orchestrate_raft_bytes_total{")
	return ms[0], ms[1], err
}

// Metrics sums, for each prefix, the samples of the agent's /metrics whose
// line starts with it.
func Metrics(ctx context.Context, a *Agent, prefixes ...string) ([]float64, error) {
	out := make([]float64, len(prefixes))
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	resp, err := a.Client().Raw(ctx, http.MethodGet, "/metrics", nil)
	if err != nil {
		return out, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		for i, p := range prefixes {
			if strings.HasPrefix(line, p) {
				v, _ := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
				out[i] += v
			}
		}
	}
	return out, sc.Err()
}
