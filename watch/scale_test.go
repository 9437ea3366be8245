package watch

import (
	"fmt"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
)

// TestLargeService: 5,000 endpoints over 50 slices of one service, plus a
// service with 100 ports, all delivered.
func TestLargeService(t *testing.T) {
	objs := []runtime.Object{service("ns", "big")}
	for s := range 50 {
		var eps []discovery.Endpoint
		for i := range 100 {
			n := s*100 + i
			eps = append(eps, ep(fmt.Sprintf("10.%d.%d.%d", 100+n/65536, (n/256)%256, n%256)))
		}
		objs = append(objs, slice("ns", fmt.Sprintf("big-%02d", s), "big", discovery.AddressTypeIPv4, httpPorts(8080), eps...))
	}
	// The first 100 addresses again, terminating (pods moving between
	// slices): de-duplicated, the ready copies kept.
	dup := objs[1].(*discovery.EndpointSlice).DeepCopy()
	dup.Name = "big-0-dup" // sorts first: the terminating copies are seen before the ready ones
	for i := range dup.Endpoints {
		dup.Endpoints[i].Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
	}
	objs = append(objs, dup)
	var sp []v1.ServicePort
	var slicePorts []discovery.EndpointPort
	for i := range 100 {
		name := fmt.Sprintf("p%03d", i)
		sp = append(sp, v1.ServicePort{Name: name, Protocol: v1.ProtocolTCP, Port: int32(1000 + i)})
		slicePorts = append(slicePorts, eport(name, int32(2000+i), v1.ProtocolTCP))
	}
	objs = append(objs,
		service("ns", "wide", withClusterIPs("10.96.0.11"), withPorts(sp...)),
		slice("ns", "wide-1", "wide", discovery.AddressTypeIPv4, slicePorts, ep("10.244.0.1"), ep("10.244.0.2")),
	)
	w := newWorld(t, Options{}, objs...)
	w.synced(t)
	ports, eps, _, _ := w.sink.snapshot()
	if len(ports) != 101 {
		t.Fatalf("%d ports, want 101", len(ports))
	}
	big := eps[pn("ns", "big", "http")]
	if len(big) != 5000 {
		t.Fatalf("%d endpoints for the big service, want 5000", len(big))
	}
	seen := make(map[netip.AddrPort]bool, len(big))
	for _, e := range big {
		if seen[e.Addr] {
			t.Fatalf("duplicate endpoint %v", e.Addr)
		}
		seen[e.Addr] = true
		if !e.Ready || e.Terminating {
			t.Fatalf("terminating duplicate won over the ready endpoint: %+v", e)
		}
	}
	for i := range 100 {
		got := eps[pn("ns", "wide", fmt.Sprintf("p%03d", i))]
		if len(got) != 2 || got[0].Addr.Port() != uint16(2000+i) {
			t.Fatalf("wide port %d: endpoints %v", i, got)
		}
	}
}
