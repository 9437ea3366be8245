package watch

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"

	"github.com/uproxy/uproxy/svc"
)

func nodePortSvc(mods ...func(*v1.Service)) *v1.Service {
	return service("ns", "web", append([]func(*v1.Service){func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
	}}, mods...)...)
}

func iTPLocal(s *v1.Service) {
	s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
}
func eTPLocal(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }

func zoneHints(zones ...string) epMod {
	return func(e *discovery.Endpoint) {
		e.Hints = &discovery.EndpointHints{}
		for _, z := range zones {
			e.Hints.ForZones = append(e.Hints.ForZones, discovery.ForZone{Name: z})
		}
	}
}

func nodeHints(nodes ...string) epMod {
	return func(e *discovery.Endpoint) {
		if e.Hints == nil {
			e.Hints = &discovery.EndpointHints{}
		}
		for _, n := range nodes {
			e.Hints.ForNodes = append(e.Hints.ForNodes, discovery.ForNode{Name: n})
		}
	}
}

func npPort(mod func(*svc.Port)) svc.Port {
	p := httpPort("ns", "web")
	p.NodePort = 30080
	mod(&p)
	return p
}

func ext(p svc.Port) svc.Port { p.Name.External = true; return p }

func extName(n svc.PortName) svc.PortName { n.External = true; return n }

// TestTrafficPolicies runs Services and slices through the whole path
// (informers, tracker, runner) and checks which ports and endpoint sets the
// sink gets for each combination of policies (kube-proxy's
// CategorizeEndpoints). The node is "node-a" in zone-a.
func TestTrafficPolicies(t *testing.T) {
	const me = "node-a"
	web := pn("ns", "web", "http")
	local := withNode(readyEP("10.244.0.1:8080"), me)
	remote := withNode(readyEP("10.244.1.1:8080"), "node-b")
	twoNodes := slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080),
		ep("10.244.0.1", onNode(me)), ep("10.244.1.1", onNode("node-b")))
	cases := map[string]struct {
		objs      []runtime.Object
		wantPorts []svc.Port
		wantEPs   map[svc.PortName][]svc.Endpoint
	}{
		"iTP Local on a ClusterIP Service: one port, local endpoints": {
			objs:      []runtime.Object{service("ns", "web", iTPLocal), twoNodes},
			wantPorts: []svc.Port{func() svc.Port { p := httpPort("ns", "web"); p.InternalLocal = true; return p }()},
			wantEPs:   map[svc.PortName][]svc.Endpoint{web: {local}},
		},
		"iTP Local on a NodePort Service: cluster traffic local, external traffic every endpoint": {
			objs: []runtime.Object{nodePortSvc(iTPLocal), twoNodes},
			wantPorts: []svc.Port{
				npPort(func(p *svc.Port) { p.InternalLocal, p.Traffic.Split = true, true }),
				ext(npPort(func(p *svc.Port) { p.InternalLocal, p.Traffic.Split = true, true })),
			},
			wantEPs: map[svc.PortName][]svc.Endpoint{web: {local}, extName(web): {local, remote}},
		},
		"eTP Local on a NodePort Service: cluster traffic every endpoint, external traffic local": {
			objs: []runtime.Object{nodePortSvc(eTPLocal), twoNodes},
			wantPorts: []svc.Port{
				npPort(func(p *svc.Port) { p.Traffic.ExternalLocal, p.Traffic.Split = true, true }),
				ext(npPort(func(p *svc.Port) { p.Traffic.ExternalLocal, p.Traffic.Split = true, true })),
			},
			wantEPs: map[svc.PortName][]svc.Endpoint{web: {local, remote}, extName(web): {local}},
		},
		"eTP Local, no endpoint on this node: external traffic has none": {
			objs: []runtime.Object{nodePortSvc(eTPLocal), slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080),
				ep("10.244.1.1", onNode("node-b")))},
			wantPorts: []svc.Port{
				npPort(func(p *svc.Port) { p.Traffic.ExternalLocal, p.Traffic.Split = true, true }),
				ext(npPort(func(p *svc.Port) { p.Traffic.ExternalLocal, p.Traffic.Split = true, true })),
			},
			wantEPs: map[svc.PortName][]svc.Endpoint{web: {remote}},
		},
		"both Local: one port, local endpoints": {
			objs:      []runtime.Object{nodePortSvc(iTPLocal, eTPLocal), twoNodes},
			wantPorts: []svc.Port{npPort(func(p *svc.Port) { p.InternalLocal, p.Traffic.ExternalLocal = true, true })},
			wantEPs:   map[svc.PortName][]svc.Endpoint{web: {local}},
		},
		"eTP Local on a ClusterIP Service without externalIPs does not count": {
			objs:      []runtime.Object{service("ns", "web", eTPLocal), twoNodes},
			wantPorts: []svc.Port{httpPort("ns", "web")},
			wantEPs:   map[svc.PortName][]svc.Endpoint{web: {local, remote}},
		},
		"LoadBalancer with eTP Local gets its health check node port": {
			objs: []runtime.Object{service("ns", "web", eTPLocal, func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.Ports[0].NodePort = 30080
				s.Spec.HealthCheckNodePort = 32000
			}), twoNodes},
			wantPorts: []svc.Port{
				npPort(func(p *svc.Port) {
					p.Traffic = svc.Traffic{ExternalLocal: true, HealthCheckNodePort: 32000, Split: true}
				}),
				ext(npPort(func(p *svc.Port) {
					p.Traffic = svc.Traffic{ExternalLocal: true, HealthCheckNodePort: 32000, Split: true}
				})),
			},
			wantEPs: map[svc.PortName][]svc.Endpoint{web: {local, remote}, extName(web): {local}},
		},
		"zone hints: cluster traffic prefers this zone": {
			objs: []runtime.Object{service("ns", "web"), slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080),
				ep("10.244.0.1", onNode(me), zoneHints("zone-a")), ep("10.244.1.1", onNode("node-b"), zoneHints("zone-b")))},
			wantPorts: []svc.Port{httpPort("ns", "web")},
			wantEPs:   map[svc.PortName][]svc.Endpoint{web: {local}},
		},
		"zone hints ignored when one ready endpoint has none": {
			objs: []runtime.Object{service("ns", "web"), slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080),
				ep("10.244.0.1", onNode(me), zoneHints("zone-a")), ep("10.244.1.1", onNode("node-b")))},
			wantPorts: []svc.Port{httpPort("ns", "web")},
			wantEPs:   map[svc.PortName][]svc.Endpoint{web: {local, remote}},
		},
		"zone hints ignored when none is for this zone": {
			objs: []runtime.Object{service("ns", "web"), slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080),
				ep("10.244.0.1", onNode(me), zoneHints("zone-c")), ep("10.244.1.1", onNode("node-b"), zoneHints("zone-b")))},
			wantPorts: []svc.Port{httpPort("ns", "web")},
			wantEPs:   map[svc.PortName][]svc.Endpoint{web: {local, remote}},
		},
		"zone hints: a not-ready terminating endpoint is dropped with topology on": {
			objs: []runtime.Object{service("ns", "web"), slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080),
				ep("10.244.0.1", onNode(me), zoneHints("zone-a")),
				ep("10.244.0.2", onNode(me), conds(ptr.To(false), ptr.To(true), ptr.To(true))),
				ep("10.244.1.1", onNode("node-b"), zoneHints("zone-b")))},
			wantPorts: []svc.Port{httpPort("ns", "web")},
			wantEPs:   map[svc.PortName][]svc.Endpoint{web: {local}},
		},
		"node hints (PreferSameNode) win over zone hints": {
			objs: []runtime.Object{service("ns", "web"), slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080),
				ep("10.244.0.1", onNode(me), zoneHints("zone-a"), nodeHints(me)),
				ep("10.244.0.2", onNode("node-c"), zoneHints("zone-a"), nodeHints("node-c")),
				ep("10.244.1.1", onNode("node-b"), zoneHints("zone-b"), nodeHints("node-b")))},
			wantPorts: []svc.Port{httpPort("ns", "web")},
			wantEPs:   map[svc.PortName][]svc.Endpoint{web: {local}},
		},
		"eTP Local ignores topology, cluster traffic uses it": {
			objs: []runtime.Object{nodePortSvc(eTPLocal), slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080),
				ep("10.244.0.1", onNode(me), zoneHints("zone-b")), ep("10.244.1.1", onNode("node-b"), zoneHints("zone-a")))},
			wantPorts: []svc.Port{
				npPort(func(p *svc.Port) { p.Traffic.ExternalLocal, p.Traffic.Split = true, true }),
				ext(npPort(func(p *svc.Port) { p.Traffic.ExternalLocal, p.Traffic.Split = true, true })),
			},
			wantEPs: map[svc.PortName][]svc.Endpoint{web: {remote}, extName(web): {local}},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t, Options{NodeName: me}, append([]runtime.Object{node(me, "192.168.0.1")}, tc.objs...)...)
			w.synced(t)
			ports, eps, _, _ := w.sink.snapshot()
			if !slices.EqualFunc(ports, tc.wantPorts, svc.Port.Equal) {
				t.Errorf("ports:\n got  %+v\n want %+v", ports, tc.wantPorts)
			}
			if tc.wantEPs == nil {
				tc.wantEPs = map[svc.PortName][]svc.Endpoint{}
			}
			if !maps.EqualFunc(eps, tc.wantEPs, slices.Equal) {
				t.Errorf("endpoints:\n got  %v\n want %v", fmt.Sprint(eps), fmt.Sprint(tc.wantEPs))
			}
		})
	}
}

func TestHasItem(t *testing.T) {
	cases := map[string]struct {
		list, x string
		want    bool
	}{
		"empty list":    {"", "a", false},
		"empty x":       {"a,b", "", false},
		"first":         {"a,b", "a", true},
		"last":          {"a,b", "b", true},
		"prefix only":   {"ab,b", "a", false},
		"single":        {"zone-a", "zone-a", true},
		"single prefix": {"zone-a", "zone", false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := hasItem(tc.list, tc.x); got != tc.want {
				t.Errorf("hasItem(%q, %q) = %v, want %v", tc.list, tc.x, got, tc.want)
			}
		})
	}
}

// TestZoneChange: relabelling the Node into another zone re-applies the
// zone hints at once, without any Service or slice event.
func TestZoneChange(t *testing.T) {
	const me = "node-a"
	web := pn("ns", "web", "http")
	w := newWorld(t, Options{NodeName: me}, node(me, "192.168.0.1"), service("ns", "web"),
		slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080),
			ep("10.244.0.1", zoneHints("zone-a")), ep("10.244.1.1", zoneHints("zone-b"))))
	w.synced(t)
	want := func(addr string) func(*recordSink) bool {
		return func(s *recordSink) bool {
			l := s.eps[web]
			return len(l) == 1 && l[0].Addr.String() == addr
		}
	}
	w.sink.waitFor(t, "the zone-a endpoint only", want("10.244.0.1:8080"))
	n, err := w.client.CoreV1().Nodes().Get(context.Background(), me, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n = n.DeepCopy()
	n.Labels[v1.LabelTopologyZone] = "zone-b"
	if _, err := w.client.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.sink.waitFor(t, "the zone-b endpoint only", want("10.244.1.1:8080"))
}
