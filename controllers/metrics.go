package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/nodestate"
)

var (
	nodesGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "driverpilot_nodes",
		Help: "Nodes of a profile by driver and phase.",
	}, []string{"profile", "driver", "phase"})
	selfTestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "driverpilot_selftest_duration_seconds",
		Help:    "Duration of node self-tests, from the agent's start and finish times.",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
	}, []string{"driver", "result"})
	failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "driverpilot_failures_total",
		Help: "Failed self-tests and nodes left without a supported driver.",
	}, []string{"profile", "driver", "reason"})
)

func init() {
	metrics.Registry.MustRegister(nodesGauge, selfTestDuration, failures)
}

// observeNodes replaces the profile's node gauges with the current phases.
func observeNodes(profile string, nodes []nodestate.Node) {
	nodesGauge.DeletePartialMatch(prometheus.Labels{"profile": profile})
	counts := map[[2]string]float64{}
	for _, n := range nodes {
		counts[[2]string{string(n.Driver), string(n.Phase)}]++
	}
	for k, v := range counts {
		nodesGauge.WithLabelValues(profile, k[0], k[1]).Set(v)
	}
}

func observeSelfTest(t *v1alpha1.SelfTestStatus) {
	if t == nil || t.StartTime == nil || t.FinishTime == nil {
		return
	}
	selfTestDuration.WithLabelValues(string(t.Driver), string(t.Result)).Observe(t.FinishTime.Sub(t.StartTime.Time).Seconds())
}

func recordFailure(profile string, driver v1alpha1.Driver, reason string) {
	failures.WithLabelValues(profile, string(driver), reason).Inc()
}
