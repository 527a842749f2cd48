package migrate

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemigrate/orchestrate/cluster"
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
	reg.MustRegister(m.migrations, m.downtime, m.bytes, m.rate, m.triggers, m.terms)
	return m
}

func (m *Metrics) finished(r cluster.MigrationRecord) {
	if m == nil {
		return
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
// time.
type ClusterCollector struct{ C ClusterView }

var (
	membersDesc = prometheus.NewDesc("orchestrate_members", "Cluster members by gossip status.", []string{"status"}, nil)
	termDesc    = prometheus.NewDesc("orchestrate_raft_term", "The raft term as this agent sees it; it rises with every election.", nil, nil)
	leaderDesc  = prometheus.NewDesc("orchestrate_is_leader", "1 when this agent leads.", nil, nil)
)

// Describe implements prometheus.Collector.
func (c ClusterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- membersDesc
	ch <- termDesc
	ch <- leaderDesc
}

// Collect implements prometheus.Collector.
func (c ClusterCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{cluster.StatusAlive: 0, cluster.StatusSuspect: 0, cluster.StatusLeft: 0, cluster.StatusDead: 0}
	for _, m := range c.C.Members() {
		counts[m.Status]++
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
}
