package console

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/migrate"
)

// Raw is what one poll read from the agent. A part that could not be read
// this round is nil (or, for PS, the last good answer), and the reason is in
// Problems.
type Raw struct {
	Status     *cluster.Status
	Members    []cluster.Member
	Hosts      []cluster.Host
	Migrations []cluster.MigrationRecord
	Events     []cluster.Event
	Snapshots  []cluster.SnapshotRecord
	PS         *cluster.PSResult
	Problems   []string
}

// View is everything the page shows. It is what the console sends to the
// page, so it holds only what the pages need: no keys, addresses of other
// services or raw records.
type View struct {
	Agent      string          `json:"agent"`  // the agent the console talks to
	Leader     string          `json:"leader"` // empty: no leader known
	Term       string          `json:"term"`
	Problems   []string        `json:"problems"`
	Hosts      []HostView      `json:"hosts"`
	Containers []ContainerView `json:"containers"`
	Migrations []MigrationView `json:"migrations"` // newest first
	Phases     map[string]int  `json:"phases"`     // migrations by phase
	Events     []EventView     `json:"events"`     // newest first
	Triggers   map[string]int  `json:"triggers"`   // events by category
	Snapshots  []SnapshotView  `json:"snapshots"`  // newest first
	Downtime   DowntimeView    `json:"downtime"`
}

// HostView is one row of the hosts page.
type HostView struct {
	Name        string            `json:"name"`
	Addr        string            `json:"addr"`
	Status      string            `json:"status"`
	Role        string            `json:"role"`
	Cordoned    bool              `json:"cordoned"`
	Draining    bool              `json:"draining"`
	Reason      string            `json:"reason,omitempty"`
	Engine      string            `json:"engine"`
	CRIU        string            `json:"criu"`
	Kernel      string            `json:"kernel"`
	CPUs        int               `json:"cpus"`
	MemoryUsed  int64             `json:"memory_used"`
	MemoryTotal int64             `json:"memory_total"`
	Containers  int               `json:"containers"`
	Labels      map[string]string `json:"labels,omitempty"`
	Since       time.Time         `json:"since"`
}

// ContainerView is one row of the containers page.
type ContainerView struct {
	Host  string `json:"host"`
	Name  string `json:"name"`
	ID    string `json:"id"` // short
	Image string `json:"image"`
	State string `json:"state"`
	// Moving is the migration in flight for this container, if any.
	Moving string `json:"moving,omitempty"`
	MoveTo string `json:"move_to,omitempty"`
}

// Steps are the phases of the happy path, in order: the page draws a
// migration's progress as the step it reached.
var Steps = []string{migrate.Planned, migrate.Checkpointing, migrate.Transferring, migrate.Restoring, migrate.Confirming, migrate.Done}

// MigrationView is one migration, with what its page draws.
type MigrationView struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Container   string    `json:"container"` // short ID
	From        string    `json:"from"`
	To          string    `json:"to"`
	Phase       string    `json:"phase"`
	Step        int       `json:"step"`   // index in Steps of the furthest forward phase reached
	Failed      bool      `json:"failed"` // rolling back or rolled back
	Ended       bool      `json:"ended"`
	Started     time.Time `json:"started"`
	Finished    time.Time `json:"finished,omitzero"`
	DowntimeMS  float64   `json:"downtime_ms"`
	FrozenMS    float64   `json:"frozen_ms,omitempty"`  // CRIU's own frozen time
	RestoreMS   float64   `json:"restore_ms,omitempty"` // the target's restore call
	Bytes       int64     `json:"bytes"`
	Compression string    `json:"compression,omitempty"`
	Method      string    `json:"method,omitempty"`
	Error       string    `json:"error,omitempty"`
	History     []Change  `json:"history"`
}

// Change is one entry of a migration's history.
type Change struct {
	Phase string    `json:"phase"`
	At    time.Time `json:"at"`
	Note  string    `json:"note,omitempty"`
}

// EventView is one entry of the event log.
type EventView struct {
	At       time.Time `json:"at"`
	Kind     string    `json:"kind"`
	Category string    `json:"category"` // spot, maintenance, reboot, rebalance, evacuation, drain, snapshot, other
	Host     string    `json:"host,omitempty"`
	ID       string    `json:"id"`
	Action   string    `json:"action,omitempty"`
	Result   string    `json:"result,omitempty"`
	Message  string    `json:"message,omitempty"`
	Source   string    `json:"source,omitempty"`
	Deadline string    `json:"deadline,omitempty"`
}

// SnapshotView is one stored snapshot.
type SnapshotView struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Container string    `json:"container"` // short ID
	Host      string    `json:"host"`
	StoreHost string    `json:"store_host"`
	At        time.Time `json:"at"`
	Size      int64     `json:"size"`
	SHA256    string    `json:"sha256"`
	Reason    string    `json:"reason,omitempty"`
	Running   bool      `json:"left_running"`
	FrozenMS  float64   `json:"frozen_ms,omitempty"`
}

// DowntimeView is the downtime chart: the last N migrations that finished
// Done, oldest first, and their summary.
type DowntimeView struct {
	Window   int             `json:"window"`
	Points   []DowntimePoint `json:"points"`
	MedianMS float64         `json:"median_ms"`
	P95MS    float64         `json:"p95_ms"`
	MaxMS    float64         `json:"max_ms"`
}

// DowntimePoint is one bar of the chart.
type DowntimePoint struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Route      string    `json:"route"` // "from → to"
	At         time.Time `json:"at"`
	DowntimeMS float64   `json:"downtime_ms"`
	Bytes      int64     `json:"bytes"`
}

// Caps keep the view small however long the cluster has run.
const (
	maxMigrations = 200
	maxEvents     = 200
)

// BuildView turns one poll into what the pages show. It is pure: the same
// Raw gives the same View. window is how many finished migrations the
// downtime chart covers.
func BuildView(r Raw, window int) View {
	v := View{
		Problems: slices.Clone(r.Problems), Hosts: []HostView{}, Containers: []ContainerView{}, Migrations: []MigrationView{},
		Phases: map[string]int{}, Events: []EventView{}, Triggers: map[string]int{}, Snapshots: []SnapshotView{},
		Downtime: DowntimeView{Window: window, Points: []DowntimePoint{}},
	}
	if r.Status != nil {
		v.Agent, v.Leader, v.Term = r.Status.Node, r.Status.Leader, r.Status.Term
	}
	reasons := map[string]string{}
	for _, h := range r.Hosts {
		reasons[h.Name] = h.Reason
	}
	for _, m := range r.Members {
		v.Hosts = append(v.Hosts, HostView{
			Name: m.Name, Addr: hostOnly(m.Addr), Status: m.Status, Role: m.Role, Cordoned: m.Cordoned, Draining: m.Draining,
			Reason: reasons[m.Name], Engine: m.Engine, CRIU: m.CRIUVersion, Kernel: m.Kernel, CPUs: m.CPUs,
			MemoryUsed: m.MemoryUsed, MemoryTotal: m.MemoryTotal, Containers: m.Containers, Labels: m.Labels, Since: m.Since,
		})
	}
	slices.SortFunc(v.Hosts, func(a, b HostView) int { return cmp.Compare(a.Name, b.Name) })

	recs := slices.Clone(r.Migrations)
	slices.SortFunc(recs, func(a, b cluster.MigrationRecord) int {
		return cmp.Or(b.StartedAt.Compare(a.StartedAt), cmp.Compare(b.ID, a.ID))
	})
	moving := map[string]cluster.MigrationRecord{} // container ID -> record in flight
	for _, m := range recs {
		v.Phases[m.Phase]++
		if !migrate.Terminal(m.Phase) {
			moving[m.Container] = m
		}
		if len(v.Migrations) < maxMigrations {
			v.Migrations = append(v.Migrations, migrationView(m))
		}
	}
	v.Downtime = downtime(recs, window)

	if r.PS != nil {
		// The hosts' own lists are fresher than the counts in gossip, which
		// follow them at the next stats round.
		listed, failed := map[string]int{}, map[string]bool{}
		for _, c := range r.PS.Containers {
			listed[c.Host]++
		}
		for _, he := range r.PS.Errors {
			failed[he.Host] = true
		}
		for i, h := range v.Hosts {
			if h.Status == "alive" && !failed[h.Name] {
				v.Hosts[i].Containers = listed[h.Name]
			}
		}
		for _, c := range r.PS.Containers {
			cv := ContainerView{Host: c.Host, Name: c.Name, ID: short(c.ID), Image: c.Image, State: c.State}
			if m, ok := moving[c.ID]; ok {
				cv.Moving, cv.MoveTo = m.ID, m.To
			}
			v.Containers = append(v.Containers, cv)
		}
		for _, he := range r.PS.Errors {
			v.Problems = append(v.Problems, fmt.Sprintf("%s did not list its containers: %s", he.Host, he.Error))
		}
	}

	for i := len(r.Events) - 1; i >= 0 && len(v.Events) < maxEvents; i-- {
		e := r.Events[i]
		ev := EventView{At: e.At, Kind: e.Kind, Category: EventCategory(e.Kind), Host: e.Host, ID: e.ID,
			Action: e.Data["action"], Result: e.Data["result"], Message: e.Message, Source: e.Data["source"], Deadline: e.Data["deadline"]}
		v.Events = append(v.Events, ev)
	}
	for _, e := range r.Events {
		v.Triggers[EventCategory(e.Kind)]++
	}

	snaps := slices.Clone(r.Snapshots)
	slices.SortFunc(snaps, func(a, b cluster.SnapshotRecord) int { return cmp.Or(b.At.Compare(a.At), cmp.Compare(a.ID, b.ID)) })
	for _, s := range snaps {
		v.Snapshots = append(v.Snapshots, SnapshotView{ID: s.ID, Name: s.Name, Container: short(s.Container), Host: s.Host,
			StoreHost: s.StoreHost, At: s.At, Size: s.Size, SHA256: s.SHA256, Reason: s.Reason, Running: s.LeaveRunning, FrozenMS: ms(s.FrozenTime)})
	}
	return v
}

func migrationView(m cluster.MigrationRecord) MigrationView {
	mv := MigrationView{
		ID: m.ID, Name: m.Name, Container: short(m.Container), From: m.From, To: m.To, Phase: m.Phase,
		Step: furthestStep(m), Failed: m.Phase == migrate.RollingBack || m.Phase == migrate.RolledBack, Ended: migrate.Terminal(m.Phase),
		Started: m.StartedAt, Finished: m.FinishedAt, DowntimeMS: ms(m.Downtime), FrozenMS: ms(m.Checkpoint.FrozenTime),
		RestoreMS: ms(m.Restore.Duration), Bytes: m.Bytes, Compression: m.Compression, Method: recordMethod(m),
		Error: m.Error, History: []Change{},
	}
	if mv.Name == "" {
		mv.Name = mv.Container
	}
	for _, h := range m.History {
		mv.History = append(mv.History, Change{Phase: h.Phase, At: h.At, Note: h.Note})
	}
	return mv
}

// furthestStep is the index in Steps of the furthest forward phase the
// record reached: a rolled back migration shows where it stopped.
func furthestStep(m cluster.MigrationRecord) int {
	step := slices.Index(Steps, m.Phase)
	for _, h := range m.History {
		step = max(step, slices.Index(Steps, h.Phase))
	}
	return max(step, 0)
}

// downtime is the chart over the last window migrations that finished Done
// (recs newest first).
func downtime(recs []cluster.MigrationRecord, window int) DowntimeView {
	d := DowntimeView{Window: window, Points: []DowntimePoint{}}
	var done []cluster.MigrationRecord
	for _, m := range recs {
		if m.Phase == migrate.Done {
			done = append(done, m)
		}
	}
	slices.SortFunc(done, func(a, b cluster.MigrationRecord) int {
		return cmp.Or(b.FinishedAt.Compare(a.FinishedAt), cmp.Compare(b.ID, a.ID))
	})
	if len(done) > window {
		done = done[:window]
	}
	slices.Reverse(done)
	vals := make([]float64, 0, len(done))
	for _, m := range done {
		name := m.Name
		if name == "" {
			name = short(m.Container)
		}
		d.Points = append(d.Points, DowntimePoint{ID: m.ID, Name: name, Route: m.From + " → " + m.To, At: m.FinishedAt, DowntimeMS: ms(m.Downtime), Bytes: m.Bytes})
		vals = append(vals, ms(m.Downtime))
	}
	if len(vals) > 0 {
		slices.Sort(vals)
		d.MedianMS, d.P95MS, d.MaxMS = quantile(vals, 0.5), quantile(vals, 0.95), vals[len(vals)-1]
	}
	return d
}

// quantile of sorted values, by the nearest-rank method.
func quantile(sorted []float64, q float64) float64 {
	i := int(float64(len(sorted))*q+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// EventCategory sorts an event kind into what the events page filters by:
// the trigger that caused it (spot, maintenance, reboot, rebalance), an
// evacuation the leader ran, a drain an operator (or a reboot) asked for, a
// snapshot taken before an evacuation, or other.
func EventCategory(kind string) string {
	k := strings.TrimPrefix(kind, migrate.EventTrigger+"/")
	switch {
	case strings.HasPrefix(k, "spot-"), k == "rebalance-recommendation": // AWS's is a spot notice
		return "spot"
	case k == "maintenance":
		return "maintenance"
	case strings.HasPrefix(k, "reboot"):
		return "reboot"
	case strings.HasPrefix(k, "rebalance"):
		return "rebalance"
	case k == migrate.EventEvacuate:
		return "evacuation"
	case k == migrate.EventDrain:
		return "drain"
	case k == migrate.EventSnapshot:
		return "snapshot"
	}
	return "other"
}

// recordMethod is the transfer method that ran: the source's report when
// there is one (direct, precopy-content, ...), else the method asked for.
func recordMethod(m cluster.MigrationRecord) string {
	if m.Precopy != nil && m.Precopy.Method != "" {
		return m.Precopy.Method
	}
	return m.Method
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func hostOnly(addr string) string {
	if i := strings.LastIndex(addr, ":"); i > 0 {
		return strings.Trim(addr[:i], "[]")
	}
	return addr
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
