package scale

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/migrate"
)

// A two-host edge site with a witness: two agents with the in-memory
// engine and one with engine none, real processes on loopback. A drain of
// one host moves everything to the other and nothing to the witness; with
// one host dead, the other and the witness still have a raft quorum: a
// leader, and writes go through. Runs in make test (about 20 s).
func TestWitnessGivesTwoHostsAQuorum(t *testing.T) {
	if testing.Short() {
		t.Skip("starts agent processes")
	}
	ctx := context.Background()
	bin, err := Build(root(t), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f, err := New(Config{Bin: bin, Dir: dir, N: 3, Containers: 3, Engines: map[int]string{1: "fake", 2: cluster.EngineNone},
		FirstIP: 120, IPPrefix: "127.0.0.", BasePort: 31000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		if t.Failed() {
			for _, a := range f.Agents {
				t.Logf("--- %s ---\n%s", a.Name, a.LogTail(30))
			}
		}
	})
	if _, _, err := f.Bootstrap(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	host1, host2, witness := f.Agents[0], f.Agents[1], f.Agents[2]
	ps := func(a *Agent) (map[string]string, error) {
		res, err := a.Client().PS(ctx)
		out := map[string]string{}
		for _, c := range res.Containers {
			out[c.Name] = c.Host
		}
		return out, err
	}
	if _, err := WaitAll(ctx, []*Agent{witness}, 1, 30*time.Second, time.Now(), func(ctx context.Context, a *Agent) (bool, error) {
		where, err := ps(a)
		return len(where) == 6, fmt.Errorf("ps lists %d of 6 (%v)", len(where), err)
	}); err != nil {
		t.Fatal(err)
	}
	ms, err := witness.Client().Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Name == witness.Name && (m.Engine != cluster.EngineNone || m.Containers != 0 || m.Role == cluster.RoleNone) {
			t.Fatalf("witness member: %+v", m)
		}
	}

	var dr migrate.DrainResult
	if err := witness.Client().Do(ctx, http.MethodPost, "/v1/drain", migrate.DrainRequest{Host: host1.Name, Parallel: 3}, &dr); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range dr.Moves {
		if m.To != host2.Name || m.Migration == "" {
			t.Fatalf("drain move %+v: want every container to %s", m, host2.Name)
		}
		ids = append(ids, m.Migration)
	}
	recs, err := migrate.Wait(ctx, witness.Client(), ids, 50*time.Millisecond, nil)
	if err != nil || len(recs) != 3 {
		t.Fatalf("drain: %d records, %v", len(recs), err)
	}
	for _, r := range recs {
		if r.Phase != migrate.Done {
			t.Fatalf("migration %s ended %s: %s", r.ID, r.Phase, r.Error)
		}
	}
	if _, err := WaitAll(ctx, []*Agent{witness}, 1, 10*time.Second, time.Now(), func(ctx context.Context, a *Agent) (bool, error) {
		where, err := ps(a)
		n := 0
		for _, h := range where {
			if h == host2.Name {
				n++
			}
		}
		return n == 6, fmt.Errorf("%d of 6 on %s (%v)", n, host2.Name, err)
	}); err != nil {
		t.Fatal(err)
	}

	host1.Kill()
	leader, err := WaitLeader(ctx, []*Agent{host2, witness}, host1.Name, 30*time.Second)
	if err != nil {
		t.Fatalf("no leader without %s: %v", host1.Name, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := host2.Client().Apply(wctx, cluster.AppendEventType, cluster.AppendEventRequest{Event: cluster.Event{ID: "one-host-down", Kind: "test", At: time.Now().UTC()}}); err != nil {
		t.Fatalf("write with %s down (leader %s): %v", host1.Name, leader, err)
	}
}
