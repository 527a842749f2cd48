package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/edgemigrate/orchestrate/engine"
)

// Container reports: every agent with an engine reports its containers into
// the replicated state, so that `ps` on any agent and placement on the
// leader read one local copy instead of asking every host over the network
// on every request.
//
// How stale a report can be:
//   - A change made by orchestrate (a migration's restore, removal or
//     resume) is reported as soon as the migration record involving this
//     host changes in the agent's replica, that is within one raft commit
//     plus one engine listing (tens of milliseconds on a LAN).
//   - A change made outside orchestrate (podman run, a crash) is reported at
//     the next periodic check: at most cluster.stats_interval (default 10 s,
//     jittered by a quarter) later.
//   - A report that cannot be written (no leader) is retried at the next
//     check. A follower serves its own replica, a raft commit behind the
//     leader at most.
//   - Memory use is re-reported only when it moved by more than a quarter
//     (and at least memSlack): placement sizes targets from it, and a
//     report on every wiggle would write to raft all the time.
//
// When a planner needs a report fresher than that (a drain must move what
// its host runs now; a container started a second ago is not in any report
// yet), the leader asks for one through raft: one RequestReports entry
// naming the hosts (or all); each named agent sees it in its replica, lists
// its engine and writes its report even if unchanged, marked with the
// request it served. The leader waits for those marks (RefreshReports).
//
// Placement confirms with the chosen target before it commits a migration
// (migrate.Agent's /v1/agent/accept), so a stale report costs a refusal,
// never a wrong move.

// ReportContainersType stores one host's container report. Writers set
// IgnoreUnknownTypeFlag on it, on RequestReportsType and on PruneType:
// agents of an older version, which read no reports and prune nothing,
// skip them during a rolling upgrade. (An older agent never reports, so a
// drain of it fails until it is upgraded: "has not reported its
// containers yet".)
const ReportContainersType MessageType = 10

// RequestReportsType asks hosts for fresh reports. Written only by the
// leader.
const RequestReportsType MessageType = 11

// maxReported bounds the containers one report may carry.
const maxReported = 10000

// memSlack is the memory change below which a container's use is not
// re-reported.
const memSlack = 32 << 20

// HostContainers is one host's last container report.
type HostContainers struct {
	Host       string             `json:"host"`
	Containers []engine.Container `json:"containers"`
	// ListedAt is when the host listed its engine, on its own clock
	// (informational).
	ListedAt time.Time `json:"listed_at"`
	// Index is the raft index of the report.
	Index uint64 `json:"index"`
	// Served is the raft index of the latest report request the host had
	// seen when it listed (see RefreshReports).
	Served uint64 `json:"served,omitempty"`
}

func (h HostContainers) clone() HostContainers {
	h.Containers = slices.Clone(h.Containers)
	return h
}

// ReportContainersRequest replaces Host's container report with
// Containers, or, with Base set, changes the report stored at raft index
// Base: Upsert replaces or adds containers by ID, Remove drops IDs. A delta
// whose base is not the stored report is refused (ErrConflict) and the host
// sends its whole list. Deltas keep an entry, which raft sends to every
// member, as small as the change rather than the host. With Forget set
// (the leader, once a host left the cluster), the report is dropped.
type ReportContainersRequest struct {
	Host       string             `json:"host"`
	Containers []engine.Container `json:"containers,omitempty"`
	Base       uint64             `json:"base,omitempty"`
	Upsert     []engine.Container `json:"upsert,omitempty"`
	Remove     []string           `json:"remove,omitempty"`
	At         time.Time          `json:"at"`
	Forget     bool               `json:"forget,omitempty"`
	Served     uint64             `json:"served,omitempty"`
}

// RequestReportsRequest asks Hosts (empty: every host) to list their
// engines and report, changed or not.
type RequestReportsRequest struct {
	Hosts []string  `json:"hosts,omitempty"`
	At    time.Time `json:"at"`
}

func (r *RequestReportsRequest) validate() error {
	if len(r.Hosts) > maxReported {
		return fmt.Errorf("request reports of %d hosts: %w", len(r.Hosts), ErrInvalid)
	}
	for _, h := range r.Hosts {
		if err := checkName("host", h); err != nil {
			return err
		}
	}
	return nil
}

// allHosts keys a request for every host in state.ReportsWanted.
const allHosts = ""

func (f *fsm) applyRequestReports(index uint64, req RequestReportsRequest) error {
	if len(req.Hosts) == 0 {
		f.s.ReportsWanted[allHosts] = index
	}
	for _, h := range req.Hosts {
		f.s.ReportsWanted[h] = index
	}
	return nil
}

// reportWanted is the raft index of the latest report request naming host.
func (f *fsm) reportWanted(host string) uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return max(f.s.ReportsWanted[allHosts], f.s.ReportsWanted[host])
}

// leaderOnly: dropping a host's report (Forget) is the leader's
// housekeeping; a member may write reports but not forget another's.
func (r *ReportContainersRequest) leaderOnly() bool { return r.Forget }

func (r *ReportContainersRequest) validate() error {
	if err := checkName("host", r.Host); err != nil {
		return err
	}
	if len(r.Containers)+len(r.Upsert)+len(r.Remove) > maxReported {
		return fmt.Errorf("report of %s: more than %d containers: %w", r.Host, maxReported, ErrInvalid)
	}
	if r.Forget && len(r.Containers)+len(r.Upsert)+len(r.Remove) > 0 {
		return fmt.Errorf("report of %s: forget with containers: %w", r.Host, ErrInvalid)
	}
	if r.Base == 0 && len(r.Upsert)+len(r.Remove) > 0 || r.Base > 0 && len(r.Containers) > 0 {
		return fmt.Errorf("report of %s: a delta needs a base and no full list: %w", r.Host, ErrInvalid)
	}
	for _, c := range slices.Concat(r.Containers, r.Upsert) {
		if err := checkName("container id", c.ID); err != nil {
			return fmt.Errorf("report of %s: %w", r.Host, err)
		}
	}
	for _, id := range r.Remove {
		if err := checkName("container id", id); err != nil {
			return fmt.Errorf("report of %s: %w", r.Host, err)
		}
	}
	return nil
}

func (f *fsm) applyReportContainers(index uint64, req ReportContainersRequest) error {
	if req.Forget {
		delete(f.s.Containers, req.Host)
		delete(f.s.ReportsWanted, req.Host)
		return nil
	}
	cs := applyDelta(nil, req.Containers, nil) // a sorted copy
	if req.Base > 0 {
		old, ok := f.s.Containers[req.Host]
		if !ok || old.Index != req.Base {
			return fmt.Errorf("report of %s: delta on %d, stored report is %d: %w", req.Host, req.Base, old.Index, ErrConflict)
		}
		cs = applyDelta(old.Containers, req.Upsert, req.Remove)
	}
	f.s.Containers[req.Host] = HostContainers{Host: req.Host, Containers: cs, ListedAt: req.At, Index: index, Served: req.Served}
	return nil
}

// applyDelta returns old without the removed IDs and with upsert replacing
// or adding containers by ID, sorted by ID. old is not changed.
func applyDelta(old, upsert []engine.Container, remove []string) []engine.Container {
	byID := make(map[string]engine.Container, len(old)+len(upsert))
	for _, c := range old {
		byID[c.ID] = c
	}
	for _, id := range remove {
		delete(byID, id)
	}
	for _, c := range upsert {
		byID[c.ID] = c
	}
	out := make([]engine.Container, 0, len(byID))
	for _, c := range byID {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// reportDelta is the change from old to cur worth reporting (see
// containerChanged): the containers to upsert and the IDs to remove.
func reportDelta(old, cur []engine.Container) (upsert []engine.Container, remove []string) {
	byID := make(map[string]engine.Container, len(old))
	for _, c := range old {
		byID[c.ID] = c
	}
	for _, c := range cur {
		if o, ok := byID[c.ID]; !ok || containerChanged(o, c) {
			upsert = append(upsert, c)
		}
		delete(byID, c.ID)
	}
	for id := range byID {
		remove = append(remove, id)
	}
	sort.Strings(remove)
	return upsert, remove
}

func (f *fsm) containers() []HostContainers {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]HostContainers, 0, len(f.s.Containers))
	for _, h := range f.s.Containers {
		out = append(out, h.clone())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out
}

func (f *fsm) hostContainers(host string) (HostContainers, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	h, ok := f.s.Containers[host]
	return h.clone(), ok
}

// migrationMark summarises the migration records that involve host: it
// changes whenever one of them is created, changes phase or is dropped.
func (f *fsm) migrationMark(host string) string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var ids []string
	for id, m := range f.s.Migrations {
		if m.From == host || m.To == host {
			ids = append(ids, id+"/"+m.Phase)
		}
	}
	sort.Strings(ids)
	b, _ := json.Marshal(ids)
	return string(b)
}

// Inventory returns every host's last container report from the local
// replica, sorted by host.
func (c *Cluster) Inventory() []HostContainers { return c.fsm.containers() }

// reportsChanged decides whether a fresh listing differs enough from the
// replicated report to write a new one: any container added or gone, or a
// change of name, image, state, labels or checkpoint; memory only when it
// moved by more than a quarter and by more than memSlack.
func reportsChanged(old, cur []engine.Container) bool {
	if len(old) != len(cur) {
		return true
	}
	up, rm := reportDelta(old, cur)
	return len(up)+len(rm) > 0
}

// containerChanged: a container's report is worth renewing.
func containerChanged(o, c engine.Container) bool {
	if o.Name != c.Name || o.Image != c.Image || o.ImageID != c.ImageID || o.State != c.State ||
		o.Running != c.Running || o.Checkpointed != c.Checkpointed || !equalLabels(o.Labels, c.Labels) {
		return true
	}
	d := c.MemoryBytes - o.MemoryBytes
	if d < 0 {
		d = -d
	}
	return d > memSlack && d > o.MemoryBytes/4
}

func equalLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// inventoryLoop reports this host's containers (see the top of this file
// for when). It does nothing on an agent without an engine.
func (c *Cluster) inventoryLoop(ctx context.Context) error {
	if c.cfg.Engine == nil {
		return nil
	}
	tick := time.NewTimer(0)
	defer tick.Stop()
	mark := ""
	var served uint64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-c.invWake:
			m, w := c.fsm.migrationMark(c.cfg.NodeName), c.fsm.reportWanted(c.cfg.NodeName)
			if m == mark && w <= served {
				continue
			}
			mark = m
		}
		next := jitter(c.cfg.StatsInterval)
		w := c.fsm.reportWanted(c.cfg.NodeName)
		err := c.reportContainers(ctx, w > served, w)
		if err == nil {
			served = max(served, w)
		}
		if err != nil && ctx.Err() == nil {
			c.logger.Debug("container report not written; retrying", "err", err)
			next = min(next, jitter(time.Second))
		}
		if !tick.Stop() {
			select {
			case <-tick.C:
			default:
			}
		}
		tick.Reset(next)
	}
}

// reportContainers lists the engine and writes a report when it differs
// from the replicated one, or always when forced (a request to serve).
// Without a known leader it fails at once rather than wait: the next check
// tries again.
func (c *Cluster) reportContainers(ctx context.Context, force bool, served uint64) error {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	at := time.Now().UTC()
	cs, err := c.cfg.Engine.List(lctx)
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].ID < cs[j].ID })
	req := ReportContainersRequest{Host: c.cfg.NodeName, Containers: cs, At: at, Served: served}
	if old, ok := c.fsm.hostContainers(c.cfg.NodeName); ok {
		up, rm := reportDelta(old.Containers, cs)
		if len(up)+len(rm) == 0 && !force {
			return nil
		}
		if len(up) < len(cs) { // else the whole list is as small
			req.Containers, req.Base, req.Upsert, req.Remove = nil, old.Index, up, rm
		}
	}
	if c.Leader() == "" {
		return ErrNoLeader
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err = c.apply(wctx, ReportContainersType|IgnoreUnknownTypeFlag, req)
	if errors.Is(err, ErrConflict) { // the base moved on: send the whole list
		req.Containers, req.Base, req.Upsert, req.Remove = cs, 0, nil, nil
		err = c.apply(wctx, ReportContainersType|IgnoreUnknownTypeFlag, req)
	}
	return err
}

// ErrNoReport: a host did not answer a report request in time.
var ErrNoReport = errors.New("no fresh container report")

// RefreshReports asks hosts (nil: every alive member with an engine) for
// fresh reports through raft and waits, at most wait, until each of them
// has reported since. Only the leader may ask (ErrNotLeader otherwise). The
// error names the hosts that did not answer (ErrNoReport); the reports of
// the others are fresh either way.
func (c *Cluster) RefreshReports(ctx context.Context, hosts []string, wait time.Duration) error {
	if !c.IsLeader() {
		return ErrNotLeader
	}
	if err := c.apply(ctx, RequestReportsType|IgnoreUnknownTypeFlag, RequestReportsRequest{Hosts: hosts, At: time.Now().UTC()}); err != nil {
		return err
	}
	if hosts == nil {
		for _, m := range c.Members() {
			if (m.Status == StatusAlive || m.Status == StatusSuspect) && m.Engine != "" && m.Engine != EngineNone {
				hosts = append(hosts, m.Name)
			}
		}
	}
	deadline := time.Now().Add(wait)
	for {
		var late []string
		for _, h := range hosts {
			r, ok := c.fsm.hostContainers(h)
			if !ok || r.Served < c.fsm.reportWanted(h) {
				late = append(late, h)
			}
		}
		if len(late) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w from %s within %s", ErrNoReport, strings.Join(late, ", "), wait)
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
}

// forgetGoneHosts drops the reports of hosts that are neither members nor
// raft servers any more (the leader's housekeeping).
func (c *Cluster) forgetGoneHosts(ctx context.Context) error {
	roles := c.raftRoles()
	for _, h := range c.fsm.containers() {
		if _, ok := c.member(h.Host); ok {
			continue
		}
		if _, ok := roles[h.Host]; ok {
			continue
		}
		if err := c.apply(ctx, ReportContainersType|IgnoreUnknownTypeFlag, ReportContainersRequest{Host: h.Host, At: time.Now().UTC(), Forget: true}); err != nil {
			return err
		}
	}
	return nil
}

// PSEntry is one container in `orchestrate ps`.
type PSEntry struct {
	Host  string `json:"host"`
	Name  string `json:"name"`
	ID    string `json:"id"`
	Image string `json:"image"`
	State string `json:"state"`
	// ListedAt is when the host listed it (the host's clock).
	ListedAt time.Time `json:"listed_at"`
}

// HostError is a host whose containers `ps` cannot show.
type HostError struct {
	Host  string `json:"host"`
	Error string `json:"error"`
}

// PSResult is GET /v1/ps: the containers of every alive or suspect host,
// from the reports in this agent's replica, and the hosts left out.
type PSResult struct {
	Containers []PSEntry   `json:"containers"`
	Errors     []HostError `json:"errors,omitempty"`
}

// PS lists the containers across the cluster from the local replica: no
// host is asked. Hosts that are dead or gone, and hosts with an engine that
// have not reported yet, are listed in Errors.
func (c *Cluster) PS(ctx context.Context) PSResult {
	res := PSResult{Containers: []PSEntry{}}
	reports := map[string]HostContainers{}
	for _, h := range c.fsm.containers() {
		reports[h.Host] = h
	}
	for _, m := range c.Members() {
		h, reported := reports[m.Name]
		delete(reports, m.Name)
		switch {
		case m.Status != StatusAlive && m.Status != StatusSuspect:
			if reported {
				res.Errors = append(res.Errors, HostError{Host: m.Name, Error: fmt.Sprintf("%s since %s; last report listed %d containers at %s",
					m.Status, m.Since.UTC().Format(time.RFC3339), len(h.Containers), h.ListedAt.Format(time.RFC3339))})
			}
			continue
		case !reported:
			if m.Engine != "" && m.Engine != EngineNone {
				res.Errors = append(res.Errors, HostError{Host: m.Name, Error: "no container report yet"})
			}
			continue
		}
		for _, x := range h.Containers {
			res.Containers = append(res.Containers, PSEntry{Host: m.Name, Name: x.Name, ID: x.ID, Image: x.Image, State: x.State, ListedAt: h.ListedAt})
		}
	}
	for host := range reports {
		res.Errors = append(res.Errors, HostError{Host: host, Error: "not a member any more"})
	}
	sort.Slice(res.Containers, func(i, j int) bool {
		a, b := res.Containers[i], res.Containers[j]
		return a.Host < b.Host || a.Host == b.Host && a.Name < b.Name
	})
	sort.Slice(res.Errors, func(i, j int) bool { return res.Errors[i].Host < res.Errors[j].Host })
	return res
}

// EngineNone is the engine type of an agent without a container engine: a
// witness that takes part in gossip and raft (a two-host site's third vote)
// and never hosts containers.
const EngineNone = "none"

// MemInfo returns this host's total and available memory in bytes (from
// /proc/meminfo; zeros when unreadable).
func MemInfo() (total, avail int64) { return memInfo() }

// gossipedMemUsed is the memory use to gossip: the last gossiped value
// until the real one moved by more than a 64th of the host's memory (and
// at least memSlack). Every change of an agent's metadata is a broadcast
// that every member retransmits; with each host's use wiggling on every
// refresh, a hundred agents kept memberlist's queues full (tens of kB/s
// per agent at idle, slower failure detection; internal/scale). Placement
// needs no finer figure: the chosen target checks its memory itself.
func gossipedMemUsed(last, now, total int64) int64 {
	d := now - last
	if d < 0 {
		d = -d
	}
	if last == 0 || d > max(total/64, memSlack) {
		return now
	}
	return last
}
