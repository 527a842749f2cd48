package scale

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/migrate"
)

// root is the module root (this package is internal/scale).
func root(t testing.TB) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(wd, "..", "..")
}

func envInts(name, def string) []int {
	v := os.Getenv(name)
	if v == "" {
		v = def
	}
	var out []int
	for _, s := range strings.Split(v, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

// run is what one fleet measured.
type run struct {
	election, converged, raftConverged, reports time.Duration
	failover, failoverAll                       time.Duration
	deadLeader, deadFollower                    time.Duration
	membersCLI, psCLI, membersAPI, psAPI        []time.Duration // sorted
	drainDry, rebalanceDry, moveSeen            time.Duration
	rss, cpu, gossip, raftBytes                 []float64 // per agent at idle: bytes, % of a core, B/s, B/s
	leaderRSS, leaderCPU, leaderRaft            float64
	leaderHeap, leaderGoroutines                float64
	lost                                        int
	startCPU                                    time.Duration // all agents, from start to gossip convergence
	load                                        string
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// TestBenchScale starts fleets of N agents (SCALE_N, default 10,50,100;
// each SCALE_REPEATS times, default 3) on loopback, each agent with
// SCALE_CONTAINERS containers (default 10; one host holds 100) in an
// in-memory engine (SCALE_ENGINE=none runs witnesses instead), and prints
// what docs/architecture.md's "How far it scales" reports, as medians of
// the repeats. It also proves, at every size, that killing the leader
// loses no committed record. make bench runs it; at 100 agents one run
// takes about two minutes.
func TestBenchScale(t *testing.T) {
	if os.Getenv("ORCHESTRATE_BENCH") == "" {
		t.Skip("set ORCHESTRATE_BENCH=1 (make bench)")
	}
	bin, err := Build(root(t), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sizes, repeats := envInts("SCALE_N", "10,50,100"), envInts("SCALE_REPEATS", "3")[0]
	k := envInts("SCALE_CONTAINERS", "10")[0]
	eng := os.Getenv("SCALE_ENGINE")
	if eng == "" {
		eng = "fake"
	}
	results := map[int][]run{}
	for _, n := range sizes {
		for r := range repeats {
			start := time.Now()
			res, err := runFleet(t, bin, n, k, eng)
			if err != nil { // a finding: reported, and the other runs go on
				t.Errorf("N=%d run %d failed after %s: %v", n, r+1, time.Since(start).Round(time.Second), err)
				continue
			}
			t.Logf("N=%d run %d took %s (load %s): converged %s (agents' CPU %s), raft %s, failover %s, dead %s/%s, ps p99 %s (API %s), idle RSS %.1f MB, gossip %.0f B/s",
				n, r+1, time.Since(start).Round(time.Second), res.load, secs(res.converged), secs(res.startCPU), secs(res.raftConverged), secs(res.failover),
				secs(res.deadFollower), secs(res.deadLeader), ms(Pct(res.psCLI, 99)), ms(Pct(res.psAPI, 99)), Median(res.rss)/1e6, Median(res.gossip))
			results[n] = append(results[n], res)
		}
	}
	for _, n := range sizes {
		if len(results[n]) == 0 {
			t.Fatalf("no run at N=%d completed", n)
		}
	}
	printTable(sizes, results, k, eng)
}

func runFleet(t *testing.T, bin string, n, k int, eng string) (res run, err error) {
	ctx := context.Background()
	res.load = loadavg()
	dir, err := os.MkdirTemp("", fmt.Sprintf("scale-%d-", n))
	if err != nil {
		return res, err
	}
	cfg := Config{Bin: bin, Dir: dir, N: n, Engine: eng, Containers: k}
	big := -1
	if eng == "fake" && n >= 6 {
		big, cfg.BigHost, cfg.BigContainers = 3, 3, 100
	}
	f, err := New(cfg)
	if err != nil {
		return res, err
	}
	defer func() {
		f.Close()
		if err != nil || os.Getenv("SCALE_KEEP") != "" {
			t.Logf("the fleet's logs are kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	}()
	leader, took, err := f.Bootstrap(ctx, 60*time.Second)
	if err != nil {
		return res, err
	}
	res.election = took
	last, err := f.StartRest()
	if err != nil {
		return res, err
	}
	par := max(4, runtime.NumCPU()*2)
	// Gossip convergence comes from the agents' logs (logview.go): polling
	// a hundred agents for their member tables while they converge took a
	// good part of the two cores they converge on. One pass over the APIs
	// then confirms it.
	at, err := waitLogs(f.Agents, n, 2*time.Minute)
	if err != nil {
		return res, fmt.Errorf("gossip convergence: %w", err)
	}
	res.converged = at.Sub(last)
	if _, err = WaitAll(ctx, f.Agents, 1, time.Minute, last, SeesAlive(n)); err != nil {
		return res, fmt.Errorf("gossip convergence (API): %w", err)
	}
	// What starting cost: all agents share this machine's cores, so the
	// CPU they needed to start bounds how fast n of them can converge.
	for _, a := range f.Agents {
		if p, err := ReadProc(a.Pid()); err == nil {
			res.startCPU += p.CPU
		}
	}
	// Raft has converged when every agent follows a leader and the
	// configuration with all n servers reached the last agent started.
	if res.raftConverged, err = WaitAll(ctx, f.Agents, par, 2*time.Minute, last, KnowsLeader("")); err != nil {
		return res, fmt.Errorf("raft convergence: %w", err)
	}
	// The follower the reads go to: a non-voter that is not the big host.
	follower := f.Agents[n-1]
	d, err := WaitAll(ctx, []*Agent{follower}, 1, 2*time.Minute, last, func(ctx context.Context, a *Agent) (bool, error) {
		s, err := RaftServers(ctx, a)
		return s == n, fmt.Errorf("%d raft servers (%v)", s, err)
	})
	if err != nil {
		return res, fmt.Errorf("raft membership: %w", err)
	}
	res.raftConverged = max(res.raftConverged, d)
	// Voters stay capped at max_voters (3); everyone else is a non-voter.
	ms, err := follower.Client().Members(ctx)
	if err != nil {
		return res, err
	}
	roles := map[string]int{}
	for _, m := range ms {
		roles[m.Role]++
	}
	if roles[cluster.RoleLeader] != 1 || roles[cluster.RoleVoter] != min(n, 3)-1 || roles[cluster.RoleNonvoter] != n-min(n, 3) {
		return res, fmt.Errorf("raft roles at %d agents: %v", n, roles)
	}
	// Leadership may have moved while n agents joined (a leader that
	// cannot reach a quorum within its lease steps down).
	if leader, err = WaitLeader(ctx, f.Agents, "", time.Minute); err != nil {
		return res, err
	}
	la, _ := f.Agent(leader)
	want := 0
	if eng == "fake" {
		want = n * k
		if big >= 0 {
			want += 100 - k
		}
	}
	if res.reports, err = WaitAll(ctx, []*Agent{follower}, 1, 2*time.Minute, last, func(ctx context.Context, a *Agent) (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		ps, err := a.Client().PS(cctx)
		if err != nil {
			return false, err
		}
		return len(ps.Containers) == want && len(ps.Errors) == 0, fmt.Errorf("ps lists %d of %d; %d hosts left out, such as %v", len(ps.Containers), want, len(ps.Errors), ps.Errors[:min(3, len(ps.Errors))])
	}); err != nil {
		return res, fmt.Errorf("container reports: %w", err)
	}

	// Idle: 20 s to settle (the last joiners' metadata broadcasts), then
	// 30 s measured (a push/pull exchange every 30-90 s is part of idle).
	if err := sleep(ctx, 20*time.Second); err != nil {
		return res, err
	}
	type sample struct {
		p              Proc
		gossip, raftNB float64
	}
	snap := func() (map[string]sample, time.Time, error) {
		out := map[string]sample{}
		for _, a := range f.Agents {
			p, err := ReadProc(a.Pid())
			if err != nil {
				return nil, time.Time{}, err
			}
			g, r, err := NetBytes(ctx, a)
			if err != nil {
				return nil, time.Time{}, err
			}
			out[a.Name] = sample{p, g, r}
		}
		return out, time.Now(), nil
	}
	before, t0, err := snap()
	if err != nil {
		return res, err
	}
	if err := sleep(ctx, 30*time.Second); err != nil {
		return res, err
	}
	after, t1, err := snap()
	if err != nil {
		return res, err
	}
	secs := t1.Sub(t0).Seconds()
	for _, a := range f.Agents {
		b, e := before[a.Name], after[a.Name]
		cpu := 100 * (e.p.CPU - b.p.CPU).Seconds() / secs
		g, r := (e.gossip-b.gossip)/secs, (e.raftNB-b.raftNB)/secs
		if a.Name == leader {
			res.leaderRSS, res.leaderCPU, res.leaderRaft = float64(e.p.RSS), cpu, r
			res.leaderHeap, res.leaderGoroutines = goMetrics(ctx, a)
			if d := os.Getenv("SCALE_PROFILE"); d != "" {
				saveProfile(ctx, t, a, filepath.Join(d, fmt.Sprintf("leader-heap-%d.pb.gz", n)))
			}
			continue
		}
		res.rss, res.cpu, res.gossip, res.raftBytes = append(res.rss, float64(e.p.RSS)), append(res.cpu, cpu), append(res.gossip, g), append(res.raftBytes, r)
	}

	// Reads from a follower: the CLI (a process per call, as an operator
	// runs it) and the API alone.
	for _, c := range []struct {
		into *[]time.Duration
		n    int
		f    func() error
	}{
		{&res.membersCLI, 100, func() error { return follower.CLI(ctx, "members", "-o", "json") }},
		{&res.psCLI, 100, func() error { return follower.CLI(ctx, "ps", "-o", "json") }},
		{&res.membersAPI, 200, func() error { _, err := follower.Client().Members(ctx); return err }},
		{&res.psAPI, 200, func() error { _, err := follower.Client().PS(ctx); return err }},
	} {
		if *c.into, err = Time(c.n, c.f); err != nil {
			return res, err
		}
	}

	if eng == "fake" && big >= 0 {
		// Planning on the live cluster, through the follower (forwarded to
		// the leader): a dry-run drain of the host with 100 containers,
		// a dry-run rebalance of them all.
		bh := f.Agents[big].Name
		ds, err := Time(10, func() error {
			var dr migrate.DrainResult
			if err := follower.Client().Do(ctx, http.MethodPost, "/v1/drain", migrate.DrainRequest{Host: bh, DryRun: true}, &dr); err != nil {
				return err
			}
			if len(dr.Moves) != 100 {
				return fmt.Errorf("dry-run drain of %s planned %d moves: %+v", bh, len(dr.Moves), dr)
			}
			return nil
		})
		if err != nil {
			return res, err
		}
		res.drainDry = Pct(ds, 50)
		rs, err := Time(5, func() error {
			var rr migrate.RebalanceResult
			return follower.Client().Do(ctx, http.MethodPost, "/v1/rebalance", migrate.RebalanceRequest{DryRun: true}, &rr)
		})
		if err != nil {
			return res, err
		}
		res.rebalanceDry = Pct(rs, 50)
		// One real migration through the fake engine; then how long until
		// the follower's ps shows it on its new host.
		src, dst := f.Agents[4].Name, f.Agents[5].Name
		var rec cluster.MigrationRecord
		if err := follower.Client().Do(ctx, http.MethodPost, "/v1/migrate", migrate.MigrateRequest{Container: src + "-c000", To: dst}, &rec); err != nil {
			return res, err
		}
		recs, err := migrate.Wait(ctx, follower.Client(), []string{rec.ID}, 20*time.Millisecond, nil)
		if err != nil {
			return res, err
		}
		if recs[0].Phase != migrate.Done {
			return res, fmt.Errorf("migration %s ended %s: %s", rec.ID, recs[0].Phase, recs[0].Error)
		}
		doneAt := time.Now()
		if res.moveSeen, err = WaitAll(ctx, []*Agent{follower}, 1, 30*time.Second, doneAt, func(ctx context.Context, a *Agent) (bool, error) {
			ps, err := a.Client().PS(ctx)
			if err != nil {
				return false, err
			}
			for _, c := range ps.Containers {
				if c.Name == src+"-c000" {
					return c.Host == dst, fmt.Errorf("on %s", c.Host)
				}
			}
			return false, fmt.Errorf("not listed")
		}); err != nil {
			return res, fmt.Errorf("ps after a migration: %w", err)
		}
	}

	// Failover: committed writes, then SIGKILL the leader.
	var ids []string
	for i := range 20 {
		id := fmt.Sprintf("before-failover-%d", i)
		ids = append(ids, id)
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := follower.Client().Apply(wctx, cluster.AppendEventType, cluster.AppendEventRequest{Event: cluster.Event{ID: id, Kind: "scale", At: time.Now().UTC()}})
		cancel()
		// Duplicate: a retried write whose first try was committed (a
		// leader that lost its lease mid-write); it is in the log.
		if err != nil && !errors.Is(err, cluster.ErrDuplicate) {
			return res, fmt.Errorf("write before failover: %w", err)
		}
	}
	// Kill whoever leads now (leadership may have moved under load).
	if leader, err = WaitLeader(ctx, f.Running(), "", time.Minute); err != nil {
		return res, err
	}
	la, _ = f.Agent(leader)
	var voters []*Agent
	for _, a := range f.Agents[:min(3, n)] {
		if a.Name != leader {
			voters = append(voters, a)
		}
	}
	la.Kill()
	killed := time.Now()
	newLeader, err := WaitElected(ctx, voters, leader, time.Minute)
	if err != nil {
		return res, err
	}
	res.failover = time.Since(killed)
	running := f.Running()
	if res.failoverAll, err = WaitAll(ctx, running, par, time.Minute, killed, KnowsLeader(leader)); err != nil {
		return res, fmt.Errorf("everyone follows the new leader: %w", err)
	}
	// Every write acknowledged before the kill is on the new leader and,
	// once it has caught up, on the follower (a non-voter may not have had
	// the last entries when the old leader died).
	nl, _ := f.Agent(newLeader)
	missing := func(ctx context.Context, a *Agent) (bool, error) {
		var evs []cluster.Event
		if _, err := a.Client().History(ctx, "/v1/events", cluster.HistoryQuery{}, &evs); err != nil {
			return false, err
		}
		have := map[string]bool{}
		for _, e := range evs {
			have[e.ID] = true
		}
		n := 0
		for _, id := range ids {
			if !have[id] {
				n++
			}
		}
		res.lost = n
		return n == 0, fmt.Errorf("%d of %d acknowledged writes missing", n, len(ids))
	}
	if _, err := WaitAll(ctx, []*Agent{nl, follower}, 2, 30*time.Second, killed, missing); err != nil {
		t.Logf("N=%d: committed writes lost in the failover: %v", n, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = follower.Client().Apply(wctx, cluster.AppendEventType, cluster.AppendEventRequest{Event: cluster.Event{ID: "after-failover", Kind: "scale", At: time.Now().UTC()}})
	cancel()
	if err != nil {
		return res, fmt.Errorf("write after failover: %w", err)
	}
	if res.deadLeader, err = WaitAll(ctx, running, par, time.Minute, killed, SeesStatus(leader, cluster.StatusDead)); err != nil {
		return res, fmt.Errorf("killed leader seen dead: %w", err)
	}

	// A killed follower, seen dead by every agent.
	if n > 4 {
		victim := f.Agents[n-2]
		victim.Kill()
		killed := time.Now()
		if res.deadFollower, err = WaitAll(ctx, f.Running(), par, time.Minute, killed, SeesStatus(victim.Name, cluster.StatusDead)); err != nil {
			return res, fmt.Errorf("killed follower seen dead: %w", err)
		}
	}
	return res, nil
}

func ms(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	}
	return fmt.Sprintf("%dms", d.Milliseconds())
}

func secs(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

func printTable(sizes []int, results map[int][]run, k int, eng string) {
	type row struct {
		name, target string
		f            func(r run) string
		med          func(rs []run) string
	}
	durMed := func(get func(r run) time.Duration, format func(time.Duration) string) func(rs []run) string {
		return func(rs []run) string {
			var vs []time.Duration
			for _, r := range rs {
				vs = append(vs, get(r))
			}
			return format(Median(vs))
		}
	}
	fMed := func(get func(r run) float64, format func(float64) string) func(rs []run) string {
		return func(rs []run) string {
			var vs []float64
			for _, r := range rs {
				vs = append(vs, get(r))
			}
			return format(Median(vs))
		}
	}
	mb := func(v float64) string { return fmt.Sprintf("%.1f MB", v/1e6) }
	pct := func(v float64) string { return fmt.Sprintf("%.2f%%", v) }
	bps := func(v float64) string { return fmt.Sprintf("%.0f B/s", v) }
	rows := []row{
		{name: "first leader election (3 voters)", med: durMed(func(r run) time.Duration { return r.election }, secs)},
		{name: "gossip converged after last start", target: "<= 5 s", med: durMed(func(r run) time.Duration { return r.converged }, secs)},
		{name: "  CPU all agents used until confirmed", med: durMed(func(r run) time.Duration { return r.startCPU }, secs)},
		{name: "raft converged after last start", med: durMed(func(r run) time.Duration { return r.raftConverged }, secs)},
		{name: "all container reports in ps", med: durMed(func(r run) time.Duration { return r.reports }, secs)},
		{name: "leader failover (SIGKILL to elected)", target: "<= 2 s", med: durMed(func(r run) time.Duration { return r.failover }, secs)},
		{name: "  ... every agent follows it", med: durMed(func(r run) time.Duration { return r.failoverAll }, secs)},
		{name: "committed records lost in failover", target: "0", med: func(rs []run) string {
			n := 0
			for _, r := range rs {
				n += r.lost
			}
			return strconv.Itoa(n)
		}},
		{name: "killed follower dead everywhere", target: "<= 10 s", med: durMed(func(r run) time.Duration { return r.deadFollower }, secs)},
		{name: "killed leader dead everywhere", target: "<= 10 s", med: durMed(func(r run) time.Duration { return r.deadLeader }, secs)},
		{name: "members -o json p50 (CLI)", med: durMed(func(r run) time.Duration { return Pct(r.membersCLI, 50) }, ms)},
		{name: "members -o json p99 (CLI)", med: durMed(func(r run) time.Duration { return Pct(r.membersCLI, 99) }, ms)},
		{name: "ps -o json p50 (CLI)", med: durMed(func(r run) time.Duration { return Pct(r.psCLI, 50) }, ms)},
		{name: "ps -o json p99 (CLI)", target: "<= 200 ms", med: durMed(func(r run) time.Duration { return Pct(r.psCLI, 99) }, ms)},
		{name: "GET /v1/members p50 / p99 (API)", med: func(rs []run) string {
			return durMed(func(r run) time.Duration { return Pct(r.membersAPI, 50) }, ms)(rs) + " / " + durMed(func(r run) time.Duration { return Pct(r.membersAPI, 99) }, ms)(rs)
		}},
		{name: "GET /v1/ps p50 / p99 (API)", med: func(rs []run) string {
			return durMed(func(r run) time.Duration { return Pct(r.psAPI, 50) }, ms)(rs) + " / " + durMed(func(r run) time.Duration { return Pct(r.psAPI, 99) }, ms)(rs)
		}},
		{name: "drain --dry-run, 100 containers (API)", med: durMed(func(r run) time.Duration { return r.drainDry }, ms)},
		{name: "rebalance --dry-run (API)", med: durMed(func(r run) time.Duration { return r.rebalanceDry }, ms)},
		{name: "ps shows a migration after Done", med: durMed(func(r run) time.Duration { return r.moveSeen }, ms)},
		{name: "idle RSS per agent, median", target: "<= 40 MB", med: fMed(func(r run) float64 { return Median(r.rss) }, mb)},
		{name: "idle RSS per agent, max / leader", med: func(rs []run) string {
			return fMed(func(r run) float64 { return slicesMax(r.rss) }, mb)(rs) + " / " + fMed(func(r run) float64 { return r.leaderRSS }, mb)(rs)
		}},
		{name: "  leader's Go heap in use / goroutines", med: func(rs []run) string {
			return fMed(func(r run) float64 { return r.leaderHeap }, mb)(rs) + " / " + fMed(func(r run) float64 { return r.leaderGoroutines }, func(v float64) string { return fmt.Sprintf("%.0f", v) })(rs)
		}},
		{name: "idle CPU per agent, median / leader", med: func(rs []run) string {
			return fMed(func(r run) float64 { return Median(r.cpu) }, pct)(rs) + " / " + fMed(func(r run) float64 { return r.leaderCPU }, pct)(rs)
		}},
		{name: "idle gossip per agent (in+out)", med: fMed(func(r run) float64 { return Median(r.gossip) }, bps)},
		{name: "idle raft per follower / leader", med: func(rs []run) string {
			return fMed(func(r run) float64 { return Median(r.raftBytes) }, bps)(rs) + " / " + fMed(func(r run) float64 { return r.leaderRaft }, bps)(rs)
		}},
	}
	var runs []string
	for _, n := range sizes {
		runs = append(runs, fmt.Sprintf("N=%d: %d", n, len(results[n])))
	}
	fmt.Printf("\nscale harness: agents on loopback, engine %s, %d containers each (s004: 100); medians of the runs (%s)\n", eng, k, strings.Join(runs, ", "))
	fmt.Printf("%-40s %-10s", "measure", "target")
	for _, n := range sizes {
		fmt.Printf(" %22s", fmt.Sprintf("N=%d", n))
	}
	fmt.Println()
	for _, r := range rows {
		fmt.Printf("%-40s %-10s", r.name, r.target)
		for _, n := range sizes {
			fmt.Printf(" %22s", r.med(results[n]))
		}
		fmt.Println()
	}
	fmt.Printf("%-40s %-10s", "load average at the start of each run", "")
	for _, n := range sizes {
		var ls []string
		for _, r := range results[n] {
			ls = append(ls, strings.Fields(r.load)[0])
		}
		fmt.Printf(" %22s", strings.Join(ls, ","))
	}
	fmt.Println()
}

func slicesMax(vs []float64) float64 {
	m := 0.0
	for _, v := range vs {
		m = max(m, v)
	}
	return m
}

// goMetrics reads the agent's Go heap in use and goroutine count.
func goMetrics(ctx context.Context, a *Agent) (heap, goroutines float64) {
	ms, _ := Metrics(ctx, a, "go_memstats_heap_inuse_bytes ", "go_goroutines ")
	return ms[0], ms[1]
}

// saveProfile writes the agent's heap profile (testhooks builds serve
// /debug/pprof/) for `go tool pprof`.
func saveProfile(ctx context.Context, t *testing.T, a *Agent, path string) {
	resp, err := a.Client().Raw(ctx, http.MethodGet, "/debug/pprof/heap", nil)
	if err != nil {
		t.Logf("heap profile of %s: %v", a.Name, err)
		return
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil {
		err = os.WriteFile(path, b, 0o644)
	}
	t.Logf("heap profile of the leader %s: %s %v", a.Name, path, err)
}

// waitLogs waits, reading the logs twice a second, until every agent's log
// shows n members alive, and returns when the last one got there.
func waitLogs(agents []*Agent, n int, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		at, err := FleetViewAt(agents, n)
		if err == nil {
			return at, nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("after %s: %w", timeout, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
