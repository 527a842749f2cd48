package reboot

import "github.com/prometheus/client_golang/prometheus"

// Metrics count local checkpoints and restores on this host. A nil
// *Metrics records nothing.
type Metrics struct {
	checkpoints *prometheus.CounterVec
	restores    *prometheus.CounterVec
	keptGauge   prometheus.Gauge
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		checkpoints: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrate_local_checkpoints_total",
			Help: "Containers checkpointed to this host's disk for a local reboot, by result (saved, failed)."}, []string{"result"}),
		restores: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrate_local_restores_total",
			Help: "Containers restored from this host's disk after a local reboot or by `orchestrate restore`, by result (restored, failed)."}, []string{"result"}),
		keptGauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "orchestrate_local_checkpoints_kept",
			Help: "Checkpoints on this host whose restore failed, kept for `orchestrate restore ID`."}),
	}
	reg.MustRegister(m.checkpoints, m.restores, m.keptGauge)
	m.checkpoints.WithLabelValues("saved")
	m.checkpoints.WithLabelValues("failed")
	m.restores.WithLabelValues("restored")
	m.restores.WithLabelValues("failed")
	return m
}

func (m *Metrics) checkpoint(ok bool) {
	if m != nil {
		m.checkpoints.WithLabelValues(result(ok, "saved")).Inc()
	}
}

func (m *Metrics) restore(ok bool) {
	if m != nil {
		m.restores.WithLabelValues(result(ok, "restored")).Inc()
	}
}

func (m *Metrics) kept(n int) {
	if m != nil {
		m.keptGauge.Set(float64(n))
	}
}

// Kept sets the kept-checkpoint gauge, e.g. at start.
func (m *Metrics) Kept(n int) { m.kept(n) }

func result(ok bool, good string) string {
	if ok {
		return good
	}
	return "failed"
}
