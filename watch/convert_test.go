package watch

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"

	"github.com/uproxy/uproxy/svc"
)

// port is a service port; its family is its first cluster IP's.
func port(ns, name, portName string, proto svc.Protocol, p uint16, clusterIPs ...string) svc.Port {
	sp := svc.Port{Name: pn(ns, name, portName), Protocol: proto, Port: p, ClusterIPs: addrs(clusterIPs...)}
	if len(sp.ClusterIPs) > 0 {
		sp.Name.Family = svc.FamilyOf(sp.ClusterIPs[0])
	}
	return sp
}

func httpPort(ns, name string) svc.Port { return port(ns, name, "http", svc.TCP, 80, "10.96.0.10") }

// TestConversion runs objects through the whole path (fake clientset,
// informers, tracker, runner) and checks what the sink is told.
func TestConversion(t *testing.T) {
	const me = "node-a"
	v4node := node(me, "192.168.0.1")
	cases := map[string]struct {
		opts      Options
		objs      []runtime.Object
		wantPorts []svc.Port
		wantEPs   map[svc.PortName][]svc.Endpoint
	}{
		"headless service skipped": {
			objs: []runtime.Object{
				service("ns", "hl", withClusterIPs(v1.ClusterIPNone)),
				slice("ns", "hl-1", "hl", discovery.AddressTypeIPv4, httpPorts(8080), ep("10.244.0.1")),
				service("ns", "web"),
			},
			wantPorts: []svc.Port{httpPort("ns", "web")},
		},
		"headless label skipped": {
			objs: []runtime.Object{
				service("ns", "hl", withLabel(LabelHeadless, "")),
				service("ns", "web", withClusterIPs("10.96.0.11")),
			},
			wantPorts: []svc.Port{port("ns", "web", "http", svc.TCP, 80, "10.96.0.11")},
		},
		"ExternalName skipped": {
			objs: []runtime.Object{
				service("ns", "ext", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeExternalName; s.Spec.ExternalName = "example.com" }),
			},
		},
		"service without cluster IP skipped": {
			objs: []runtime.Object{service("ns", "noip", withClusterIPs(""))},
		},
		"service-proxy-name: other proxy's services skipped when unset": {
			objs: []runtime.Object{
				service("ns", "theirs", withLabel(LabelServiceProxyName, "other")),
				service("ns", "mine", withLabel(LabelServiceProxyName, "uproxy")),
				service("ns", "plain"),
			},
			wantPorts: []svc.Port{httpPort("ns", "plain")},
		},
		"service-proxy-name: only ours when set": {
			opts: Options{ServiceProxyName: "uproxy"},
			objs: []runtime.Object{
				service("ns", "theirs", withLabel(LabelServiceProxyName, "other")),
				service("ns", "mine", withLabel(LabelServiceProxyName, "uproxy")),
				service("ns", "plain"),
			},
			wantPorts: []svc.Port{httpPort("ns", "mine")},
		},
		"multi-slice merge with duplicates": {
			objs: []runtime.Object{
				service("ns", "web"),
				slice("ns", "web-a", "web", discovery.AddressTypeIPv4, httpPorts(8080),
					ep("10.244.0.1"), ep("10.244.0.2"), ep("10.244.0.3", conds(ptr.To(false), ptr.To(true), ptr.To(true)))),
				// 10.244.0.2 again (moving between slices), 10.244.0.3 ready here: the non-terminating copy wins.
				slice("ns", "web-b", "web", discovery.AddressTypeIPv4, httpPorts(8080),
					ep("10.244.0.2"), ep("10.244.0.3"), ep("10.244.0.4")),
				slice("ns", "other-svc", "other", discovery.AddressTypeIPv4, httpPorts(8080), ep("10.244.9.9")),
			},
			wantPorts: []svc.Port{httpPort("ns", "web")},
			wantEPs: map[svc.PortName][]svc.Endpoint{pn("ns", "web", "http"): {
				readyEP("10.244.0.1:8080"), readyEP("10.244.0.2:8080"), readyEP("10.244.0.3:8080"), readyEP("10.244.0.4:8080"),
			}},
		},
		"named ports matched by name and protocol": {
			objs: []runtime.Object{
				service("ns", "app", withPorts(
					v1.ServicePort{Name: "http", Protocol: v1.ProtocolTCP, Port: 80},
					v1.ServicePort{Name: "metrics", Protocol: v1.ProtocolTCP, Port: 9090},
					v1.ServicePort{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53},
				)),
				slice("ns", "app-1", "app", discovery.AddressTypeIPv4, []discovery.EndpointPort{
					eport("metrics", 9100, v1.ProtocolTCP),
					eport("http", 8080, v1.ProtocolTCP),
					eport("dns", 5353, v1.ProtocolTCP), // wrong protocol: no match
					eport("unused", 7000, v1.ProtocolTCP),
				}, ep("10.244.0.1")),
			},
			wantPorts: []svc.Port{
				port("ns", "app", "http", svc.TCP, 80, "10.96.0.10"),
				port("ns", "app", "metrics", svc.TCP, 9090, "10.96.0.10"),
				port("ns", "app", "dns", svc.UDP, 53, "10.96.0.10"),
			},
			wantEPs: map[svc.PortName][]svc.Endpoint{
				pn("ns", "app", "http"):    {readyEP("10.244.0.1:8080")},
				pn("ns", "app", "metrics"): {readyEP("10.244.0.1:9100")},
			},
		},
		"terminating fallback: ready and serving-terminating pass, others dropped": {
			objs: []runtime.Object{
				service("ns", "web"),
				slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080),
					ep("10.244.0.1"),                       // ready
					ep("10.244.0.2", conds(nil, nil, nil)), // nil ready = ready
					ep("10.244.0.3", conds(ptr.To(false), ptr.To(true), ptr.To(true))),   // serving terminating
					ep("10.244.0.4", conds(ptr.To(false), ptr.To(false), ptr.To(true))),  // terminating, not serving
					ep("10.244.0.5", conds(ptr.To(false), nil, ptr.To(true))),            // nil serving = ready = false
					ep("10.244.0.6", conds(ptr.To(false), ptr.To(true), ptr.To(false))),  // serving, not ready, not terminating
					ep("10.244.0.7", conds(ptr.To(false), ptr.To(false), ptr.To(false))), // neither
				),
			},
			wantPorts: []svc.Port{httpPort("ns", "web")},
			wantEPs: map[svc.PortName][]svc.Endpoint{pn("ns", "web", "http"): {
				readyEP("10.244.0.1:8080"), readyEP("10.244.0.2:8080"), termEP("10.244.0.3:8080"),
			}},
		},
		"internalTrafficPolicy Local keeps this node's endpoints": {
			opts: Options{NodeName: me},
			objs: []runtime.Object{
				v4node,
				service("ns", "web", func(s *v1.Service) { s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal) }),
				slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080),
					ep("10.244.0.1", onNode(me)), ep("10.244.1.1", onNode("node-b")), ep("10.244.2.1")),
			},
			wantPorts: []svc.Port{func() svc.Port { p := httpPort("ns", "web"); p.InternalLocal = true; return p }()},
			wantEPs: map[svc.PortName][]svc.Endpoint{pn("ns", "web", "http"): {
				withNode(readyEP("10.244.0.1:8080"), me),
			}},
		},
		"IPv6 slice on an IPv6 node": {
			opts: Options{NodeName: me},
			objs: []runtime.Object{
				node(me, "fd00::1"),
				service("ns", "web", withClusterIPs("fd00:96::10", "10.96.0.10")),
				slice("ns", "web-v6", "web", discovery.AddressTypeIPv6, httpPorts(8080), ep("fd00:244::1"), ep("fd00:244::2")),
				slice("ns", "web-v4", "web", discovery.AddressTypeIPv4, httpPorts(8080), ep("10.244.0.1")),
			},
			wantPorts: []svc.Port{port("ns", "web", "http", svc.TCP, 80, "fd00:96::10")},
			wantEPs: map[svc.PortName][]svc.Endpoint{pn6("ns", "web", "http"): {
				readyEP("[fd00:244::1]:8080"), readyEP("[fd00:244::2]:8080"),
			}},
		},
		// Issue 15 item 3: the two families of a dual-stack service are two
		// ports; IPv4 portal traffic only reaches IPv4 pods and IPv6 only
		// IPv6, each family's external and LB IPs portal to its own port.
		"dual-stack service on a dual-stack node: one port per family": {
			opts: Options{NodeName: me},
			objs: []runtime.Object{
				node(me, "192.168.0.1", "fd00::1"),
				service("ns", "web", withClusterIPs("10.96.0.10", "fd00:96::10"), func(s *v1.Service) {
					s.Spec.Ports[0].NodePort = 30080
					s.Spec.ExternalIPs = []string{"fd00:e::1", "203.0.113.1"}
					s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "198.51.100.1"}, {IP: "fd00:1b::1"}}
				}),
				slice("ns", "web-v6", "web", discovery.AddressTypeIPv6, httpPorts(8080), ep("fd00:244::1")),
				slice("ns", "web-v4", "web", discovery.AddressTypeIPv4, httpPorts(8080), ep("10.244.0.1"), ep("10.244.0.2")),
			},
			wantPorts: []svc.Port{
				func() svc.Port {
					p := port("ns", "web", "http", svc.TCP, 80, "10.96.0.10")
					p.NodePort, p.ExternalIPs, p.LoadBalancerIPs = 30080, addrs("203.0.113.1"), addrs("198.51.100.1")
					return p
				}(),
				func() svc.Port {
					p := port("ns", "web", "http", svc.TCP, 80, "fd00:96::10")
					p.NodePort, p.ExternalIPs, p.LoadBalancerIPs = 30080, addrs("fd00:e::1"), addrs("fd00:1b::1")
					return p
				}(),
			},
			wantEPs: map[svc.PortName][]svc.Endpoint{
				pn("ns", "web", "http"):  {readyEP("10.244.0.1:8080"), readyEP("10.244.0.2:8080")},
				pn6("ns", "web", "http"): {readyEP("[fd00:244::1]:8080")},
			},
		},
		"dual-stack service on an IPv4 node: IPv6 slices and addresses unused": {
			opts: Options{NodeName: me},
			objs: []runtime.Object{
				v4node,
				service("ns", "web", withClusterIPs("fd00:96::10", "10.96.0.10"), func(s *v1.Service) {
					s.Spec.ExternalIPs = []string{"fd00:e::1"}
				}),
				slice("ns", "web-v6", "web", discovery.AddressTypeIPv6, httpPorts(8080), ep("fd00:244::1")),
				slice("ns", "web-v4", "web", discovery.AddressTypeIPv4, httpPorts(8080), ep("10.244.0.1")),
			},
			wantPorts: []svc.Port{port("ns", "web", "http", svc.TCP, 80, "10.96.0.10")},
			wantEPs:   map[svc.PortName][]svc.Endpoint{pn("ns", "web", "http"): {readyEP("10.244.0.1:8080")}},
		},
		"IPv6 endpoints of a single-stack IPv4 service are not used": {
			opts: Options{NodeName: me, Families: []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}},
			objs: []runtime.Object{
				service("ns", "web", withClusterIPs("10.96.0.10")),
				slice("ns", "web-v6", "web", discovery.AddressTypeIPv6, httpPorts(8080), ep("fd00:244::1")),
				slice("ns", "web-v4", "web", discovery.AddressTypeIPv4, httpPorts(8080), ep("10.244.0.1")),
			},
			wantPorts: []svc.Port{port("ns", "web", "http", svc.TCP, 80, "10.96.0.10")},
			wantEPs:   map[svc.PortName][]svc.Endpoint{pn("ns", "web", "http"): {readyEP("10.244.0.1:8080")}},
		},
		"IPv6-only service on an IPv4 node skipped": {
			opts: Options{NodeName: me},
			objs: []runtime.Object{v4node, service("ns", "web6", withClusterIPs("fd00:96::10"))},
		},
		"affinity, NodePort, externalIPs and LB IPs carried through": {
			objs: []runtime.Object{
				service("ns", "lb", func(s *v1.Service) {
					s.Spec.Type = v1.ServiceTypeLoadBalancer
					s.Spec.Ports[0].NodePort = 30080
					s.Spec.ExternalIPs = []string{"203.0.113.7"}
					s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
					s.Spec.LoadBalancerSourceRanges = []string{"192.0.2.0/24", "2001:db8::/32"}
					s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{
						{IP: "198.51.100.1"}, {Hostname: "lb.example.com"},
						{IP: "198.51.100.2", IPMode: ptr.To(v1.LoadBalancerIPModeProxy)},
					}
				}),
				service("ns", "short", withClusterIPs("10.96.0.11"), func(s *v1.Service) {
					s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
					s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
				}),
			},
			wantPorts: []svc.Port{
				{
					Name: pn("ns", "lb", "http"), Protocol: svc.TCP, Port: 80, NodePort: 30080,
					ClusterIPs: addrs("10.96.0.10"), ExternalIPs: addrs("203.0.113.7"), LoadBalancerIPs: addrs("198.51.100.1"),
					Affinity: svc.Affinity{ClientIP: true, Timeout: 10800 * time.Second},
					// Both families: a range list of the other family only
					// must still restrict (iptables/ admits nobody then).
					LoadBalancerSourceRanges: prefixes("192.0.2.0/24", "2001:db8::/32"),
				},
				{
					Name: pn("ns", "short", "http"), Protocol: svc.TCP, Port: 80, ClusterIPs: addrs("10.96.0.11"),
					Affinity: svc.Affinity{ClientIP: true, Timeout: time.Minute},
				},
			},
		},
		"bad endpoint input skipped, the rest kept": {
			objs: []runtime.Object{
				service("ns", "web"),
				slice("ns", "web-1", "web", discovery.AddressTypeIPv4, []discovery.EndpointPort{
					eport("http", 8080, v1.ProtocolTCP),
					eport("zero", 0, v1.ProtocolTCP),
					eport("big", 65536, v1.ProtocolTCP),
					{Name: ptr.To("nil")},
				},
					ep("10.244.0.1"), ep("not-an-ip"), ep("10.244.0.1"), ep("fd00::1"), ep("0.0.0.0"),
					ep("fe80::1%eth0"), discovery.Endpoint{}, ep("10.244.0.2")),
				slice("ns", "web-2", "web", discovery.AddressType("bogus"), httpPorts(8080), ep("10.244.0.3")),
			},
			wantPorts: []svc.Port{httpPort("ns", "web")},
			wantEPs: map[svc.PortName][]svc.Endpoint{pn("ns", "web", "http"): {
				readyEP("10.244.0.1:8080"), readyEP("10.244.0.2:8080"),
			}},
		},
		"bad service ports skipped, the rest kept": {
			objs: []runtime.Object{
				service("ns", "web", withClusterIPs("bogus", "10.96.0.10"), withPorts(
					v1.ServicePort{Name: "zero", Port: 0},
					v1.ServicePort{Name: "big", Port: 70000},
					v1.ServicePort{Name: "sctp", Port: 9, Protocol: v1.ProtocolSCTP},
					v1.ServicePort{Name: "http", Port: 80},
					v1.ServicePort{Name: "http", Port: 81},
				)),
			},
			wantPorts: []svc.Port{httpPort("ns", "web")},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t, tc.opts, tc.objs...)
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

// TestBadInputLogLine: each skipped value is one warning naming the object,
// the field and the value.
func TestBadInputLogLine(t *testing.T) {
	var buf syncBuffer
	log := zerolog.New(&buf)
	es := slice("shop", "cart-x1", "cart", discovery.AddressTypeIPv4, httpPorts(65536), ep("10.0.0.1"), ep("300.1.2.3"))
	convertSlice(es, "", log)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []map[string]string{
		{"endpointslice": "shop/cart-x1", "field": "ports[0].port", "value": "65536", "level": "warn"},
		{"endpointslice": "shop/cart-x1", "field": "endpoints[1].addresses[0]", "value": "300.1.2.3", "level": "warn"},
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d log lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, l := range lines {
		var got map[string]any
		if err := json.Unmarshal([]byte(l), &got); err != nil {
			t.Fatal(err)
		}
		for k, v := range want[i] {
			if got[k] != v {
				t.Errorf("line %d: %s = %v, want %q (%s)", i, k, got[k], v, l)
			}
		}
	}
}
