package migrate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/reboot"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
	"github.com/edgemigrate/orchestrate/policy"
)

// rbStore is the replicated state as the policy agent sees it.
type rbStore struct {
	mu      sync.Mutex
	limit   int
	holders map[string]bool
	hosts   map[string]cluster.Host
	migs    map[string]cluster.MigrationRecord
	events  []cluster.Event
	ps      cluster.PSResult
}

func newRBStore() *rbStore {
	return &rbStore{limit: 1, holders: map[string]bool{}, hosts: map[string]cluster.Host{}, migs: map[string]cluster.MigrationRecord{}}
}

func (s *rbStore) AcquireLock(ctx context.Context, req cluster.AcquireLockRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holders[req.Holder] {
		return nil
	}
	if len(s.holders) >= s.limit {
		return cluster.ErrLockHeld
	}
	s.holders[req.Holder] = true
	return nil
}

func (s *rbStore) ReleaseLock(ctx context.Context, name, holder string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.holders[holder] {
		return cluster.ErrNotFound
	}
	delete(s.holders, holder)
	return nil
}

func (s *rbStore) AppendEvent(ctx context.Context, ev cluster.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, ev)
	return nil
}

func (s *rbStore) SetHost(ctx context.Context, req cluster.SetHostRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.hosts[req.Name]
	h.Name = req.Name
	if req.Cordoned != nil {
		h.Cordoned = *req.Cordoned
	}
	if req.Draining != nil {
		h.Draining = *req.Draining
	}
	s.hosts[req.Name] = h
	return nil
}

func (s *rbStore) Hosts() []cluster.Host {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []cluster.Host
	for _, h := range s.hosts {
		out = append(out, h)
	}
	return out
}

func (s *rbStore) Migrations() []cluster.MigrationRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []cluster.MigrationRecord
	for _, m := range s.migs {
		out = append(out, m)
	}
	return out
}

func (s *rbStore) PS(ctx context.Context) cluster.PSResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ps
}

func (s *rbStore) put(m cluster.MigrationRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.migs[m.ID] = m
}

func (s *rbStore) cordoned(host string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hosts[host].Cordoned
}

func (s *rbStore) held(host string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holders[host]
}

func (s *rbStore) actions() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, e := range s.events {
		out = append(out, e.Data["action"]+": "+e.Data["result"])
	}
	return strings.Join(out, "\n")
}

// rbLeader is the leader's API on a unix socket; down makes LeaderClient
// fail as during an election.
type rbLeader struct {
	store   *rbStore
	sock    string
	down    atomic.Bool
	drain   func(DrainRequest) (DrainResult, error)
	migrate func(MigrateRequest) (cluster.MigrationRecord, error)
	calls   atomic.Int32 // requests that reached the leader
}

func newRBLeader(t *testing.T, st *rbStore) *rbLeader {
	l := &rbLeader{store: st, sock: filepath.Join(t.TempDir(), "leader.sock")}
	ln, err := net.Listen("unix", l.sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/locks", func(w http.ResponseWriter, r *http.Request) {
		st.mu.Lock()
		lk := cluster.Lock{Name: RebootLock, Limit: st.limit, Holders: map[string]cluster.LockHolder{}}
		for h := range st.holders {
			lk.Holders[h] = cluster.LockHolder{Holder: h}
		}
		st.mu.Unlock()
		cluster.WriteJSON(w, 200, []cluster.Lock{lk})
	})
	mux.HandleFunc("POST /v1/drain", func(w http.ResponseWriter, r *http.Request) {
		l.calls.Add(1)
		var req DrainRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		res, err := l.drain(req)
		if err != nil {
			cluster.WriteError(w, err)
			return
		}
		cluster.WriteJSON(w, 200, res)
	})
	mux.HandleFunc("POST /v1/migrate", func(w http.ResponseWriter, r *http.Request) {
		var req MigrateRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		rec, err := l.migrate(req)
		if err != nil {
			cluster.WriteError(w, err)
			return
		}
		cluster.WriteJSON(w, 200, rec)
	})
	mux.HandleFunc("GET /v1/migrations/{id}", func(w http.ResponseWriter, r *http.Request) {
		st.mu.Lock()
		m, ok := st.migs[r.PathValue("id")]
		st.mu.Unlock()
		if !ok {
			cluster.WriteError(w, cluster.ErrNotFound)
			return
		}
		cluster.WriteJSON(w, 200, m)
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return l
}

func (l *rbLeader) IsLeader() bool { return false }

func (l *rbLeader) LeaderClient() (*cluster.Client, error) {
	if l.down.Load() {
		return nil, cluster.ErrNoLeader
	}
	return cluster.NewClient(l.sock, nil)
}

type rebooterFunc func(ctx context.Context) error

func (f rebooterFunc) Reboot(ctx context.Context) error { return f(ctx) }

// rbHost is one host's policy agent, restartable over the same disk.
type rbHost struct {
	t        *testing.T
	dir      string
	store    *rbStore
	lead     *rbLeader
	eng      *enginetest.Fake
	required atomic.Bool
	rebooted chan []string
	cfg      policy.RebootConfig
	cancel   context.CancelFunc
	done     chan struct{}
	pa       *PolicyAgent
	failCmd  error
}

func newRBHost(t *testing.T, mode policy.RebootMode) *rbHost {
	st := newRBStore()
	h := &rbHost{t: t, dir: filepath.Join(t.TempDir(), "reboot"), store: st, lead: newRBLeader(t, st), eng: enginetest.NewFake(), rebooted: make(chan []string, 4)}
	h.cfg = policy.DefaultRebootConfig()
	h.cfg.Enabled, h.cfg.Mode, h.cfg.Command, h.cfg.Timeout = true, mode, []string{"fake-reboot"}, time.Minute
	return h
}

// start runs the host's agent until stop (or until its reboot command ran,
// which ends it as a real reboot would).
func (h *rbHost) start() {
	ctx, cancel := context.WithCancel(context.Background())
	rcfg := reboot.DefaultConfig()
	rcfg.Dir, rcfg.Host, rcfg.Logger = h.dir, "h1", slog.New(slog.DiscardHandler)
	h.pa = &PolicyAgent{Host: "h1", Store: h.store, Lead: h.lead, Steps: hostAuth{host: "h1"}, Log: slog.New(slog.DiscardHandler), Reboot: h.cfg,
		Checker:       policy.CheckerFunc(func(context.Context) (bool, string, error) { return h.required.Load(), "sentinel file exists", nil }),
		CheckInterval: 50 * time.Millisecond, RetryAfter: time.Hour, Dir: h.dir,
		Local: reboot.NewStore(rcfg, h.eng), Containers: h.eng,
		Rebooter: func(cmd []string) policy.Rebooter {
			return rebooterFunc(func(context.Context) error {
				if h.failCmd != nil {
					return h.failCmd
				}
				h.rebooted <- cmd
				cancel() // the host goes down
				return nil
			})
		}}
	h.cancel, h.done = cancel, make(chan struct{})
	go func() { defer close(h.done); _ = h.pa.Run(ctx) }()
}

func (h *rbHost) stop() {
	h.cancel()
	<-h.done
}

func (h *rbHost) waitReboot(d time.Duration) []string {
	h.t.Helper()
	select {
	case cmd := <-h.rebooted:
		<-h.done
		return cmd
	case <-time.After(d):
		h.stop()
		h.t.Fatalf("no reboot within %s; events:\n%s", d, h.store.actions())
	}
	return nil
}

func waitCond(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("not within %s: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A leader failover in the middle of a reboot's drain: the sequence waits
// for the migrations through the new leader and reboots; it does not
// uncordon the host or release the lock while they go on. After the
// reboot, the container returns (reboot.return).
func TestRebootDrainSurvivesFailover(t *testing.T) {
	h := newRBHost(t, policy.RebootModeDrain)
	h.cfg.Return = true
	web := h.eng.Run("web", "img", 1024, nil)
	h.eng.Run("pinned", "img", 1024, map[string]string{policy.LabelMigrate: "false"})
	finish := make(chan struct{})
	h.lead.drain = func(req DrainRequest) (DrainResult, error) {
		if req.DryRun {
			return DrainResult{Host: req.Host}, nil
		}
		yes := true
		_ = h.store.SetHost(context.Background(), cluster.SetHostRequest{Name: "h1", Cordoned: &yes})
		h.store.put(cluster.MigrationRecord{ID: "m1", Container: web.ID, From: "h1", To: "h2", Phase: Transferring, StartedAt: time.Now()})
		go func() {
			// The leader dies mid-drain; the migration goes on under the
			// next one and ends there.
			h.lead.down.Store(true)
			<-finish
			_ = h.eng.Remove(context.Background(), web.ID)
			h.store.put(cluster.MigrationRecord{ID: "m1", Container: web.ID, From: "h1", To: "h2", Phase: Done, StartedAt: time.Now()})
			h.lead.down.Store(false)
		}()
		return DrainResult{Host: req.Host, Moves: []DrainMove{{Container: web.ID, Name: "web", To: "h2", Migration: "m1"},
			{Name: "pinned", Skipped: policy.LabelMigrate + "=false"}}}, nil
	}
	h.required.Store(true)
	h.start()
	waitCond(t, 5*time.Second, "the drain under way", func() bool { return h.lead.down.Load() })
	time.Sleep(300 * time.Millisecond) // several passes without a leader
	if !h.store.cordoned("h1") || !h.store.held("h1") {
		t.Fatalf("the failover undid the drain: cordoned %v, lock %v\n%s", h.store.cordoned("h1"), h.store.held("h1"), h.store.actions())
	}
	close(finish)
	if cmd := h.waitReboot(5 * time.Second); strings.Join(cmd, " ") != "fake-reboot" {
		t.Fatalf("command %v", cmd)
	}
	if strings.Contains(h.store.actions(), "not rebooting") || h.lead.calls.Load() != 1 {
		t.Fatalf("drains %d; events:\n%s", h.lead.calls.Load(), h.store.actions())
	}
	seq, _ := reboot.LoadSequence(h.dir)
	if seq.Phase != reboot.PhaseRebooting || len(seq.Moves) != 1 || seq.Moves[0].To != "h2" {
		t.Fatalf("sequence %+v", seq)
	}

	// Back up: the check is negative, the container runs on h2.
	h.required.Store(false)
	h.store.ps = cluster.PSResult{Containers: []cluster.PSEntry{{Host: "h2", ID: web.ID, Name: "web", State: "running"}}}
	var back atomic.Value
	h.lead.migrate = func(req MigrateRequest) (cluster.MigrationRecord, error) {
		back.Store(req)
		rec := cluster.MigrationRecord{ID: "m2", Container: req.Container, From: "h2", To: req.To, Phase: Done}
		h.store.put(rec)
		return rec, nil
	}
	h.start()
	defer h.stop()
	waitCond(t, 5*time.Second, "the sequence done", func() bool {
		s, _ := reboot.LoadSequence(h.dir)
		return s != nil && s.Phase == reboot.PhaseDone
	})
	if h.store.cordoned("h1") || h.store.held("h1") {
		t.Fatal("still cordoned or holding the lock after the reboot")
	}
	if req, _ := back.Load().(MigrateRequest); req.Container != web.ID || req.To != "h1" {
		t.Fatalf("return request %+v", req)
	}
	s, _ := reboot.LoadSequence(h.dir)
	if !strings.HasPrefix(s.Outcome, "rebooted; 1 returned") {
		t.Fatalf("outcome %q\n%s", s.Outcome, h.store.actions())
	}
}

// The drain leaves a container here (no host can take it): after the
// allowed drains the sequence aborts, uncordons and releases the lock.
func TestRebootDrainStuckAborts(t *testing.T) {
	h := newRBHost(t, policy.RebootModeDrain)
	h.eng.Run("big", "img", 1024, nil)
	h.lead.drain = func(req DrainRequest) (DrainResult, error) {
		yes := true
		_ = h.store.SetHost(context.Background(), cluster.SetHostRequest{Name: "h1", Cordoned: &yes})
		return DrainResult{Host: req.Host, Moves: []DrainMove{{Name: "big", Skipped: "no host can take it"}}}, nil
	}
	h.required.Store(true)
	h.start()
	defer h.stop()
	waitCond(t, 5*time.Second, "the abort", func() bool {
		return strings.Contains(h.store.actions(), "not rebooting: drain did not finish: still here: big")
	})
	waitCond(t, 5*time.Second, "released", func() bool { return !h.store.held("h1") && !h.store.cordoned("h1") })
	select {
	case <-h.rebooted:
		t.Fatal("rebooted with a container left")
	default:
	}
	if n := h.lead.calls.Load(); n != maxDrains {
		t.Fatalf("%d drains, want %d", n, maxDrains)
	}
}

// A local reboot asked for by an operator: saved in priority order,
// rebooted with the operator's command, restored at the next start with
// memory, lock released and host uncordoned.
func TestLocalRebootSequence(t *testing.T) {
	h := newRBHost(t, policy.RebootModeDrain) // the operator asks for local
	h.cfg.Enabled = false
	mem := map[string][]byte{}
	for _, n := range []string{"b", "a", "vip"} {
		labels := map[string]string{}
		if n == "vip" {
			labels[policy.LabelPriority] = "9"
		}
		c := h.eng.Run(n, "img", 4096, labels)
		mem[n], _ = h.eng.Memory(c.ID)
	}
	h.eng.Run("pinned", "img", 1024, map[string]string{policy.LabelMigrate: "false"})
	h.start()
	plan, err := h.pa.Request(context.Background(), RebootRequest{Mode: policy.RebootModeLocal, DryRun: true})
	if err != nil || plan.Local == nil || len(plan.Local.Save) != 3 || plan.Local.Save[0].Name != "vip" || len(plan.Local.Skipped) != 1 || plan.Started {
		t.Fatalf("dry run: %+v %v", plan, err)
	}
	if _, err := h.eng.Inspect(context.Background(), "vip"); err != nil {
		t.Fatal("a dry run touched a container")
	}
	plan, err = h.pa.Request(context.Background(), RebootRequest{Mode: policy.RebootModeLocal, Command: []string{"kexec-reboot"}})
	if err != nil || !plan.Started || plan.Chosen != policy.RebootModeLocal {
		t.Fatalf("request: %+v %v", plan, err)
	}
	if _, err := h.pa.Request(context.Background(), RebootRequest{Mode: policy.RebootModeLocal}); !errors.Is(err, cluster.ErrConflict) {
		t.Fatalf("a second request: %v", err)
	}
	if cmd := h.waitReboot(5 * time.Second); strings.Join(cmd, " ") != "kexec-reboot" {
		t.Fatalf("command %v", cmd)
	}
	for _, n := range []string{"a", "b", "vip"} {
		if _, err := h.eng.Inspect(context.Background(), n); !errors.Is(err, engine.ErrNotFound) {
			t.Fatalf("%s was not saved and removed: %v", n, err)
		}
	}
	if !h.store.cordoned("h1") || !h.store.held("h1") {
		t.Fatal("not cordoned or no lock during the reboot")
	}
	// The boot.
	h.start()
	defer h.stop()
	waitCond(t, 5*time.Second, "the sequence done", func() bool {
		s, _ := reboot.LoadSequence(h.dir)
		return s != nil && s.Phase == reboot.PhaseDone && !h.store.held("h1")
	})
	for n, want := range mem {
		c, err := h.eng.Inspect(context.Background(), n)
		got, _ := h.eng.Memory(c.ID)
		if err != nil || !c.Running || !bytes.Equal(got, want) {
			t.Fatalf("%s after the reboot: %+v %v", n, c, err)
		}
	}
	if h.store.cordoned("h1") {
		t.Fatal("still cordoned")
	}
	acts := h.store.actions()
	for _, want := range []string{"reboot requested", "mode local", "saved locally: 3 container(s)", "restored: vip", "uncordon and release lock"} {
		if !strings.Contains(acts, want) {
			t.Fatalf("events lack %q:\n%s", want, acts)
		}
	}
	if strings.Index(acts, "restored: vip") > strings.Index(acts, "restored: a") {
		t.Fatalf("restored out of priority order:\n%s", acts)
	}
}

// A container that cannot be checkpointed calls the local reboot off:
// the saved ones come back, nothing reboots.
func TestLocalRebootSaveFailureAborts(t *testing.T) {
	h := newRBHost(t, policy.RebootModeLocal)
	h.eng.Run("a", "img", 4096, map[string]string{policy.LabelPriority: "1"})
	bad := h.eng.Run("b", "img", 4096, nil)
	h.eng.FailCheckpoint = func(id string) error {
		if id == bad.ID {
			return errors.New("Can't get rlimit 0: Operation not permitted")
		}
		return nil
	}
	h.required.Store(true)
	h.start()
	defer h.stop()
	waitCond(t, 5*time.Second, "the abort", func() bool { return strings.Contains(h.store.actions(), "not rebooting: local save failed") })
	waitCond(t, 5*time.Second, "released", func() bool { return !h.store.held("h1") && !h.store.cordoned("h1") })
	for _, n := range []string{"a", "b"} {
		if c, err := h.eng.Inspect(context.Background(), n); err != nil || !c.Running {
			t.Fatalf("%s after the abort: %+v %v", n, c, err)
		}
	}
	if !strings.Contains(h.store.actions(), "checkpoint failed: b: ") {
		t.Fatalf("the failing container is not reported:\n%s", h.store.actions())
	}
}

// A reboot command that fails brings the saved containers back.
func TestLocalRebootCommandFailureRestores(t *testing.T) {
	h := newRBHost(t, policy.RebootModeAuto) // no other host: auto reboots locally
	h.lead.drain = func(req DrainRequest) (DrainResult, error) {
		return DrainResult{Host: req.Host, Moves: []DrainMove{{Name: "a", Skipped: "no host can take it"}}}, nil
	}
	h.eng.Run("a", "img", 4096, nil)
	h.failCmd = errors.New("exit status 1: Failed to connect to bus")
	h.required.Store(true)
	h.start()
	defer h.stop()
	waitCond(t, 5*time.Second, "the abort:\n"+h.store.actions(), func() bool { return strings.Contains(h.store.actions(), "not rebooting: reboot command failed") })
	waitCond(t, 5*time.Second, "back", func() bool {
		c, err := h.eng.Inspect(context.Background(), "a")
		return err == nil && c.Running && !h.store.held("h1")
	})
	if !strings.Contains(h.store.actions(), "mode local: auto: no host can take a") {
		t.Fatalf("auto's choice is not recorded:\n%s", h.store.actions())
	}
}

func TestObserveDrain(t *testing.T) {
	run := func(name string, labels map[string]string) engine.Container {
		return engine.Container{Name: name, Running: true, Labels: labels}
	}
	cordoned := []cluster.Host{{Name: "h1", Cordoned: true}}
	for _, tc := range []struct {
		name  string
		hosts []cluster.Host
		cs    []engine.Container
		recs  []cluster.MigrationRecord
		want  DrainState
	}{
		{"empty and cordoned", cordoned, nil, nil, DrainState{Cordoned: true, Drained: true}},
		{"not cordoned", nil, nil, nil, DrainState{}},
		{"opted out stays", cordoned, []engine.Container{run("p", map[string]string{policy.LabelMigrate: "false"})}, nil, DrainState{Cordoned: true, Drained: true}},
		{"stopped does not count", cordoned, []engine.Container{{Name: "x", State: "exited"}}, nil, DrainState{Cordoned: true, Drained: true}},
		{"one left", cordoned, []engine.Container{run("b", nil), run("a", nil)}, nil, DrainState{Cordoned: true, Left: []string{"a", "b"}}},
		{"in flight", cordoned, nil, []cluster.MigrationRecord{{From: "h1", Phase: Restoring}, {From: "h1", Phase: Done}, {From: "h2", Phase: Planned}},
			DrainState{Cordoned: true, InFlight: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ObserveDrain("h1", tc.hosts, tc.cs, tc.recs)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// WaitVia follows the leader: polls that find no leader are retried, and
// the wait ends when the records do.
func TestWaitViaFollowsTheLeader(t *testing.T) {
	st := newRBStore()
	l := newRBLeader(t, st)
	st.put(cluster.MigrationRecord{ID: "m1", Phase: Transferring})
	l.down.Store(true)
	go func() {
		time.Sleep(300 * time.Millisecond)
		l.down.Store(false) // a new leader
		time.Sleep(100 * time.Millisecond)
		st.put(cluster.MigrationRecord{ID: "m1", Phase: Done})
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	recs, err := WaitVia(ctx, l.LeaderClient, []string{"m1"}, 20*time.Millisecond, nil)
	if err != nil || recs[0].Phase != Done {
		t.Fatalf("%+v %v", recs, err)
	}
	// A record that never appears ends the wait once the lag allowance is
	// over; an invalid request ends it at once.
	l.migrate = nil
	if _, err := WaitVia(ctx, func() (*cluster.Client, error) { return nil, fmt.Errorf("%w: bad", cluster.ErrInvalid) }, []string{"m1"}, 10*time.Millisecond, nil); !errors.Is(err, cluster.ErrInvalid) {
		t.Fatalf("invalid: %v", err)
	}
}

type muxAdapter struct{ *http.ServeMux }

func (m muxAdapter) HandleFunc(p string, h func(http.ResponseWriter, *http.Request)) {
	m.ServeMux.HandleFunc(p, h)
}

// A reboot command can be given only over the local socket: over the
// cluster's TLS API it would let any member run a command here.
func TestRebootCommandOnlyOverTheLocalSocket(t *testing.T) {
	h := newRBHost(t, policy.RebootModeLocal)
	h.start()
	defer h.stop()
	mux := muxAdapter{http.NewServeMux()}
	h.pa.RegisterReboot(mux)
	body := `{"mode":"local","dry_run":true,"command":["sh","-c","echo owned"]}`
	for _, tc := range []struct {
		addr net.Addr
		want int
	}{
		{&net.TCPAddr{IP: net.IPv4(10, 99, 0, 1), Port: 7948}, http.StatusBadRequest},
		{&net.UnixAddr{Name: "/run/orchestrate/agent.sock", Net: "unix"}, http.StatusOK},
	} {
		req, _ := http.NewRequest(http.MethodPost, "/v1/agent/reboot", strings.NewReader(body))
		req = req.WithContext(context.WithValue(req.Context(), http.LocalAddrContextKey, tc.addr))
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Fatalf("over %s: status %d (%s), want %d", tc.addr.Network(), rec.Code, rec.Body.String(), tc.want)
		}
	}
}
