package watch

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// latencyBuckets cover 1 ms to 5 min: endpoint changes land in milliseconds,
// rate-limited rule changes in seconds.
var latencyBuckets = []float64{.001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2, 5, 10, 30, 60, 120, 300}

// metrics are one Runner's collectors (not registered globally, so tests
// and several runners never collide).
type metrics struct {
	syncDuration     prometheus.Histogram // every applying pass: endpoints and/or ports
	syncFullDuration prometheus.Histogram // SyncPorts calls
	programming      prometheus.Histogram // event recorded -> sink applied
	lastSync         prometheus.Gauge
	syncErrors       prometheus.Counter
	// checkpointServing is 1 while the sink holds a loaded checkpoint's
	// state (before the source's first sync).
	checkpointServing prometheus.Gauge
	checkpointWrites  *prometheus.CounterVec // {result="ok"|"error"}
	others            []prometheus.Collector
}

func newMetrics(t *Tracker) *metrics {
	m := &metrics{
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kubeproxy_sync_proxy_rules_duration_seconds",
			Help:    "Time one pass of the sync loop took to apply changes (endpoint updates and, when due, SyncPorts).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}),
		syncFullDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kubeproxy_sync_full_proxy_rules_duration_seconds",
			Help:    "Time SyncPorts took: the full set of service ports and portal rules programmed.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}),
		programming: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kubeproxy_network_programming_duration_seconds",
			Help:    "Time from a Service or EndpointSlice event reaching uproxy to the proxy using the new state.",
			Buckets: latencyBuckets,
		}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
			Help: "Unix time of the last successful SyncPorts.",
		}),
		syncErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "uproxy_sync_errors_total",
			Help: "SyncPorts calls that returned an error (retried with backoff).",
		}),
		checkpointServing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "uproxy_checkpoint_serving",
			Help: "1 while uproxy serves the state checkpoint of a previous run because the API server's state has not arrived yet.",
		}),
		checkpointWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "uproxy_checkpoint_writes_total",
			Help: "State checkpoint writes (--checkpoint-path), by result.",
		}, []string{"result"}),
	}
	for _, r := range []string{"ok", "error"} {
		m.checkpointWrites.WithLabelValues(r) // exported as 0 before the first write
	}
	m.others = []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
			Help: "Unix time of the last Service, EndpointSlice or Node change recorded.",
		}, func() float64 {
			ns := t.lastQueued.Load()
			if ns == 0 {
				return 0
			}
			return float64(ns) / float64(time.Second)
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kubeproxy_sync_proxy_rules_service_changes_total",
			Help: "Service events recorded.",
		}, func() float64 { return float64(t.serviceChanges.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kubeproxy_sync_proxy_rules_endpoint_changes_total",
			Help: "EndpointSlice events recorded.",
		}, func() float64 { return float64(t.endpointChanges.Load()) }),
	}
	return m
}

func (m *metrics) collectors() []prometheus.Collector {
	return append([]prometheus.Collector{m.syncDuration, m.syncFullDuration, m.programming, m.lastSync, m.syncErrors,
		m.checkpointServing, m.checkpointWrites}, m.others...)
}
