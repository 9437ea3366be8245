package watch

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/rs/zerolog"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/uproxy/uproxy/svc"
)

// FuzzDecodeManifest: any file content decodes without panicking, objects
// always have names, and whatever decodes also converts without panicking.
func FuzzDecodeManifest(f *testing.F) {
	f.Add([]byte(svcYAML + "---\n" + sliceYAML))
	f.Add([]byte(svcYAML + "---\nkind: [\n---\n" + sliceYAML))
	f.Add([]byte(`{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":80}]}}]}`))
	f.Add([]byte(`{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"}} {"apiVersion":"v1","kind":"Node","metadata":{"name":"n"},"status":{"addresses":[{"type":"InternalIP","address":"::1"}]}}`))
	f.Add([]byte("---\n# comment\n--- x\n..."))
	f.Add([]byte("a: &a [*a, *a]\nb: *a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		docs := decodeManifest(data)
		checkManifestObjects(t, docs)
		nop := zerolog.Nop()
		for _, d := range docs {
			for _, o := range d.objs {
				switch o := o.(type) {
				case *v1.Service:
					checkServiceInfo(t, convertService(o, "", nop))
				case *discovery.EndpointSlice:
					checkSliceInfo(t, convertSlice(o, "", nop))
				case *v1.Node:
					_ = nodeInfo(o)
				}
			}
		}
	})
}

// FuzzConvertEndpointSlice: any EndpointSlice (as JSON) converts without
// panicking into valid, duplicate-free endpoints, and merges into sorted,
// duplicate-free endpoint lists.
func FuzzConvertEndpointSlice(f *testing.F) {
	seed := func(es *discovery.EndpointSlice) {
		b, err := json.Marshal(es)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(slice("ns", "s", "web", discovery.AddressTypeIPv4, httpPorts(8080), ep("10.0.0.1"), ep("10.0.0.1"), ep("::1"), ep("bogus")))
	seed(slice("ns", "s", "web", discovery.AddressTypeIPv6, []discovery.EndpointPort{eport("http", 0, v1.ProtocolTCP), eport("http", 65536, v1.ProtocolUDP), {}},
		ep("fd00::1", onNode("me")), ep("::ffff:1.2.3.4"), ep("fe80::1%eth0"), ep("fd00::2", conds(nil, nil, nil))))
	f.Fuzz(func(t *testing.T, data []byte) {
		var es discovery.EndpointSlice
		if json.Unmarshal(data, &es) != nil {
			return
		}
		info := convertSlice(&es, "", zerolog.Nop())
		checkSliceInfo(t, info)
		if info == nil {
			return
		}
		var ports []svc.Port
		seen := map[string]bool{}
		for _, p := range info.ports {
			if seen[p.name] {
				continue
			}
			seen[p.name] = true
			ports = append(ports, svc.Port{Name: svc.PortName{Namespace: "ns", Name: info.service.Name, Port: p.name}, Protocol: p.proto,
				InternalLocal: len(ports)%2 == 1, NodePort: uint16(30000 + len(ports)%3),
				Traffic: svc.Traffic{ExternalLocal: len(ports)%3 == 0}})
		}
		ports = splitTraffic(ports)
		for pn, eps := range endpointsFor(ports, []*sliceInfo{info, info}, families{v4: true, v6: true}, trafficEnv{node: "me", zone: "zone-a"}) {
			for i, e := range eps {
				if !e.Addr.IsValid() || e.Addr.Port() == 0 {
					t.Fatalf("%v: invalid endpoint %v", pn, e)
				}
				if i > 0 && eps[i-1].Addr.Compare(e.Addr) >= 0 {
					t.Fatalf("%v: endpoints not sorted and unique: %v", pn, eps)
				}
			}
		}
	})
}

func checkServiceInfo(t *testing.T, info *serviceInfo) {
	t.Helper()
	if info == nil {
		return
	}
	names := map[string]bool{}
	for _, p := range info.ports {
		if p.Port == 0 || len(p.ClusterIPs) == 0 || (p.Protocol != svc.TCP && p.Protocol != svc.UDP) || names[p.Name.Port] {
			t.Fatalf("bad port %+v", p)
		}
		names[p.Name.Port] = true
		for _, a := range p.PortalAddrs() {
			if !a.IsValid() || a.Zone() != "" || a.Is4In6() || a.IsUnspecified() {
				t.Fatalf("bad address %v in %+v", a, p)
			}
		}
	}
}

func checkSliceInfo(t *testing.T, info *sliceInfo) {
	t.Helper()
	if info == nil {
		return
	}
	for _, p := range info.ports {
		if p.port == 0 || (p.proto != svc.TCP && p.proto != svc.UDP) {
			t.Fatalf("bad slice port %+v", p)
		}
	}
	seen := map[netip.Addr]bool{}
	for _, e := range info.eps {
		if !e.addr.IsValid() || e.addr.Is6() != info.v6 || e.addr.Zone() != "" || e.addr.Is4In6() || seen[e.addr] {
			t.Fatalf("bad endpoint %+v (v6 slice %v)", e, info.v6)
		}
		seen[e.addr] = true
		if !e.ready && !(e.serving && e.terminating) {
			t.Fatalf("endpoint that may not get connections passed: %+v", e)
		}
	}
}
