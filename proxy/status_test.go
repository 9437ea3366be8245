package proxy

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/uproxy/uproxy/svc"
)

func TestSnapshotDescribeAndMetrics(t *testing.T) {
	p, _ := newProxier(t, Config{NodeName: "node-a"})
	tn, un := pn("web", "http"), pn("dns", "")
	sp := tcpPort(tn, 80)
	sp.Affinity = svc.Affinity{ClientIP: true}
	mustSync(t, p, sp, udpPort(un, 53))
	eps := ready(newBackend(t, "a", "who").addr(), freePort(t))
	eps[0].NodeName, eps[0].PodName = "node-a", "web-1"
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{tn: eps, un: ready(newUDPBackend(t, "u").addr())})
	for range 3 {
		who(t, addrOf(p, tn))
	}
	if _, err := udpAsk(dialUDP(t, addrOf(p, un)), []byte("q")); err != nil {
		t.Fatal(err)
	}

	snap := p.Snapshot()
	if len(snap) != 2 || snap[1].Name != "default/web:http" {
		t.Fatalf("snapshot %+v", snap)
	}
	web := snap[1]
	if web.Affinity != "ClientIP" || web.TotalConnections != 3 || web.BytesToClients == 0 || web.ProxyPort == 0 {
		t.Fatalf("web %+v", web)
	}
	if e := web.Endpoints[0]; e.State != "ready" || !e.Local || e.Pod != "web-1" || e.TotalConnections == 0 {
		t.Fatalf("endpoint %+v", e)
	}
	raw, err := json.Marshal(snap)
	if err != nil || !strings.Contains(string(raw), `"state":"ready"`) {
		t.Fatalf("json %s %v", raw, err)
	}

	var sb strings.Builder
	p.Describe(&sb)
	for _, want := range []string{"Name:", "default/web:http", "Session Affinity:", "ClientIP", "ADDRESS", "STATE", "web-1", "UDP sessions:"} {
		if !strings.Contains(sb.String(), want) {
			t.Fatalf("describe lacks %q:\n%s", want, sb.String())
		}
	}

	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(p.Collector()); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{"uproxy_connections_active", "uproxy_connections_total", "uproxy_bytes_total",
		"uproxy_endpoint_dial_failures_total", "uproxy_endpoint_ejections_total", "uproxy_endpoint_probes_total",
		"uproxy_udp_sessions_active", "uproxy_udp_sessions_total", "uproxy_udp_session_cap_drops_total",
		"uproxy_listeners", "uproxy_accept_errors_total", "uproxy_connections_shed_total"} {
		if !names[want] {
			t.Errorf("metric %s missing", want)
		}
	}
	if got := testutil.ToFloat64(gaugeOf(t, p, "uproxy_listeners")); got != 2 {
		t.Fatalf("listeners %v", got)
	}
}

// gaugeOf wraps one unlabelled metric of the collector for testutil.
func gaugeOf(t *testing.T, p *Proxier, name string) prometheus.Collector {
	t.Helper()
	return prometheus.CollectorFunc(func(ch chan<- prometheus.Metric) {
		all := make(chan prometheus.Metric, 1000)
		p.Collector().Collect(all)
		close(all)
		for m := range all {
			if strings.Contains(m.Desc().String(), `"`+name+`"`) {
				ch <- m
			}
		}
	})
}
