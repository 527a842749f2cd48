package migrate

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
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
}

// Agents calls other agents' APIs by host name.
type Agents interface {
	// Call posts in as JSON to path on host and decodes the answer into out.
	Call(ctx context.Context, host, path string, in, out any) error
	// Stream posts in and returns the streamed answer for the caller to close.
	Stream(ctx context.Context, host, path string, in any) (io.ReadCloser, error)
	// Containers lists host's containers.
	Containers(ctx context.Context, host string) ([]engine.Container, error)
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
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Parallel: 2, StepTimeout: 30 * time.Second, MigrationTimeout: 10 * time.Minute,
		Rebalance: policy.DefaultRebalanceConfig(), Logger: slog.Default(), Now: time.Now}
}

// Coordinator is the leader's side of migrations. It owns one goroutine per
// migration it runs, all ending with the leadership term (Run's ctx). A new
// leader's Run resumes or rolls back every record that is not finished.
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
	running map[string]bool // migration IDs with a goroutine
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
	return &Coordinator{cfg: cfg, store: store, agents: agents, log: cfg.Logger, running: map[string]bool{}}
}

// Run is the per-term leader loop (cluster.Config.LeaderLoop): it resumes
// unfinished migrations, then serves requests until ctx ends, and waits for
// its migrations' goroutines before returning.
func (co *Coordinator) Run(ctx context.Context) error {
	wg := &sync.WaitGroup{}
	co.Metrics.term()
	co.mu.Lock()
	co.termCtx, co.wg = ctx, wg
	co.mu.Unlock()
	defer func() {
		co.mu.Lock()
		co.termCtx = nil
		co.mu.Unlock()
		wg.Wait()
	}()
	var pending []cluster.MigrationRecord
	for _, m := range co.store.Migrations() {
		if !Terminal(m.Phase) {
			pending = append(pending, m)
		}
	}
	sort.Slice(pending, func(i, j int) bool { return pending[i].StartedAt.Before(pending[j].StartedAt) })
	if len(pending) > 0 {
		co.log.Info("leader resumes unfinished migrations", "count", len(pending))
	}
	// Records of one drain keep its parallelism; others run one by one.
	sem := map[string]chan struct{}{}
	for _, m := range pending {
		key, par := batchOf(m)
		if sem[key] == nil {
			sem[key] = make(chan struct{}, par)
		}
		co.start(m, sem[key])
	}
	wg.Add(1)
	go func() { defer wg.Done(); co.runSchedule(ctx) }()
	<-ctx.Done()
	return nil
}

func batchOf(m cluster.MigrationRecord) (string, int) {
	key, par := m.Batch, max(m.Parallel, 1)
	if key == "" {
		key = m.ID
	}
	return key, par
}

// start runs m to an end on a goroutine of the current term. sem, when not
// nil, bounds concurrency with other migrations of the same batch.
func (co *Coordinator) start(m cluster.MigrationRecord, sem chan struct{}) bool {
	co.mu.Lock()
	ctx, wg := co.termCtx, co.wg
	if ctx == nil || co.running[m.ID] {
		co.mu.Unlock()
		return false
	}
	co.running[m.ID] = true
	wg.Add(1)
	co.mu.Unlock()
	go func() {
		defer wg.Done()
		defer func() {
			co.mu.Lock()
			delete(co.running, m.ID)
			co.mu.Unlock()
		}()
		if sem != nil {
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				return
			}
		}
		co.drive(ctx, m)
	}()
	return true
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

func (co *Coordinator) snapshot(ctx context.Context) view {
	v := view{members: map[string]cluster.Member{}, errs: map[string]error{}}
	cordoned := map[string]bool{}
	for _, h := range co.store.Hosts() {
		cordoned[h.Name] = h.Cordoned
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, m := range co.store.Members() {
		v.members[m.Name] = m
		v.hosts = append(v.hosts, policy.HostLoad{
			Name: m.Name, Alive: m.Status == cluster.StatusAlive, Cordoned: cordoned[m.Name] || m.Cordoned,
			Engine: m.Engine, CRIUVersion: m.CRIUVersion, Labels: m.Labels,
			MemoryCapacity: m.MemoryTotal, MemoryUsed: m.MemoryUsed,
		})
		if m.Status != cluster.StatusAlive || m.Engine == "" || m.Engine == "none" {
			continue
		}
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, co.cfg.StepTimeout)
			defer cancel()
			cs, err := co.agents.Containers(cctx, name)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				v.errs[name] = err
				return
			}
			for _, c := range cs {
				v.containers = append(v.containers, located{name, c})
			}
		}(m.Name)
	}
	wg.Wait()
	return v
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
}

// Migrate plans one migration, records it, and starts it. It returns the
// Planned record; the migration goes on in the background.
func (co *Coordinator) Migrate(ctx context.Context, req MigrateRequest) (cluster.MigrationRecord, error) {
	if !co.leading() {
		return cluster.MigrationRecord{}, ErrNotLeader
	}
	v := co.snapshot(ctx)
	l, err := v.find(req.Container)
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
	} else {
		to, err = policy.Place(info(l), src, v.hosts, v.counts(), co.imageProbe(ctx, l.c.ImageID))
		if err != nil {
			return cluster.MigrationRecord{}, fmt.Errorf("%w: %v", cluster.ErrInvalid, err)
		}
	}
	rec, err := co.record(ctx, l, to, cluster.MigrationRecord{})
	if err != nil {
		return rec, err
	}
	co.start(rec, nil)
	return rec, nil
}

// imageProbe asks hosts whether they hold an image (placement prefers them).
func (co *Coordinator) imageProbe(ctx context.Context, imageID string) func(string) bool {
	return func(host string) bool {
		ok, err := co.hasImage(ctx, host, imageID)
		return err == nil && ok
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
	v := co.snapshot(ctx)
	src, ok := v.host(req.Host)
	if !ok {
		return DrainResult{}, fmt.Errorf("%w: no host %s in the cluster", cluster.ErrNotFound, req.Host)
	}
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
	yes := true
	if err := co.store.SetHost(ctx, cluster.SetHostRequest{Name: req.Host, Cordoned: &yes, Draining: &yes,
		Reason: "drain: " + req.Reason, At: co.cfg.Now().UTC()}); err != nil {
		return res, fmt.Errorf("cordon %s: %w", req.Host, err)
	}
	sem := make(chan struct{}, par)
	for _, mv := range plan.Moves {
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
		co.start(rec, sem)
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

// drive takes m from its current phase to Done or RolledBack.
func (co *Coordinator) drive(ctx context.Context, m cluster.MigrationRecord) {
	log := co.log.With("migration", m.ID, "container", m.Name, "from", m.From, "to", m.To)
	d := &driver{co: co, ctx: ctx, m: m, log: log}
	switch {
	case m.Phase == Planned:
		d.run()
	case BeforeConfirm(m.Phase):
		d.reconcile()
	case m.Phase == Confirming:
		d.finish()
	case m.Phase == RollingBack:
		d.rollback("")
	}
}

// driver holds one migration's record while the coordinator drives it.
type driver struct {
	co  *Coordinator
	ctx context.Context
	m   cluster.MigrationRecord
	log *slog.Logger
}

// step applies ev through Next and stores the result. A refused transition
// is a bug, logged; a failed store (leadership lost) ends the term anyway.
func (d *driver) step(ev Event) error {
	if ev.At.IsZero() {
		ev.At = d.co.cfg.Now().UTC()
	}
	n, err := Next(d.m, ev)
	if err != nil {
		d.log.Error("refused transition", "err", err)
		return err
	}
	if err := d.co.store.PutMigration(d.ctx, cluster.PutMigrationRequest{Record: n, IfPhase: d.m.Phase}); err != nil {
		d.log.Warn("could not record phase", "phase", n.Phase, "err", err)
		return err
	}
	if n.Phase != d.m.Phase {
		d.log.Info("phase", "phase", n.Phase, "note", ev.Note)
		if Terminal(n.Phase) {
			d.co.Metrics.finished(n)
		}
	}
	d.m = n
	return nil
}

func (d *driver) name() string {
	if d.m.Name != "" {
		return d.m.Name
	}
	return d.m.Container
}

// run is the happy path from Planned.
func (d *driver) run() {
	if !d.m.Deadline.IsZero() && d.co.cfg.Now().After(d.m.Deadline) {
		d.rollback("drain deadline passed before this migration started; the container was not touched")
		return
	}
	target, ok := d.member(d.m.To)
	if !ok || target.Status != cluster.StatusAlive {
		d.rollback(fmt.Sprintf("target %s is not alive", d.m.To))
		return
	}
	// The image goes first, while the container still runs.
	if img := d.m.Image; img != "" {
		has, err := d.co.hasImage(d.ctx, d.m.To, img)
		if err != nil {
			d.rollback(fmt.Sprintf("ask %s for image %s: %v", d.m.To, short(img), err))
			return
		}
		if !has {
			sctx, cancel := context.WithTimeout(d.ctx, d.co.cfg.MigrationTimeout)
			err := d.co.agents.Call(sctx, d.m.From, "/v1/agent/push-image",
				ImageRequest{Image: img, TargetHost: d.m.To, TargetAddr: target.TransferAddr}, nil)
			cancel()
			if err != nil {
				d.rollback(fmt.Sprintf("send image %s to %s: %v", short(img), d.m.To, err))
				return
			}
			if d.step(Event{Kind: EvImageSent}) != nil {
				return
			}
		}
	}
	sctx, cancel := context.WithTimeout(d.ctx, d.co.cfg.MigrationTimeout)
	defer cancel()
	body, err := d.co.agents.Stream(sctx, d.m.From, "/v1/agent/migrate-out",
		OutRequest{Migration: d.m.ID, Container: d.m.Container, TargetHost: d.m.To, TargetAddr: target.TransferAddr, Deadline: d.m.Deadline})
	if err != nil {
		d.reconcileOr(fmt.Sprintf("migrate-out on %s: %v", d.m.From, err))
		return
	}
	defer body.Close()
	restored := false
	failure := ""
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var p Progress
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			continue
		}
		switch p.Kind {
		case EvFrozen, EvStreaming, EvReceived:
			// Times come from the source; they are stamped before Apply.
			_ = d.step(Event{Kind: p.Kind, At: p.At, Bytes: p.Bytes, Checkpoint: p.Checkpoint})
		case progPrecopy:
			p.Precopy.record(&d.m) // stored with the next step
		case progRestored:
			restored = true
			p.Precopy.record(&d.m)
			d.m.Bytes, d.m.Compression = p.Bytes, p.Compression
			if p.Checkpoint != nil {
				d.m.Checkpoint = *p.Checkpoint
			}
			if p.Restore != nil {
				d.m.Restore = *p.Restore
			}
		case EvFailed:
			failure = p.Err
			p.Precopy.record(&d.m)
		}
	}
	if d.ctx.Err() != nil {
		return // leadership lost: the next leader reconciles
	}
	if !restored {
		if failure == "" {
			failure = fmt.Sprintf("the source %s stopped answering mid-migration", d.m.From)
			if err := sc.Err(); err != nil {
				failure += ": " + err.Error()
			}
		}
		d.reconcileOr(failure)
		return
	}
	d.confirm()
}

// reconcileOr settles a migration whose outcome the leader did not see
// (the source stopped answering, or the call failed): if the target runs
// the container it rolls forward, else back with reason.
func (d *driver) reconcileOr(reason string) {
	st, err := d.inspect(d.m.To)
	if err == nil && st.Running {
		d.log.Info("target runs the container after all: rolling forward")
		d.confirm()
		return
	}
	d.rollback(reason)
}

// reconcile resumes a migration a previous leader left mid-flight. First it
// waits for whatever the source is still doing with the container (its
// lock), so the stream has ended either way; then the target decides.
func (d *driver) reconcile() {
	_, _ = d.inspect(d.m.From)
	d.reconcileOr(fmt.Sprintf("the leader changed during %s and the target does not run the container", d.m.Phase))
}

// confirm checks on the target that the container runs, then finishes.
func (d *driver) confirm() {
	st, err := d.inspect(d.m.To)
	if err != nil || !st.Running {
		reason := fmt.Sprintf("target %s does not run %s after the restore", d.m.To, d.name())
		if err != nil {
			reason = fmt.Sprintf("confirm on %s: %v", d.m.To, err)
		}
		d.rollback(reason)
		return
	}
	if d.step(Event{Kind: EvRunning, Note: "running on " + d.m.To}) != nil {
		return
	}
	d.finish()
}

// finish removes the source's stopped copy; from Confirming there is no
// rollback, so it retries until it succeeds or the term ends.
func (d *driver) finish() {
	for attempt := 0; ; attempt++ {
		var st ContainerState
		cctx, cancel := context.WithTimeout(d.ctx, d.co.cfg.StepTimeout)
		err := d.co.agents.Call(cctx, d.m.From, "/v1/agent/remove", ContainerRequest{Container: d.m.Container, Migration: d.m.ID}, &st)
		cancel()
		if err == nil {
			_ = d.step(Event{Kind: EvSourceRemoved, Note: "source copy removed from " + d.m.From})
			return
		}
		d.log.Warn("could not remove the source copy; retrying", "err", err, "attempt", attempt)
		if !sleepCtx(d.ctx, backoff(attempt)) {
			return
		}
	}
}

// rollback moves the record to RollingBack (when not already), removes any
// copy on the target, and resumes the source. The source must come back:
// it retries until it does or the term ends (the next leader goes on).
func (d *driver) rollback(reason string) {
	if d.m.Phase != RollingBack {
		d.log.Warn("rolling back", "reason", reason)
		if d.step(Event{Kind: EvFailed, Err: reason, Note: reason}) != nil {
			return
		}
	}
	for attempt := 0; ; attempt++ {
		err := d.rollbackOnce()
		if err == nil {
			_ = d.step(Event{Kind: EvResumed, Note: "running on " + d.m.From + " again"})
			return
		}
		d.log.Warn("rollback step failed; retrying", "err", err, "attempt", attempt)
		if !sleepCtx(d.ctx, backoff(attempt)) {
			return
		}
	}
}

func (d *driver) rollbackOnce() error {
	// A dead target cannot be cleaned now; its agent removes the copy when
	// it comes back (Reconcile). Anything else must answer first, so that
	// the container never runs twice.
	if m, ok := d.member(d.m.To); ok && m.Status == cluster.StatusAlive {
		cctx, cancel := context.WithTimeout(d.ctx, d.co.cfg.StepTimeout)
		err := d.co.agents.Call(cctx, d.m.To, "/v1/agent/abort", ContainerRequest{Container: d.m.Container, Migration: d.m.ID}, nil)
		cancel()
		if err != nil {
			return fmt.Errorf("remove the copy on %s: %w", d.m.To, err)
		}
	}
	cctx, cancel := context.WithTimeout(d.ctx, d.co.cfg.StepTimeout)
	defer cancel()
	var st ContainerState
	if err := d.co.agents.Call(cctx, d.m.From, "/v1/agent/resume", ContainerRequest{Container: d.m.Container, Migration: d.m.ID}, &st); err != nil {
		return fmt.Errorf("resume on %s: %w", d.m.From, err)
	}
	if !st.Running {
		return fmt.Errorf("resume on %s: container not running afterwards", d.m.From)
	}
	return nil
}

func (d *driver) inspect(host string) (ContainerState, error) {
	var st ContainerState
	cctx, cancel := context.WithTimeout(d.ctx, d.co.cfg.MigrationTimeout)
	defer cancel()
	err := d.co.agents.Call(cctx, host, "/v1/agent/inspect", ContainerRequest{Container: d.m.Container, Migration: d.m.ID}, &st)
	return st, err
}

func (d *driver) member(name string) (cluster.Member, bool) {
	for _, m := range d.co.store.Members() {
		if m.Name == name {
			return m, true
		}
	}
	return cluster.Member{}, false
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
