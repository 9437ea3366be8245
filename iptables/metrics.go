package iptables

import "github.com/prometheus/client_golang/prometheus"

// metrics are per Programmer (no global registry); Collectors exposes them.
type metrics struct {
	restores     *prometheus.CounterVec   // family, result
	restoreTime  *prometheus.HistogramVec // family
	checks       *prometheus.CounterVec   // family
	syncFailures prometheus.Counter
	repairs      *prometheus.CounterVec // family
	rules        *prometheus.GaugeVec   // table
	ctDeleted    prometheus.Counter
	ctFailures   prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		restores: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "uproxy_iptables_restore_total",
			Help: "iptables-restore/ip6tables-restore executions by family and result (success, failure).",
		}, []string{"family", "result"}),
		restoreTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "uproxy_iptables_restore_duration_seconds",
			Help:    "Duration of one iptables-restore execution.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"family"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "uproxy_iptables_checks_total",
			Help: "Read-only iptables-save checks of the installed rules (tamper detection, restart), by family.",
		}, []string{"family"}),
		syncFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "uproxy_iptables_sync_failures_total",
			Help: "SyncPortals calls that returned an error (the caller retries with backoff).",
		}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "uproxy_iptables_repairs_total",
			Help: "Portal rules and jumps found deleted, added or changed by someone else and restored, by family.",
		}, []string{"family"}),
		rules: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_iptables_total",
			Help: "Number of iptables rules uproxy owns after the last sync, by table (both IP families).",
		}, []string{"table"}),
		ctDeleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "uproxy_iptables_conntrack_deleted_total",
			Help: "UDP conntrack entries deleted because their portal went away or changed proxy port.",
		}),
		ctFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "uproxy_iptables_conntrack_failures_total",
			Help: "Failed attempts to delete stale UDP conntrack entries (retried at the next sync).",
		}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.restores, m.restoreTime, m.checks, m.syncFailures, m.repairs, m.rules, m.ctDeleted, m.ctFailures}
}
