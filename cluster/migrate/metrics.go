package migrate

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/policy"
)

// Metrics are the Prometheus metrics of migrations and policies. The
// leader's coordinator counts the migrations it drives, so sum over agents
// (or scrape the leader) for cluster totals. A nil *Metrics records nothing.
type Metrics struct {
	migrations *prometheus.CounterVec
	downtime   prometheus.Histogram
	bytes      prometheus.Counter
	rate       prometheus.Histogram
	triggers   *prometheus.CounterVec
	terms      prometheus.Counter
	missed     *prometheus.CounterVec
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrate_migrations_total",
			Help: "Migrations driven to an end by this agent as leader, by result (done, rolled_back)."}, []string{"result"}),
		downtime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "orchestrate_migration_downtime_seconds",
			Help:    "Time from freeze on the source to running on the target, for migrations that finished.",
			Buckets: []float64{0.25, 0.5, 1, 2, 4, 8, 16, 32, 64}}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "orchestrate_migration_bytes_total",
			Help: "Checkpoint bytes moved by finished migrations (uncompressed)."}),
		rate: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "orchestrate_transfer_rate_bytes_per_second",
			Help:    "Checkpoint throughput of finished migrations (bytes over the checkpoint's wall time).",
			Buckets: prometheus.ExponentialBuckets(1e6, 2, 12)}),
		triggers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrate_policy_triggers_total",
			Help: "Policy triggers acted on (deduplicated), by kind."}, []string{"kind"}),
		terms: prometheus.NewCounter(prometheus.CounterOpts{Name: "orchestrate_leader_terms_total",
			Help: "Leadership terms this agent has started (leader changes towards it)."}),
	}
	m.missed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrate_evacuation_deadline_missed_total",
		Help: "Migrations of an evacuation with a deadline (a drain's --deadline, a spot or maintenance notice's) that ended after it, by result: done (moved too late) or rolled_back (still on the host)."},
		[]string{"result"})
	reg.MustRegister(m.migrations, m.downtime, m.bytes, m.rate, m.triggers, m.terms, m.missed)
	// Every known label starts at zero, so that rate() and increase() see
	// the first event (a series that appears at 1 has no increase), and
	// dashboards and alerts find the series before anything happened.
	for _, r := range []string{"done", "rolled_back"} {
		m.migrations.WithLabelValues(r)
		m.missed.WithLabelValues(r)
	}
	for _, k := range []string{policy.KindSpotTerminate, policy.KindSpotStop, policy.KindSpotHibernate, policy.KindRebalanceRecommendation,
		policy.KindMaintenance, policy.KindRebootPending, policy.KindRebalanceSchedule} {
		m.triggers.WithLabelValues(k)
	}
	return m
}

// missedDeadline reports whether a finished migration belonged to an
// evacuation with a deadline and ended after it: it either moved too late
// or never moved (a move not started by the deadline is rolled back then).
// A rollback before the deadline is a failure, not a missed deadline.
func missedDeadline(r cluster.MigrationRecord) bool {
	return !r.Deadline.IsZero() && r.FinishedAt.After(r.Deadline)
}

func (m *Metrics) finished(r cluster.MigrationRecord) {
	if m == nil {
		return
	}
	if missedDeadline(r) {
		result := "rolled_back"
		if r.Phase == Done {
			result = "done"
		}
		m.missed.WithLabelValues(result).Inc()
	}
	if r.Phase == Done {
		m.migrations.WithLabelValues("done").Inc()
		if r.Downtime > 0 { // unknown when a new leader rolled forward without the source's report
			m.downtime.Observe(r.Downtime.Seconds())
		}
		m.bytes.Add(float64(r.Bytes))
		if d := r.Checkpoint.Duration.Seconds(); d > 0 && r.Bytes > 0 {
			m.rate.Observe(float64(r.Bytes) / d)
		}
		return
	}
	m.migrations.WithLabelValues("rolled_back").Inc()
}

func (m *Metrics) trigger(kind string) {
	if m != nil {
		m.triggers.WithLabelValues(kind).Inc()
	}
}

func (m *Metrics) term() {
	if m != nil {
		m.terms.Inc()
	}
}

// ClusterView is what the cluster collector reads at scrape time.
type ClusterView interface {
	Members() []cluster.Member
	Status() cluster.Status
}

// ClusterCollector reports members by state and the raft term at scrape
// time, and, when C also lists migration records (MigrationLister), the
// records by phase.
type ClusterCollector struct{ C ClusterView }

// MigrationLister is what ClusterCollector reads, when C has it, for
// orchestrate_migration_records.
type MigrationLister interface {
	Migrations() []cluster.MigrationRecord
}

var (
	membersDesc   = prometheus.NewDesc("orchestrate_members", "Cluster members by gossip status.", []string{"status"}, nil)
	termDesc      = prometheus.NewDesc("orchestrate_raft_term", "The raft term as this agent sees it; it rises with every election.", nil, nil)
	leaderDesc    = prometheus.NewDesc("orchestrate_is_leader", "1 when this agent leads.", nil, nil)
	memberDesc    = prometheus.NewDesc("orchestrate_member_alive", "1 when this agent sees the member alive, 0 when suspect or dead (members that left are not reported).", []string{"member"}, nil)
	hasLeaderDesc = prometheus.NewDesc("orchestrate_has_leader", "1 when this agent knows a current leader; 0 during an election or without quorum.", nil, nil)
	recordsDesc   = prometheus.NewDesc("orchestrate_migration_records", "Migration records in the replicated state, by phase (every agent reports the same numbers; take max across agents).", []string{"phase"}, nil)
)

// Describe implements prometheus.Collector.
func (c ClusterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- membersDesc
	ch <- termDesc
	ch <- leaderDesc
	ch <- memberDesc
	ch <- hasLeaderDesc
	ch <- recordsDesc
}

// Collect implements prometheus.Collector.
func (c ClusterCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{cluster.StatusAlive: 0, cluster.StatusSuspect: 0, cluster.StatusLeft: 0, cluster.StatusDead: 0}
	for _, m := range c.C.Members() {
		counts[m.Status]++
		if m.Status != cluster.StatusLeft {
			alive := 0.0
			if m.Status == cluster.StatusAlive {
				alive = 1
			}
			ch <- prometheus.MustNewConstMetric(memberDesc, prometheus.GaugeValue, alive, m.Name)
		}
	}
	for s, n := range counts {
		ch <- prometheus.MustNewConstMetric(membersDesc, prometheus.GaugeValue, float64(n), s)
	}
	st := c.C.Status()
	if term, err := strconv.ParseFloat(st.Term, 64); err == nil {
		ch <- prometheus.MustNewConstMetric(termDesc, prometheus.GaugeValue, term)
	}
	leader := 0.0
	if st.State == "Leader" {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(leaderDesc, prometheus.GaugeValue, leader)
	hasLeader := 0.0
	if st.Leader != "" {
		hasLeader = 1
	}
	ch <- prometheus.MustNewConstMetric(hasLeaderDesc, prometheus.GaugeValue, hasLeader)
	if mv, ok := c.C.(MigrationLister); ok {
		phases := map[string]int{}
		for _, p := range []string{Planned, Checkpointing, Transferring, Restoring, Confirming, Done, RollingBack, RolledBack} {
			phases[p] = 0
		}
		for _, r := range mv.Migrations() {
			phases[r.Phase]++
		}
		for p, n := range phases {
			ch <- prometheus.MustNewConstMetric(recordsDesc, prometheus.GaugeValue, float64(n), p)
		}
	}
}
