package watch

import (
	"context"
	"maps"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/uproxy/uproxy/svc"
)

// TestTrackerChanges checks the (previous, current) bookkeeping of the
// handlers, as Kubernetes pkg/proxy's change trackers do it.
func TestTrackerChanges(t *testing.T) {
	a := service("ns", "web")
	b := service("ns", "web", withPorts(v1.ServicePort{Name: "http", Port: 81}))
	c := service("ns", "web", withPorts(v1.ServicePort{Name: "http", Port: 82}))
	sa := slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080), ep("10.244.0.1"))
	sb := slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080), ep("10.244.0.2"))
	sc := slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080), ep("10.244.0.3"))
	webKey := types.NamespacedName{Namespace: "ns", Name: "web"}
	sliceKey := types.NamespacedName{Namespace: "ns", Name: "web-1"}
	nop := zerolog.Nop()
	cases := map[string]struct {
		do           func(tr *Tracker)
		wantServices map[types.NamespacedName][2]*serviceInfo // previous, current
		wantSlices   map[types.NamespacedName][2]*sliceInfo
	}{
		"service add+delete cancels": {
			do: func(tr *Tracker) { tr.OnServiceAdd(a); tr.OnServiceDelete(a) },
		},
		"slice add+delete cancels": {
			do: func(tr *Tracker) { tr.OnEndpointSliceAdd(sa); tr.OnEndpointSliceDelete(sa) },
		},
		"service update+update keeps the oldest previous": {
			do: func(tr *Tracker) { tr.OnServiceUpdate(a, b); tr.OnServiceUpdate(b, c) },
			wantServices: map[types.NamespacedName][2]*serviceInfo{
				webKey: {convertService(a, "", nop), convertService(c, "", nop)},
			},
		},
		"slice update+update keeps the oldest previous": {
			do: func(tr *Tracker) { tr.OnEndpointSliceUpdate(sa, sb); tr.OnEndpointSliceUpdate(sb, sc) },
			wantSlices: map[types.NamespacedName][2]*sliceInfo{
				sliceKey: {convertSlice(sa, "", nop), convertSlice(sc, "", nop)},
			},
		},
		"update and back cancels": {
			do: func(tr *Tracker) {
				tr.OnServiceUpdate(a, b)
				tr.OnServiceUpdate(b, a)
				tr.OnEndpointSliceUpdate(sa, sb)
				tr.OnEndpointSliceUpdate(sb, sa)
			},
		},
		"metadata-only update is no change": {
			do: func(tr *Tracker) {
				a2 := a.DeepCopy()
				a2.Annotations = map[string]string{"note": "x"}
				tr.OnServiceUpdate(a, a2)
			},
		},
		"resync of the same version is no change": {
			do: func(tr *Tracker) {
				x := a.DeepCopy()
				x.ResourceVersion = "7"
				y := b.DeepCopy() // a different spec, but the same version: a resync can't differ
				y.ResourceVersion = "7"
				tr.OnServiceUpdate(x, y)
			},
		},
		"add then update is one add": {
			do: func(tr *Tracker) { tr.OnServiceAdd(a); tr.OnServiceUpdate(a, b) },
			wantServices: map[types.NamespacedName][2]*serviceInfo{
				webKey: {nil, convertService(b, "", nop)},
			},
		},
		"delete of a skipped service is no change": {
			do: func(tr *Tracker) { tr.OnServiceDelete(service("ns", "hl", withClusterIPs(v1.ClusterIPNone))) },
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			tr := NewTracker(Options{}, testLogger(t))
			tc.do(tr)
			p := tr.checkout()
			if len(p.services) != len(tc.wantServices) {
				t.Fatalf("service changes: got %d, want %d", len(p.services), len(tc.wantServices))
			}
			for k, want := range tc.wantServices {
				got := p.services[k]
				if got == nil || !got.previous.equal(want[0]) || !got.current.equal(want[1]) {
					t.Errorf("service %v: got %+v, want previous %+v current %+v", k, got, want[0], want[1])
				}
			}
			if len(p.slices) != len(tc.wantSlices) {
				t.Fatalf("slice changes: got %d, want %d", len(p.slices), len(tc.wantSlices))
			}
			for k, want := range tc.wantSlices {
				got := p.slices[k]
				if got == nil || !got.previous.equal(want[0]) || !got.current.equal(want[1]) {
					t.Errorf("slice %v: got %+v, want previous %+v current %+v", k, got, want[0], want[1])
				}
			}
		})
	}
}

func TestTrackerNode(t *testing.T) {
	tr := NewTracker(Options{NodeName: "me"}, testLogger(t))
	tr.OnNodeAdd(node("other", "10.0.0.9"))
	if got := tr.Node(); len(got.Addresses) != 0 || got.Name != "me" {
		t.Fatalf("another node was recorded: %+v", got)
	}
	n := node("me", "192.168.0.1")
	n.Status.Addresses = append([]v1.NodeAddress{
		{Type: v1.NodeExternalIP, Address: "203.0.113.1"},
		{Type: v1.NodeHostName, Address: "me"},
		{Type: v1.NodeInternalIP, Address: "bogus"},
	}, n.Status.Addresses...)
	tr.OnNodeAdd(n)
	want := NodeInfo{Name: "me", Addresses: addrs("192.168.0.1", "203.0.113.1"), Zone: "zone-a"}
	if got := tr.Node(); !got.equal(want) {
		t.Fatalf("node: got %+v, want %+v", got, want)
	}
	d := n.DeepCopy()
	d.DeletionTimestamp = &metav1.Time{Time: time.Unix(1, 0)}
	tr.OnNodeUpdate(n, d)
	if !tr.Node().Deleting {
		t.Fatal("deletionTimestamp not reported as Deleting")
	}
	if !tr.checkout().nodeChanged {
		t.Fatal("node change not recorded")
	}
}

// TestChangesThroughInformers changes objects in the fake API server while
// the loop runs.
func TestChangesThroughInformers(t *testing.T) {
	ctx := context.Background()
	web := service("ns", "web")
	webSlice := slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080), ep("10.244.0.1"))
	other := service("ns", "other", withClusterIPs("10.96.0.20"))
	otherSlice := slice("ns", "other-1", "other", discovery.AddressTypeIPv4, httpPorts(9000), ep("10.244.5.1"))
	// Rule changes only every hour: the only SyncPorts are the first one and
	// those the test waits for after stepping... so use MinSyncPeriod 0 and
	// count calls instead.
	w := newWorld(t, Options{MinSyncPeriod: 0, SyncPeriod: time.Hour}, web, webSlice, other, otherSlice)
	w.synced(t)
	_, _, syncs0, _ := w.sink.snapshot()

	t.Run("endpoint-only change never calls SyncPorts", func(t *testing.T) {
		s := webSlice.DeepCopy()
		s.Endpoints = append(s.Endpoints, ep("10.244.0.2"))
		if _, err := w.client.DiscoveryV1().EndpointSlices("ns").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		w.sink.waitFor(t, "two web endpoints", func(s *recordSink) bool { return len(s.eps[pn("ns", "web", "http")]) == 2 })
		// A second endpoint change as a barrier: when it is seen, the pass
		// that applied the first one has ended.
		o := otherSlice.DeepCopy()
		o.Endpoints[0].Conditions.Ready = ptr.To(false)
		o.Endpoints[0].Conditions.Serving = ptr.To(true)
		o.Endpoints[0].Conditions.Terminating = ptr.To(true)
		if _, err := w.client.DiscoveryV1().EndpointSlices("ns").Update(ctx, o, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		w.sink.waitFor(t, "other endpoint terminating", func(s *recordSink) bool {
			l := s.eps[pn("ns", "other", "http")]
			return len(l) == 1 && l[0].Terminating
		})
		if _, _, syncs, _ := w.sink.snapshot(); syncs != syncs0 {
			t.Fatalf("SyncPorts called %d times for endpoint-only changes", syncs-syncs0)
		}
	})

	t.Run("service port change syncs ports and moves endpoints", func(t *testing.T) {
		s := web.DeepCopy()
		s.Spec.Ports = []v1.ServicePort{{Name: "web", Protocol: v1.ProtocolTCP, Port: 8000}}
		if _, err := w.client.CoreV1().Services("ns").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		es := webSlice.DeepCopy()
		es.Ports = []discovery.EndpointPort{eport("web", 8080, v1.ProtocolTCP)}
		es.Endpoints = append(es.Endpoints, ep("10.244.0.2"))
		if _, err := w.client.DiscoveryV1().EndpointSlices("ns").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		w.sink.waitFor(t, "port renamed", func(s *recordSink) bool {
			return slices.ContainsFunc(s.ports, func(p svc.Port) bool { return p.Name == pn("ns", "web", "web") && p.Port == 8000 }) &&
				!slices.ContainsFunc(s.ports, func(p svc.Port) bool { return p.Name == pn("ns", "web", "http") }) &&
				len(s.eps[pn("ns", "web", "web")]) == 2 && s.eps[pn("ns", "web", "http")] == nil
		})
		w.sink.mu.Lock()
		defer w.sink.mu.Unlock()
		cleared := false
		for _, u := range w.sink.epUpdates {
			if l, ok := u[pn("ns", "web", "http")]; ok && l == nil {
				cleared = true
			}
		}
		if !cleared {
			t.Error("the old port's endpoints were never cleared with a nil list")
		}
	})

	t.Run("service delete clears its ports and endpoints", func(t *testing.T) {
		if err := w.client.CoreV1().Services("ns").Delete(ctx, "other", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		w.sink.waitFor(t, "other gone", func(s *recordSink) bool {
			_, has := s.eps[pn("ns", "other", "http")]
			return !has && !slices.ContainsFunc(s.ports, func(p svc.Port) bool { return p.Name.Name == "other" })
		})
	})
}

// TestNoCacheMutation checks, like Kubernetes' cacheMutationCheck, that
// handling objects never modifies them: deep copies taken before are
// compared after the runner applied them.
func TestNoCacheMutation(t *testing.T) {
	objs := []any{
		service("ns", "web", withClusterIPs("fd00::10", "10.96.0.10"), func(s *v1.Service) {
			s.Spec.ExternalIPs = []string{"203.0.113.9", "203.0.113.1", "bogus", "203.0.113.1"}
			s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53})
		}),
		slice("ns", "web-b", "web", discovery.AddressTypeIPv4, []discovery.EndpointPort{eport("http", 8080, v1.ProtocolTCP), {Name: ptr.To("dns")}},
			ep("10.244.0.9"), ep("10.244.0.1", conds(nil, nil, nil)), ep("::ffff:10.244.0.3"), ep("10.244.0.1")),
		slice("ns", "web-a", "web", discovery.AddressTypeIPv6, httpPorts(8080), ep("fd00::9"), ep("fd00::1", onNode("me"))),
		node("me", "fd00::1", "192.168.0.1"),
	}
	originals := make([]any, len(objs))
	for i, o := range objs {
		originals[i] = reflect.ValueOf(o).MethodByName("DeepCopy").Call(nil)[0].Interface()
	}

	sink := newRecordSink()
	tr := NewTracker(Options{NodeName: "me"}, testLogger(t))
	r := NewRunner(tr, sink, Options{NodeName: "me"}, testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	for _, o := range objs {
		switch o := o.(type) {
		case *v1.Service:
			tr.OnServiceAdd(o)
		case *discovery.EndpointSlice:
			tr.OnEndpointSliceAdd(o)
		case *v1.Node:
			tr.OnNodeAdd(o)
		}
	}
	tr.SetSynced()
	sink.waitFor(t, "endpoints", func(s *recordSink) bool { return s.syncCalls > 0 && len(s.eps) > 0 })
	// Update and delete with the same objects as previous.
	tr.OnServiceUpdate(objs[0].(*v1.Service), objs[0].(*v1.Service))
	tr.OnEndpointSliceDelete(objs[1].(*discovery.EndpointSlice))
	sink.waitFor(t, "slice removed", func(s *recordSink) bool {
		return !slices.ContainsFunc(slices.Collect(maps.Values(s.eps)), func(l []svc.Endpoint) bool { return l[0].Addr.Addr().Is4() })
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i := range objs {
		if !reflect.DeepEqual(objs[i], originals[i]) {
			t.Errorf("object %d was modified:\n now    %+v\n before %+v", i, objs[i], originals[i])
		}
	}
}

func TestHealthNodeDeleting(t *testing.T) {
	n := node("me", "192.168.0.1")
	w := newWorld(t, Options{NodeName: "me"}, n)
	w.synced(t)
	h := w.runner.Health()
	if h.NodeName != "me" || h.NodeDeleting || !h.Synced || h.LastUpdated.IsZero() || !h.QueuedSince.IsZero() {
		t.Fatalf("health after sync: %+v", h)
	}
	if got := w.tracker.Node(); !slices.Equal(got.Addresses, addrs("192.168.0.1")) || got.Zone != "zone-a" {
		t.Fatalf("Node() %+v", got)
	}
	d := n.DeepCopy()
	d.DeletionTimestamp = ptr.To(metav1.Now())
	if _, err := w.client.CoreV1().Nodes().Update(context.Background(), d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitDeadline)
	for !w.runner.Health().NodeDeleting {
		if time.Now().After(deadline) {
			t.Fatal("node deletion never reported")
		}
		time.Sleep(time.Millisecond)
	}
}
