package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemigrate/orchestrate/cluster"
)

// netCollector exports the cluster protocols' byte counters
// (cluster.NetStats): what gossip and raft cost an agent, which the scale
// harness reads at idle.
type netCollector struct{ c *cluster.Cluster }

var (
	gossipBytesDesc = prometheus.NewDesc("orchestrate_gossip_bytes_total", "Gossip (memberlist) payload bytes sent and received.", []string{"direction"}, nil)
	raftBytesDesc   = prometheus.NewDesc("orchestrate_raft_bytes_total", "Raft bytes on the wire (TLS records) sent and received.", []string{"direction"}, nil)
)

// Describe implements prometheus.Collector.
func (n netCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- gossipBytesDesc
	ch <- raftBytesDesc
}

// Collect implements prometheus.Collector.
func (n netCollector) Collect(ch chan<- prometheus.Metric) {
	s := n.c.NetStats()
	for _, m := range []struct {
		d     *prometheus.Desc
		dir   string
		value int64
	}{{gossipBytesDesc, "in", s.GossipIn}, {gossipBytesDesc, "out", s.GossipOut}, {raftBytesDesc, "in", s.RaftIn}, {raftBytesDesc, "out", s.RaftOut}} {
		ch <- prometheus.MustNewConstMetric(m.d, prometheus.CounterValue, float64(m.value), m.dir)
	}
}
