package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metric names (uproxy_*). Per service port metrics carry the labels
// service_port ("ns/name:port") and protocol; per endpoint ones add endpoint
// ("ip:port"). Values are read from the data plane's atomics at scrape time,
// so the hot path pays nothing for metrics.
var (
	labelsPort     = []string{"service_port", "protocol"}
	labelsEndpoint = []string{"service_port", "protocol", "endpoint"}

	descActive     = prometheus.NewDesc("uproxy_connections_active", "TCP connections being relayed, per service port.", labelsPort, nil)
	descTotal      = prometheus.NewDesc("uproxy_connections_total", "TCP connections accepted, per service port.", labelsPort, nil)
	descBytes      = prometheus.NewDesc("uproxy_bytes_total", "Bytes relayed, counted when a copy ends; direction is to_endpoint or to_client.", append(labelsPort, "direction"), nil)
	descConnFail   = prometheus.NewDesc("uproxy_connection_failures_total", "Client connections reset or datagrams dropped because no endpoint (reason no_endpoint) or no try (reason dial_failed) succeeded.", append(labelsPort, "reason"), nil)
	descRetries    = prometheus.NewDesc("uproxy_dial_retries_total", "Dial tries that failed and were retried on another endpoint.", labelsPort, nil)
	descEarly      = prometheus.NewDesc("uproxy_early_resets_total", "Connections an endpoint reset right after connect; moved counts those replayed to another endpoint.", append(labelsPort, "outcome"), nil)
	descResetsCut  = prometheus.NewDesc("uproxy_resets_before_reply_total", "Connections an endpoint reset before its first byte after the client's bytes had reached it: passed to the client, not replayed.", labelsPort, nil)
	descUDPActive  = prometheus.NewDesc("uproxy_udp_sessions_active", "UDP sessions open, per service port.", labelsPort, nil)
	descUDPTotal   = prometheus.NewDesc("uproxy_udp_sessions_total", "UDP sessions created, per service port.", labelsPort, nil)
	descUDPCap     = prometheus.NewDesc("uproxy_udp_session_cap_drops_total", "Datagrams dropped because the port's UDP session cap was reached.", labelsPort, nil)
	descUDPEvict   = prometheus.NewDesc("uproxy_udp_session_evictions_total", "UDP sessions idle for at least 1s closed to make room for a new client at the session cap.", labelsPort, nil)
	descDialTO     = prometheus.NewDesc("uproxy_dial_timeout_seconds", "Current adaptive first-try dial timeout, per service port.", labelsPort, nil)
	descEpActive   = prometheus.NewDesc("uproxy_endpoint_connections_active", "Open connections (TCP) or sessions (UDP) per endpoint.", labelsEndpoint, nil)
	descEpTotal    = prometheus.NewDesc("uproxy_endpoint_connections_total", "Connections or sessions started per endpoint.", labelsEndpoint, nil)
	descEpDialFail = prometheus.NewDesc("uproxy_endpoint_dial_failures_total", "Failed dials and early resets per endpoint.", labelsEndpoint, nil)
	descEpEject    = prometheus.NewDesc("uproxy_endpoint_ejections_total", "Times the endpoint was ejected.", labelsEndpoint, nil)
	descEpEjected  = prometheus.NewDesc("uproxy_endpoint_ejected", "1 while the endpoint is ejected.", labelsEndpoint, nil)
	descEpProbes   = prometheus.NewDesc("uproxy_endpoint_probes_total", "Active probes of ejected endpoints by result (success, failure).", append(labelsEndpoint, "result"), nil)
	descListeners  = prometheus.NewDesc("uproxy_listeners", "Listening sockets open.", nil, nil)
	descAcceptErr  = prometheus.NewDesc("uproxy_accept_errors_total", "accept(2) errors (EMFILE, ENFILE, ...).", nil, nil)
	descShed       = prometheus.NewDesc("uproxy_connections_shed_total", "Connections reset at once because accept had no file descriptor.", nil, nil)
	descIdleClosed = prometheus.NewDesc("uproxy_idle_connections_closed_total", "TCP connections closed by the idle or half-close timeout.", nil, nil)
)

// Collector returns the uproxy_* metrics collector.
func (p *Proxier) Collector() prometheus.Collector { return collector{p} }

type collector struct{ p *Proxier }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descActive, descTotal, descBytes, descConnFail, descRetries, descEarly, descResetsCut,
		descUDPActive, descUDPTotal, descUDPCap, descUDPEvict, descDialTO, descEpActive, descEpTotal, descEpDialFail, descEpEject,
		descEpEjected, descEpProbes, descListeners, descAcceptErr, descShed, descIdleClosed} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	p := c.p
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	listeners := 0
	for _, ps := range p.ports {
		proto := ""
		if sp := ps.spec.Load(); sp != nil {
			proto = string(sp.Protocol)
		}
		if ps.lst != nil {
			listeners += len(ps.lst.tcp) + len(ps.lst.udp)
		}
		n, st := ps.label, &ps.stats
		gauge(descActive, float64(st.active.Load()), n, proto)
		counter(descTotal, st.total.Load(), n, proto)
		counter(descBytes, st.bytesUp.Load(), n, proto, "to_endpoint")
		counter(descBytes, st.bytesDown.Load(), n, proto, "to_client")
		counter(descConnFail, st.noEndpoint.Load(), n, proto, "no_endpoint")
		counter(descConnFail, st.dialFailed.Load(), n, proto, "dial_failed")
		counter(descRetries, st.retries.Load(), n, proto)
		counter(descEarly, st.earlyResets.Load(), n, proto, "all")
		counter(descEarly, st.replays.Load(), n, proto, "moved")
		counter(descResetsCut, st.resetsCut.Load(), n, proto)
		gauge(descUDPActive, float64(st.udpActive.Load()), n, proto)
		counter(descUDPTotal, st.udpTotal.Load(), n, proto)
		counter(descUDPCap, st.udpCapDrops.Load(), n, proto)
		counter(descUDPEvict, st.udpEvictions.Load(), n, proto)
		gauge(descDialTO, p.firstTimeout(ps).Seconds(), n, proto)
		s := ps.bal.set.Load()
		if s == nil {
			continue
		}
		for _, be := range s.all {
			ep := be.addr.String()
			h := &be.health
			gauge(descEpActive, float64(be.active.Load()), n, proto, ep)
			counter(descEpTotal, be.total.Load(), n, proto, ep)
			counter(descEpDialFail, be.dialFails.Load(), n, proto, ep)
			counter(descEpEject, h.ejections.Load(), n, proto, ep)
			ejected := 0.0
			if h.ejected.Load() {
				ejected = 1
			}
			gauge(descEpEjected, ejected, n, proto, ep)
			counter(descEpProbes, h.probeOK.Load(), n, proto, ep, "success")
			counter(descEpProbes, h.probeFail.Load(), n, proto, ep, "failure")
		}
	}
	gauge(descListeners, float64(listeners))
	counter(descAcceptErr, p.acceptErrors.Load())
	counter(descShed, p.shed.Load())
	counter(descIdleClosed, p.idleClosed.Load())
}
