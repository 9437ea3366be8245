package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// syncState is what the health server needs from the sync loop
// (watch.Runner.Health, converted in run.go so this file and its tests do
// not depend on watch/).
type syncState struct {
	Synced       bool      // the first full sync has been applied
	LastUpdated  time.Time // last successful apply
	QueuedSince  time.Time // oldest change not applied yet; zero when none
	NodeDeleting bool      // our Node has a deletionTimestamp or is gone
	NodeTainted  bool      // our Node has the ToBeDeletedByClusterAutoscaler taint
	NodeName     string

	UnreachableSince time.Time // the API server stopped answering; zero while it answers
	UnreachableErr   string
}

// healthResponse is kube-proxy's /healthz and /livez body
// (pkg/proxy/healthcheck/proxy_health.go ProxyHealth), without its per-family
// "status" map (uproxy applies both families in one sync), with a "reason"
// when unhealthy and, on /healthz, "apiServer" while the API server does not
// answer (whether or not that fails the check).
type healthResponse struct {
	LastUpdated  time.Time `json:"lastUpdated"`
	CurrentTime  time.Time `json:"currentTime"`
	NodeEligible *bool     `json:"nodeEligible,omitempty"` // /healthz only, as kube-proxy
	Healthy      bool      `json:"healthy"`
	Reason       string    `json:"reason,omitempty"`
	APIServer    string    `json:"apiServer,omitempty"`
}

// healthServer answers /healthz (readiness: is this node's proxy current
// and should it get traffic?) and /livez (liveness: is the sync loop stuck?).
type healthServer struct {
	state   func() syncState
	timeout time.Duration // a queued change older than this is unhealthy: 2 x --iptables-sync-period
	now     func() time.Time

	// requireAPIServer (--healthz-require-apiserver) makes an API server
	// unreachable for longer than timeout fail /healthz. Off, as
	// kube-proxy: the outage is only reported in "apiServer".
	requireAPIServer bool

	shuttingDown atomic.Bool // set on SIGTERM: /healthz fails so load balancers stop sending

	healthzTotal *prometheus.CounterVec // kubeproxy_proxy_healthz_total{code}
	livezTotal   *prometheus.CounterVec // kubeproxy_proxy_livez_total{code}
}

func newHealthServer(state func() syncState, syncPeriod time.Duration) *healthServer {
	return &healthServer{
		state:   state,
		timeout: 2 * syncPeriod,
		now:     time.Now,
		healthzTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_proxy_healthz_total",
			Help: "Cumulative proxy healthz HTTP status",
		}, []string{"code"}),
		livezTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_proxy_livez_total",
			Help: "Cumulative proxy livez HTTP status",
		}, []string{"code"}),
	}
}

// Collectors are the health counters, for the metrics registry.
func (h *healthServer) Collectors() []prometheus.Collector {
	return []prometheus.Collector{h.healthzTotal, h.livezTotal}
}

// handler serves /healthz and /livez.
func (h *healthServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", h.serveHealthz)
	mux.HandleFunc("/livez", h.serveLivez)
	return mux
}

// live reports whether the sync loop keeps up: unhealthy only when a queued
// change has waited longer than the timeout. Before the first sync the
// process is alive (kube-proxy: "healthy while it's starting up"), so a
// liveness probe does not restart uproxy in a loop while the API server is
// unreachable at start; /healthz reports that case.
func (h *healthServer) live(s syncState, now time.Time) (bool, string) {
	if s.Synced && !s.QueuedSince.IsZero() {
		if waited := now.Sub(s.QueuedSince); waited >= h.timeout {
			return false, fmt.Sprintf("a queued change has waited %s (limit %s)", waited.Round(time.Millisecond), h.timeout)
		}
	}
	return true, ""
}

// serveHealthz answers kube-proxy's readiness check: 503 when a queued
// change is stale (as /livez) or the node is not eligible (deleted, or
// tainted ToBeDeletedByClusterAutoscaler: /healthz only, as kube-proxy's
// healthzHandler; /livez ignores the node). uproxy adds 503s before the
// first sync, during shutdown and, with --healthz-require-apiserver, while
// the API server has not answered for longer than the timeout.
func (h *healthServer) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	s, now := h.state(), h.now()
	healthy, reason := h.live(s, now)
	eligible := !s.NodeDeleting && !s.NodeTainted
	var apiServer string
	unreachableFor := time.Duration(0)
	if !s.UnreachableSince.IsZero() {
		unreachableFor = now.Sub(s.UnreachableSince)
		apiServer = fmt.Sprintf("unreachable for %s, serving the last known state: %s", unreachableFor.Round(time.Second), s.UnreachableErr)
	}
	switch {
	case !healthy:
	case !s.Synced:
		healthy, reason = false, "waiting for the first sync"
	case h.requireAPIServer && apiServer != "" && unreachableFor >= h.timeout:
		// Readiness only: /livez stays 200, a restart would lose the
		// last known state that uproxy keeps serving.
		healthy, reason = false, fmt.Sprintf("API server unreachable for %s (limit %s, --healthz-require-apiserver), serving the last known state: %s",
			unreachableFor.Round(time.Second), h.timeout, s.UnreachableErr)
	case s.NodeDeleting:
		healthy, reason = false, fmt.Sprintf("node %q is being deleted", s.NodeName)
	case s.NodeTainted:
		healthy, reason = false, fmt.Sprintf("node %q has the ToBeDeletedByClusterAutoscaler taint", s.NodeName)
	case h.shuttingDown.Load():
		healthy, reason = false, "shutting down"
	}
	h.write(w, h.healthzTotal, healthResponse{
		LastUpdated: s.LastUpdated, CurrentTime: now, NodeEligible: &eligible, Healthy: healthy, Reason: reason, APIServer: apiServer,
	})
}

func (h *healthServer) serveLivez(w http.ResponseWriter, _ *http.Request) {
	s, now := h.state(), h.now()
	healthy, reason := h.live(s, now)
	h.write(w, h.livezTotal, healthResponse{LastUpdated: s.LastUpdated, CurrentTime: now, Healthy: healthy, Reason: reason})
}

func (h *healthServer) write(w http.ResponseWriter, total *prometheus.CounterVec, r healthResponse) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	code := http.StatusOK
	if r.Healthy {
		// As kube-proxy: a healthy answer's lastUpdated is "now", because
		// older clients read it as "the sync loop ran recently".
		r.LastUpdated = r.CurrentTime
	} else {
		code = http.StatusServiceUnavailable
	}
	total.WithLabelValues(fmt.Sprint(code)).Inc()
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(r) // a failed write means the prober left
}
