package migrate

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	mathrand "math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/internal/clock"
	"github.com/edgemigrate/orchestrate/policy"
)

// Store is the replicated state the coordinator reads and writes.
type Store interface {
	Members() []cluster.Member
	Migrations() []cluster.MigrationRecord
	Migration(id string) (cluster.MigrationRecord, error)
	PutMigration(ctx context.Context, req cluster.PutMigrationRequest) error
	Hosts() []cluster.Host
	SetHost(ctx context.Context, req cluster.SetHostRequest) error
	AppendEvent(ctx context.Context, ev cluster.Event) error
	// Inventory is every host's last container report (the planners'
	// view of where containers run; see cluster/inventory.go).
	Inventory() []cluster.HostContainers
	// RefreshReports has hosts (nil: all) report afresh, waiting at most
	// wait (cluster.ErrNoReport names those that did not).
	RefreshReports(ctx context.Context, hosts []string, wait time.Duration) error
}

// How long planners wait for fresh reports: a drain for its host's, a
// migration of a container no report shows (started moments ago) for all.
const (
	drainReportWait   = 5 * time.Second
	missingReportWait = 3 * time.Second
)

// Agents calls other agents' APIs by host name.
type Agents interface {
	// Call posts in as JSON to path on host and decodes the answer into out.
	Call(ctx context.Context, host, path string, in, out any) error
	// Stream posts in and returns the streamed answer for the caller to close.
	Stream(ctx context.Context, host, path string, in any) (io.ReadCloser, error)
}

// Sentinel errors of the coordinator.
var (
	ErrNotLeader = cluster.ErrNotLeader
	// ErrBusy: the container already has a migration in flight.
	ErrBusy = fmt.Errorf("%w: the container is already migrating", cluster.ErrConflict)
)

// Config configures the coordinator.
type Config struct {
	// Parallel is drain's default number of concurrent migrations.
	Parallel int
	// StepTimeout bounds one agent call (a migrate-out may take longer:
	// MigrationTimeout).
	StepTimeout      time.Duration
	MigrationTimeout time.Duration
	// Rebalance: the schedule the leader runs and the planner's limits.
	Rebalance policy.RebalanceConfig
	Logger    *slog.Logger
	// Now is the clock (tests may replace it).
	Now func() time.Time
	// Tick is how often the reconciler looks at every unfinished record
	// even when nothing changed (it also runs on every change).
	Tick time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Parallel: 2, StepTimeout: 30 * time.Second, MigrationTimeout: 10 * time.Minute,
		Rebalance: policy.DefaultRebalanceConfig(), Logger: slog.Default(), Now: clock.Now, Tick: time.Second}
}

// Coordinator is the leader's side of migrations: the planners (Migrate,
// Drain, Rebalance, HandleTrigger) write Planned records, and the
// reconciler (Run, one per leadership term) takes every unfinished record
// to Done or RolledBack. Its goroutines all end with the term (Run's ctx);
// a new leader's Run carries on from the records.
type Coordinator struct {
	cfg    Config
	store  Store
	agents Agents
	log    *slog.Logger

	// Snapshots, when set before Run, keeps forensic snapshots before
	// evacuations.
	Snapshots Snapshotter
	// Metrics, when set before Run, counts migrations and triggers.
	Metrics *Metrics

	mu      sync.Mutex
	termCtx context.Context // nil when not leading
	wg      *sync.WaitGroup
	track   map[string]*tracker // this term's observations, by migration ID
	wake    chan struct{}
}

// NewCoordinator returns a coordinator; it does nothing until Run.
func NewCoordinator(cfg Config, store Store, agents Agents) *Coordinator {
	def := DefaultConfig()
	if cfg.Parallel < 1 {
		cfg.Parallel = def.Parallel
	}
	if cfg.StepTimeout == 0 {
		cfg.StepTimeout = def.StepTimeout
	}
	if cfg.MigrationTimeout == 0 {
		cfg.MigrationTimeout = def.MigrationTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = def.Logger
	}
	if cfg.Now == nil {
		cfg.Now = def.Now
	}
	if cfg.Rebalance.MaxMoves < 1 || cfg.Rebalance.Threshold <= 0 {
		cfg.Rebalance.MaxMoves, cfg.Rebalance.Threshold = def.Rebalance.MaxMoves, def.Rebalance.Threshold
	}
	if cfg.Tick <= 0 {
		cfg.Tick = def.Tick
	}
	return &Coordinator{cfg: cfg, store: store, agents: agents, log: cfg.Logger, wake: make(chan struct{}, 1)}
}

// Run is the per-term leader loop (cluster.Config.LeaderLoop): the
// reconciler. On every change of the replicated state, every finished step
// and every tick it takes each unfinished migration record, decides its next
// step with NextAction from the record and what this term observed, and
// carries the step out on a goroutine of the term (one per record at a
// time). It returns when ctx ends, after those goroutines.
func (co *Coordinator) Run(ctx context.Context) error {
	wg := &sync.WaitGroup{}
	co.Metrics.term()
	co.mu.Lock()
	co.termCtx, co.wg, co.track = ctx, wg, map[string]*tracker{}
	co.mu.Unlock()
	defer func() {
		co.mu.Lock()
		co.termCtx, co.track = nil, nil
		co.mu.Unlock()
		wg.Wait()
	}()
	if n := len(co.unfinished()); n > 0 {
		co.log.Info("leader carries on with unfinished migrations", "count", n)
	}
	wg.Add(1)
	go func() { defer wg.Done(); co.runSchedule(ctx) }()
	var changed <-chan struct{}
	if w, ok := co.store.(interface{ StateChanged() <-chan struct{} }); ok {
		changed = w.StateChanged()
	}
	tick := time.NewTimer(0)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-co.wake:
		case <-tick.C:
			tick.Reset(jitter(co.cfg.Tick))
		}
		co.pass(ctx, wg)
	}
}

// poke makes the reconciler run a pass soon.
func (co *Coordinator) poke() {
	select {
	case co.wake <- struct{}{}:
	default:
	}
}

func jitter(d time.Duration) time.Duration {
	return d - d/4 + time.Duration(mathrand.Int64N(int64(d)/2+1))
}

func (co *Coordinator) unfinished() []cluster.MigrationRecord {
	var out []cluster.MigrationRecord
	for _, m := range co.store.Migrations() {
		if !Terminal(m.Phase) {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].StartedAt.Before(out[j].StartedAt) || out[i].StartedAt.Equal(out[j].StartedAt) && out[i].ID < out[j].ID
	})
	return out
}

// tracker is what this term learnt about one migration: the observations
// NextAction needs beyond the record, and whether a step is in flight.
type tracker struct {
	busy     bool
	obs      Observation // the parts learnt from hosts
	result   *Progress   // the source's progRestored line
	precopy  *PrecopyReport
	method   string
	attempts int       // failed steps in a row
	notUntil time.Time // backoff after a failed step
	lastWait string    // the last reason to wait that was logged
}

// pass decides and starts the next step of every unfinished record.
func (co *Coordinator) pass(ctx context.Context, wg *sync.WaitGroup) {
	recs := co.unfinished()
	now := co.cfg.Now().UTC()
	members := map[string]cluster.Member{}
	for _, m := range co.store.Members() {
		members[m.Name] = m
	}
	co.mu.Lock()
	defer co.mu.Unlock()
	if co.termCtx == nil || ctx.Err() != nil {
		return
	}
	live := map[string]bool{}
	started := map[string]int{} // batch -> migrations under way
	for _, m := range recs {
		live[m.ID] = true
		if tr := co.track[m.ID]; m.Phase != Planned || m.SourceAsked || tr != nil && tr.busy {
			started[batchKey(m)]++
		}
	}
	for id := range co.track {
		if !live[id] {
			delete(co.track, id)
		}
	}
	for _, m := range recs {
		tr := co.track[m.ID]
		if tr == nil {
			tr = &tracker{}
			co.track[m.ID] = tr
		}
		if tr.busy || now.Before(tr.notUntil) {
			continue
		}
		o := tr.obs
		o.Now, o.Busy = now, tr.busy
		src, tgt := members[m.From], members[m.To]
		o.SourceAlive = src.Status == cluster.StatusAlive || src.Status == cluster.StatusSuspect
		o.TargetAlive = tgt.Status == cluster.StatusAlive || tgt.Status == cluster.StatusSuspect
		if !o.TargetAlive && !tgt.Since.IsZero() {
			o.TargetDeadFor = time.Since(tgt.Since)
		}
		o.MayStart = started[batchKey(m)] < max(m.Parallel, 1) || m.Batch == ""
		act := NextAction(m, o)
		if act.Kind == ActWait {
			if act.Reason != tr.lastWait {
				co.log.Debug("migration waits", "migration", m.ID, "phase", m.Phase, "why", act.Reason)
				tr.lastWait = act.Reason
			}
			continue
		}
		tr.lastWait = ""
		if m.Phase == Planned && !m.SourceAsked && (act.Kind == ActMigrateOut || act.Kind == ActPushImage || act.Kind == ActCheckImage) {
			started[batchKey(m)]++
		}
		tr.busy = true
		wg.Add(1)
		go func(m cluster.MigrationRecord, act Action) {
			defer wg.Done()
			err := co.act(ctx, m, act, tr)
			co.mu.Lock()
			tr.busy = false
			if err != nil {
				tr.attempts++
				tr.notUntil = co.cfg.Now().Add(backoff(tr.attempts - 1))
			} else {
				tr.attempts, tr.notUntil = 0, time.Time{}
			}
			co.mu.Unlock()
			if err != nil && ctx.Err() == nil {
				co.log.Warn("migration step failed; it is decided again on a later pass", "migration", m.ID, "container", m.Name,
					"phase", m.Phase, "step", act.Kind, "attempt", tr.attempts, "err", err)
			}
			co.poke()
		}(m, act)
	}
}

// batchKey is the key migrations share a parallelism limit under.
func batchKey(m cluster.MigrationRecord) string {
	if m.Batch == "" {
		return "single:" + m.ID
	}
	return m.Batch
}

// learn updates what this term observed about a migration.
func (co *Coordinator) learn(tr *tracker, f func(o *Observation)) {
	co.mu.Lock()
	defer co.mu.Unlock()
	f(&tr.obs)
}

// act carries out one step. Its error only delays the next attempt: the
// next pass decides again from the record and the observations.
func (co *Coordinator) act(ctx context.Context, m cluster.MigrationRecord, act Action, tr *tracker) error {
	log := co.log.With("migration", m.ID, "container", m.Name, "from", m.From, "to", m.To)
	switch act.Kind {
	case ActFail:
		log.Warn("rolling back", "reason", act.Reason, "untouched", act.Untouched)
		return co.write(ctx, m.ID, Event{Kind: EvFailed, Err: act.Reason, Note: act.Reason, Untouched: act.Untouched}, log)
	case ActCheckImage:
		has, err := co.hasImage(ctx, m.To, m.Image)
		if err != nil {
			return fmt.Errorf("ask %s for image %s: %w", m.To, short(m.Image), err)
		}
		co.learn(tr, func(o *Observation) { o.ImageChecked, o.TargetHasImage = true, has })
		return nil
	case ActPushImage:
		sctx, cancel := context.WithTimeout(ctx, co.cfg.MigrationTimeout)
		defer cancel()
		target, _ := co.member(m.To)
		err := co.agents.Call(sctx, m.From, "/v1/agent/push-image", ImageRequest{Migration: m.ID, Image: m.Image, TargetHost: m.To, TargetAddr: target.TransferAddr}, nil)
		if err != nil {
			return fmt.Errorf("send image %s to %s: %w", short(m.Image), m.To, err)
		}
		co.learn(tr, func(o *Observation) { o.TargetHasImage = true })
		return co.write(ctx, m.ID, Event{Kind: EvImageSent}, log)
	case ActMigrateOut:
		return co.migrateOut(ctx, m, tr, log)
	case ActInspectTarget:
		st, err := co.inspect(ctx, m.To, m)
		co.learn(tr, func(o *Observation) {
			switch {
			case err != nil:
				o.Target = TargetUnreachable
				o.TargetTries++
			case st.Running:
				o.Target = TargetRunning
			default:
				o.Target = TargetNotRunning
			}
		})
		return err
	case ActConfirm:
		ev := Event{Kind: EvRunning, Note: "running on " + m.To}
		co.mu.Lock()
		if p := tr.result; p != nil {
			ev.Bytes, ev.Compression, ev.Checkpoint, ev.Restore, ev.Downtime = p.Bytes, p.Compression, p.Checkpoint, p.Restore, p.Downtime
		}
		ev.Method, ev.Precopy = tr.method, (*cluster.PrecopyReport)(tr.precopy.clone())
		co.mu.Unlock()
		return co.write(ctx, m.ID, ev, log)
	case ActRemoveSource:
		var st ContainerState
		cctx, cancel := context.WithTimeout(ctx, co.cfg.StepTimeout)
		err := co.agents.Call(cctx, m.From, "/v1/agent/remove", ContainerRequest{Container: m.Container, Migration: m.ID}, &st)
		cancel()
		if err != nil {
			return fmt.Errorf("remove the source copy on %s: %w", m.From, err)
		}
		return co.write(ctx, m.ID, Event{Kind: EvSourceRemoved, Note: "source copy removed from " + m.From}, log)
	case ActAbortTarget:
		cctx, cancel := context.WithTimeout(ctx, co.cfg.StepTimeout)
		err := co.agents.Call(cctx, m.To, "/v1/agent/abort", ContainerRequest{Container: m.Container, Migration: m.ID}, nil)
		cancel()
		if err != nil {
			return fmt.Errorf("remove the copy on %s: %w", m.To, err)
		}
		co.learn(tr, func(o *Observation) { o.TargetAborted = true })
		return nil
	case ActResumeSource:
		cctx, cancel := context.WithTimeout(ctx, co.cfg.StepTimeout)
		var st ContainerState
		err := co.agents.Call(cctx, m.From, "/v1/agent/resume", ContainerRequest{Container: m.Container, Migration: m.ID}, &st)
		cancel()
		if err != nil {
			return fmt.Errorf("resume on %s: %w", m.From, err)
		}
		if !st.Running {
			return fmt.Errorf("resume on %s: container not running afterwards", m.From)
		}
		return co.write(ctx, m.ID, Event{Kind: EvResumed, Note: "running on " + m.From + " again"}, log)
	case ActRolledBack:
		return co.write(ctx, m.ID, Event{Kind: EvResumed, Note: "never touched; still running on " + m.From}, log)
	}
	return fmt.Errorf("unknown action %q", act.Kind)
}

// write applies ev to the stored record through Next and stores the result
// (conditional on the phase it read). Times are stamped here, on the
// leader's clock, before Apply.
func (co *Coordinator) write(ctx context.Context, id string, ev Event, log *slog.Logger) error {
	if ev.At.IsZero() {
		ev.At = co.cfg.Now().UTC()
	}
	cur, err := co.store.Migration(id)
	if err != nil {
		return err
	}
	n, err := Next(cur, ev)
	if err != nil {
		log.Error("refused transition", "err", err)
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, co.cfg.StepTimeout)
	defer cancel()
	if err := co.store.PutMigration(wctx, cluster.PutMigrationRequest{Record: n, IfPhase: cur.Phase}); err != nil {
		return fmt.Errorf("record %s of %s: %w", ev.Kind, id, err)
	}
	if n.Phase != cur.Phase {
		log.Info("phase", "phase", n.Phase, "note", ev.Note)
		if Terminal(n.Phase) {
			co.Metrics.finished(n)
		}
	}
	return nil
}

// migrateOut asks the source to migrate the container out and follows its
// progress lines; the outcome goes into the term's observations. A record
// not yet marked SourceAsked is marked first, so that no leader ever rolls
// it back as untouched once the source may have acted.
func (co *Coordinator) migrateOut(ctx context.Context, m cluster.MigrationRecord, tr *tracker, log *slog.Logger) error {
	if m.Phase == Planned && !m.SourceAsked {
		if err := co.write(ctx, m.ID, Event{Kind: EvAsked}, log); err != nil {
			return err
		}
	}
	target, _ := co.member(m.To)
	co.learn(tr, func(o *Observation) {
		o.Out, o.OutErr, o.OutUntouched, o.Target, o.TargetTries = OutRunning, "", false, TargetUnknown, 0
	})
	sctx, cancel := context.WithTimeout(ctx, co.cfg.MigrationTimeout)
	defer cancel()
	out, err := co.followOut(sctx, m, target, tr, log)
	if ctx.Err() != nil {
		return ctx.Err() // the term ended: the next leader asks again
	}
	co.learn(tr, func(o *Observation) {
		switch {
		case err != nil:
			o.Out, o.OutErr = OutLost, fmt.Sprintf("migrate-out on %s: %v", m.From, err)
		case out == nil:
			o.Out, o.OutErr = OutLost, fmt.Sprintf("the source %s stopped answering mid-migration", m.From)
		case out.Kind == progRestored:
			o.Out = OutRestored
		default:
			o.Out, o.OutErr, o.OutUntouched = OutFailed, out.Err, out.Untouched
		}
	})
	return nil
}

// followOut reads the source's progress lines, recording phase changes as
// they come (a failed progress write is not retried: a later line or the
// outcome moves the record on). It returns the final line, or nil.
func (co *Coordinator) followOut(ctx context.Context, m cluster.MigrationRecord, target cluster.Member, tr *tracker, log *slog.Logger) (*Progress, error) {
	body, err := co.agents.Stream(ctx, m.From, "/v1/agent/migrate-out", OutRequest{Migration: m.ID, Container: m.Container,
		TargetHost: m.To, TargetAddr: target.TransferAddr, Deadline: m.Deadline, Method: m.Method})
	if err != nil {
		return nil, err
	}
	defer body.Close()
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var p Progress
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			continue
		}
		co.mu.Lock()
		if p.Precopy != nil {
			tr.precopy = p.Precopy
		}
		if p.Method != "" {
			tr.method = p.Method
		}
		if p.final() {
			tr.result = &p
		}
		method, pre := tr.method, (*cluster.PrecopyReport)(tr.precopy.clone())
		co.mu.Unlock()
		switch p.Kind {
		case EvFrozen, EvStreaming, EvReceived:
			if err := co.write(ctx, m.ID, Event{Kind: p.Kind, Bytes: p.Bytes, Checkpoint: p.Checkpoint, Method: method, Precopy: pre}, log); err != nil {
				log.Warn("could not record progress", "progress", p.Kind, "err", err)
			}
		case progRestored, EvFailed:
			return &p, nil
		}
	}
	return nil, sc.Err()
}

func (co *Coordinator) inspect(ctx context.Context, host string, m cluster.MigrationRecord) (ContainerState, error) {
	var st ContainerState
	cctx, cancel := context.WithTimeout(ctx, co.cfg.MigrationTimeout)
	defer cancel()
	err := co.agents.Call(cctx, host, "/v1/agent/inspect", ContainerRequest{Container: m.Container, Migration: m.ID}, &st)
	return st, err
}

func (co *Coordinator) member(name string) (cluster.Member, bool) {
	for _, m := range co.store.Members() {
		if m.Name == name {
			return m, true
		}
	}
	return cluster.Member{}, false
}

func newID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// view is a snapshot of the cluster for planning.
type view struct {
	hosts      []policy.HostLoad
	members    map[string]cluster.Member
	containers []located
	errs       map[string]error
}

type located struct {
	host string
	c    engine.Container
}

// snapshot builds the planners' view from the local replica alone: gossip
// for liveness and memory, the replicated reports for containers. No host
// is asked; the chosen targets are, before anything is committed
// (confirm). An alive host with an engine that has not reported yet is in
// errs.
func (co *Coordinator) snapshot(ctx context.Context) view {
	v := view{members: map[string]cluster.Member{}, errs: map[string]error{}}
	cordoned := map[string]bool{}
	for _, h := range co.store.Hosts() {
		cordoned[h.Name] = h.Cordoned
	}
	reports := map[string]cluster.HostContainers{}
	for _, h := range co.store.Inventory() {
		reports[h.Host] = h
	}
	for _, m := range co.store.Members() {
		v.members[m.Name] = m
		v.hosts = append(v.hosts, policy.HostLoad{
			Name: m.Name, Alive: m.Status == cluster.StatusAlive, Cordoned: cordoned[m.Name] || m.Cordoned,
			Engine: m.Engine, Arch: m.Arch, CRIUVersion: m.CRIUVersion, Labels: m.Labels,
			MemoryCapacity: m.MemoryTotal, MemoryUsed: m.MemoryUsed,
		})
		// A suspect host's containers are real (a drain of it must see
		// them); it is just no target (Alive above).
		if m.Status != cluster.StatusAlive && m.Status != cluster.StatusSuspect || m.Engine == "" || m.Engine == cluster.EngineNone {
			continue
		}
		h, ok := reports[m.Name]
		if !ok {
			v.errs[m.Name] = fmt.Errorf("%s has not reported its containers yet", m.Name)
			continue
		}
		for _, c := range h.Containers {
			v.containers = append(v.containers, located{m.Name, c})
		}
	}
	return v
}

// imageHolders returns which hosts run a container of the image (placement
// prefers them: no image transfer).
func (v view) imageHolders(imageID string) func(host string) bool {
	has := map[string]bool{}
	for _, l := range v.containers {
		if imageID != "" && l.c.ImageID == imageID {
			has[l.host] = true
		}
	}
	return func(host string) bool { return has[host] }
}

// find locates a running container by name or ID (or unique ID prefix).
func (v view) find(ref string) (located, error) {
	var hits []located
	for _, l := range v.containers {
		if !l.c.Running {
			continue
		}
		if l.c.Name == ref || l.c.ID == ref || (len(ref) >= 6 && strings.HasPrefix(l.c.ID, ref)) {
			hits = append(hits, l)
		}
	}
	switch len(hits) {
	case 0:
		msg := fmt.Sprintf("container %s is not running on any alive host", ref)
		if len(v.errs) > 0 {
			msg += fmt.Sprintf(" (%d hosts did not answer)", len(v.errs))
		}
		return located{}, fmt.Errorf("%w: %s", cluster.ErrNotFound, msg)
	case 1:
		return hits[0], nil
	}
	return located{}, fmt.Errorf("%w: %q matches %d containers", cluster.ErrInvalid, ref, len(hits))
}

func info(l located) policy.ContainerInfo {
	return policy.ContainerInfo{ID: l.c.ID, Host: l.host, Labels: l.c.Labels, MemoryBytes: l.c.MemoryBytes}
}

func (v view) host(name string) (policy.HostLoad, bool) {
	for _, h := range v.hosts {
		if h.Name == name {
			return h, true
		}
	}
	return policy.HostLoad{}, false
}

func (v view) counts() map[string]int {
	n := map[string]int{}
	for _, l := range v.containers {
		if l.c.Running {
			n[l.host]++
		}
	}
	return n
}

func (co *Coordinator) busy(containerID string) bool {
	for _, m := range co.store.Migrations() {
		if m.Container == containerID && !Terminal(m.Phase) {
			return true
		}
	}
	return false
}

// MigrateRequest is POST /v1/migrate.
type MigrateRequest struct {
	Container string `json:"container"`
	To        string `json:"to,omitempty"`
	// Method names a transfer method (TransferMethod); empty lets the
	// source use its default (MethodDirect, which judges pre-copy).
	Method string `json:"method,omitempty"`
}

// Migrate plans one migration, records it, and starts it. It returns the
// Planned record; the migration goes on in the background.
func (co *Coordinator) Migrate(ctx context.Context, req MigrateRequest) (cluster.MigrationRecord, error) {
	if !co.leading() {
		return cluster.MigrationRecord{}, ErrNotLeader
	}
	start := time.Now()
	v := co.snapshot(ctx)
	if d := time.Since(start); d > 5*time.Second {
		co.log.Warn("listing the cluster's containers was slow", "took", d, "errors", len(v.errs))
	}
	l, err := v.find(req.Container)
	if errors.Is(err, cluster.ErrNotFound) {
		// Perhaps started since its host last reported: ask every host.
		if rerr := co.store.RefreshReports(ctx, nil, missingReportWait); rerr != nil {
			co.log.Warn("fresh container reports", "err", rerr)
		}
		v = co.snapshot(ctx)
		l, err = v.find(req.Container)
	}
	if err != nil {
		return cluster.MigrationRecord{}, err
	}
	src, _ := v.host(l.host)
	to := req.To
	if to != "" {
		dst, ok := v.host(to)
		if !ok {
			return cluster.MigrationRecord{}, fmt.Errorf("%w: no host %s in the cluster", cluster.ErrNotFound, to)
		}
		if why := policy.Unfit(info(l), src, dst); why != "" {
			if dst.Cordoned {
				return cluster.MigrationRecord{}, fmt.Errorf("migrate %s to %s: %w", l.c.Name, to, cluster.ErrCordoned)
			}
			return cluster.MigrationRecord{}, fmt.Errorf("%w: cannot migrate %s to %s: %s", cluster.ErrInvalid, l.c.Name, to, why)
		}
		if err := co.confirm(ctx, l.host, map[string][]located{to: {l}})[to]; err != nil {
			return cluster.MigrationRecord{}, fmt.Errorf("migrate %s to %s: %w", l.c.Name, to, err)
		}
	} else if to, err = co.place(ctx, v, l); err != nil {
		return cluster.MigrationRecord{}, err
	}
	rec, err := co.record(ctx, l, to, cluster.MigrationRecord{Method: req.Method})
	if err != nil {
		return rec, err
	}
	co.poke()
	return rec, nil
}

// maxPlaceAttempts bounds how many targets one placement asks to accept.
const maxPlaceAttempts = 3

// place picks a target for l (policy.Place on the view) and has it confirm;
// a target that refuses is left out and the next one asked.
func (co *Coordinator) place(ctx context.Context, v view, l located) (string, error) {
	src, _ := v.host(l.host)
	hosts := slices.Clone(v.hosts)
	var refused []string
	for {
		to, err := policy.Place(info(l), src, hosts, v.counts(), v.imageHolders(l.c.ImageID))
		if err != nil {
			if len(refused) > 0 {
				err = fmt.Errorf("%v; refused: %s", err, strings.Join(refused, "; "))
			}
			return "", fmt.Errorf("%w: %v", cluster.ErrInvalid, err)
		}
		rerr := co.confirm(ctx, l.host, map[string][]located{to: {l}})[to]
		if rerr == nil {
			return to, nil
		}
		refused = append(refused, refusedReason(rerr))
		if len(refused) >= maxPlaceAttempts {
			return "", fmt.Errorf("migrate %s: %d targets refused: %w", l.c.Name, len(refused), rerr)
		}
		hosts = slices.DeleteFunc(hosts, func(h policy.HostLoad) bool { return h.Name == to })
	}
}

func (co *Coordinator) hasImage(ctx context.Context, host, imageID string) (bool, error) {
	var out struct {
		Present bool `json:"present"`
	}
	cctx, cancel := context.WithTimeout(ctx, co.cfg.StepTimeout)
	defer cancel()
	err := co.agents.Call(cctx, host, "/v1/agent/has-image", ImageRequest{Image: imageID}, &out)
	return out.Present, err
}

// record stores a new Planned migration for l to host to.
func (co *Coordinator) record(ctx context.Context, l located, to string, plan cluster.MigrationRecord) (cluster.MigrationRecord, error) {
	if co.busy(l.c.ID) {
		return cluster.MigrationRecord{}, fmt.Errorf("migrate %s: %w", l.c.Name, ErrBusy)
	}
	now := co.cfg.Now().UTC()
	rec := plan
	rec.ID, rec.Container, rec.Name, rec.Image, rec.From, rec.To, rec.Phase = newID(), l.c.ID, l.c.Name, l.c.ImageID, l.host, to, Planned
	rec.History = []cluster.PhaseChange{{Phase: Planned, At: now, Note: fmt.Sprintf("%s: %s -> %s", l.c.Name, l.host, to)}}
	rec.StartedAt = now
	if err := co.store.PutMigration(ctx, cluster.PutMigrationRequest{Record: rec, IfAbsent: true}); err != nil {
		return cluster.MigrationRecord{}, fmt.Errorf("record migration of %s: %w", l.c.Name, err)
	}
	co.log.Info("migration planned", "migration", rec.ID, "container", rec.Name, "from", rec.From, "to", rec.To, "batch", rec.Batch)
	return rec, nil
}

func (co *Coordinator) leading() bool {
	co.mu.Lock()
	defer co.mu.Unlock()
	return co.termCtx != nil
}

// DrainRequest is POST /v1/drain.
type DrainRequest struct {
	Host     string        `json:"host"`
	Deadline time.Duration `json:"deadline,omitempty"`
	Parallel int           `json:"parallel,omitempty"`
	DryRun   bool          `json:"dry_run,omitempty"`
	Reason   string        `json:"reason,omitempty"`
	// Auto lets the planner choose how many run at once (up to Parallel)
	// so that the moves fit before Deadline: evacuations on notices.
	Auto bool `json:"auto,omitempty"`
}

// DrainMove is one container of a drain.
type DrainMove struct {
	Container string `json:"container"`
	Name      string `json:"name"`
	To        string `json:"to,omitempty"`
	Migration string `json:"migration,omitempty"`
	Skipped   string `json:"skipped,omitempty"` // why it stays
}

// DrainResult answers a drain.
type DrainResult struct {
	Host     string      `json:"host"`
	Batch    string      `json:"batch"`
	Parallel int         `json:"parallel"`
	DryRun   bool        `json:"dry_run"`
	Moves    []DrainMove `json:"moves"`
}

// Drain cordons host and moves every migratable container off it, at most
// Parallel at a time; containers labelled orchestrate.migrate=false stay
// and are reported as skipped. Moves not started by the deadline are
// recorded RolledBack without being touched.
func (co *Coordinator) Drain(ctx context.Context, req DrainRequest) (DrainResult, error) {
	if !co.leading() {
		return DrainResult{}, ErrNotLeader
	}
	m, ok := co.member(req.Host)
	if !ok {
		return DrainResult{}, fmt.Errorf("%w: no host %s in the cluster", cluster.ErrNotFound, req.Host)
	}
	// A drain moves what the host runs now, not what it last reported (a
	// host that is dead or gone has nothing that can move).
	if (m.Status == cluster.StatusAlive || m.Status == cluster.StatusSuspect) && m.Engine != cluster.EngineNone {
		if err := co.store.RefreshReports(ctx, []string{req.Host}, drainReportWait); err != nil {
			return DrainResult{}, fmt.Errorf("drain %s: cannot list its containers: %w", req.Host, err)
		}
	}
	v := co.snapshot(ctx)
	src, _ := v.host(req.Host)
	if err, ok := v.errs[req.Host]; ok {
		return DrainResult{}, fmt.Errorf("drain %s: cannot list its containers: %w", req.Host, err)
	}
	par := req.Parallel
	if par < 1 {
		par = co.cfg.Parallel
	}
	res := DrainResult{Host: req.Host, Batch: newID(), Parallel: par, DryRun: req.DryRun}
	var infos []policy.ContainerInfo
	names := map[string]string{}
	for _, l := range v.containers {
		if l.host != req.Host || !l.c.Running {
			continue
		}
		names[l.c.ID] = l.c.Name
		if strings.EqualFold(l.c.Labels[policy.LabelMigrate], "false") {
			res.Moves = append(res.Moves, DrainMove{Container: l.c.ID, Name: l.c.Name, Skipped: policy.LabelMigrate + "=false"})
			continue
		}
		infos = append(infos, info(l))
	}
	// Plan against the host as if already cordoned, so nothing lands on it.
	src.Cordoned = true
	hosts := make([]policy.HostLoad, 0, len(v.hosts))
	for _, h := range v.hosts {
		if h.Name == req.Host {
			h = src
		}
		hosts = append(hosts, h)
	}
	var deadline time.Time
	if req.Deadline > 0 {
		deadline = co.cfg.Now().Add(req.Deadline)
	}
	model := policy.MigrationModel{MaxParallel: par}
	if req.Auto {
		model = EvacuationModel(par)
	}
	plan := policy.PlanEvacuation(co.cfg.Now(), policy.Trigger{Host: req.Host, Deadline: deadline}, infos, hosts, model)
	if req.Auto {
		par, res.Parallel = plan.Parallelism, plan.Parallelism
	}
	for _, id := range plan.Unplaced {
		res.Moves = append(res.Moves, DrainMove{Container: id, Name: names[id], Skipped: "no host can take it"})
	}
	if req.DryRun {
		for _, mv := range plan.Moves {
			res.Moves = append(res.Moves, DrainMove{Container: mv.Container, Name: names[mv.Container], To: mv.To})
		}
		return res, nil
	}
	// The plan came from reports that may be seconds old: every target
	// confirms before anything is recorded (accept.go).
	moves, refused := co.confirmMoves(ctx, v, req.Host, plan.Moves, hosts, func(cs []policy.ContainerInfo, hs []policy.HostLoad) []policy.Move {
		return policy.PlanEvacuation(co.cfg.Now(), policy.Trigger{Host: req.Host, Deadline: deadline}, cs, hs, model).Moves
	})
	for _, id := range slices.Sorted(maps.Keys(refused)) {
		res.Moves = append(res.Moves, DrainMove{Container: id, Name: names[id], Skipped: refused[id]})
	}
	yes := true
	if err := co.store.SetHost(ctx, cluster.SetHostRequest{Name: req.Host, Cordoned: &yes, Draining: &yes,
		Reason: "drain: " + req.Reason, At: co.cfg.Now().UTC()}); err != nil {
		return res, fmt.Errorf("cordon %s: %w", req.Host, err)
	}
	for _, mv := range moves {
		l := located{host: req.Host}
		for _, x := range v.containers {
			if x.c.ID == mv.Container {
				l = x
			}
		}
		rec, err := co.record(ctx, l, mv.To, cluster.MigrationRecord{Batch: res.Batch, Parallel: par, Drain: req.Host, Deadline: deadline.UTC()})
		if err != nil {
			res.Moves = append(res.Moves, DrainMove{Container: mv.Container, Name: names[mv.Container], Skipped: err.Error()})
			continue
		}
		res.Moves = append(res.Moves, DrainMove{Container: mv.Container, Name: names[mv.Container], To: mv.To, Migration: rec.ID})
		co.poke()
	}
	return res, nil
}

// EvacuationModel is the time model evacuations plan with: a fixed cost per
// migration (connections, CRIU, podman's own staging) and a conservative
// per-migration throughput, with a margin kept before the deadline. The
// numbers come from `make bench` on this kind of host (64 MiB in about 1 s
// on a LAN); on slow links the planner simply runs more at once.
func EvacuationModel(maxParallel int) policy.MigrationModel {
	return policy.MigrationModel{Overhead: 1500 * time.Millisecond, BytesPerSecond: 40e6, MaxParallel: maxParallel, Margin: 3 * time.Second}
}

func backoff(attempt int) time.Duration {
	d := 200 * time.Millisecond << min(attempt, 5)
	return min(d, 5*time.Second)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
