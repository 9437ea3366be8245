package watch

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

// benchObjects returns n services with one slice of 3 endpoints each.
func benchObjects(n int) []runtime.Object {
	objs := make([]runtime.Object, 0, 2*n)
	for i := range n {
		name := fmt.Sprintf("svc-%04d", i)
		objs = append(objs,
			service("bench", name, withClusterIPs(fmt.Sprintf("10.96.%d.%d", i/256, i%256))),
			slice("bench", name+"-1", name, discovery.AddressTypeIPv4, httpPorts(8080),
				ep(fmt.Sprintf("10.244.%d.%d", i/64, (i%64)*3+1)),
				ep(fmt.Sprintf("10.244.%d.%d", i/64, (i%64)*3+2)),
				ep(fmt.Sprintf("10.244.%d.%d", i/64, (i%64)*3+3))))
	}
	return objs
}

// BenchmarkFullSync: 1000 services x 3 endpoints to the first SyncPorts.
// "informers" starts from a fake clientset (list, watch, handlers,
// conversion, merge, sink); "tracker" starts from the handlers.
func BenchmarkFullSync(b *testing.B) {
	const n = 1000
	objs := benchObjects(n)
	b.Run("informers", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			client := fake.NewSimpleClientset(objs...) //nolint:staticcheck // lighter than NewClientset, see below
			sink := newRecordSink()
			tr := NewTracker(Options{}, zerolog.Nop())
			r := NewRunner(tr, sink, Options{}, zerolog.Nop())
			src := NewKubeSource(client, Options{}, zerolog.Nop())
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			b.StartTimer()
			wg.Go(func() { _ = src.Run(ctx, tr) })
			wg.Go(func() { _ = r.Run(ctx) })
			sink.waitFor(b, "full sync", func(s *recordSink) bool { return s.syncCalls == 1 })
			b.StopTimer()
			if len(sink.ports) != n || len(sink.eps) != n {
				b.Fatalf("synced %d ports, %d endpoint sets", len(sink.ports), len(sink.eps))
			}
			cancel()
			wg.Wait()
			b.StartTimer()
		}
	})
	b.Run("tracker", func(b *testing.B) {
		for b.Loop() {
			sink := newRecordSink()
			tr := NewTracker(Options{}, zerolog.Nop())
			r := NewRunner(tr, sink, Options{}, zerolog.Nop())
			for _, o := range objs {
				switch o := o.(type) {
				case *discovery.EndpointSlice:
					tr.OnEndpointSliceAdd(o)
				default:
					tr.OnServiceAdd(o.(*v1.Service))
				}
			}
			tr.SetSynced()
			r.start(b.Context())
			if len(sink.ports) != n || len(sink.eps) != n {
				b.Fatalf("synced %d ports, %d endpoint sets", len(sink.ports), len(sink.eps))
			}
		}
	})
}

// BenchmarkEndpointChangeLatency: with 1000 services x 3 endpoints synced,
// one EndpointSlice update in the fake API server until the sink's
// UpdateEndpoints has it (watch, informer, handler, runner, sink).
func BenchmarkEndpointChangeLatency(b *testing.B) {
	const n = 1000
	// NewSimpleClientset: NewClientset's field-managed tracker spends ~2 ms
	// per Update building a REST mapper, which would hide what we measure.
	w := newWorldClient(b, Options{}, fake.NewSimpleClientset(benchObjects(n)...)) //nolint:staticcheck // see above
	w.synced(b)
	before := histogram(b, w.runner.m.programming)
	ctx := context.Background()
	slices := w.client.DiscoveryV1().EndpointSlices("bench")
	i := 0
	for b.Loop() {
		svcIdx := i % n
		name := fmt.Sprintf("svc-%04d", svcIdx)
		es, err := slices.Get(ctx, name+"-1", metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		newAddr := fmt.Sprintf("10.250.%d.%d", (i/256)%256, i%256)
		es.Endpoints[0].Addresses = []string{newAddr}
		if _, err := slices.Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		port := pn("bench", name, "http")
		w.sink.waitFor(b, "endpoint change", func(s *recordSink) bool {
			for _, e := range s.eps[port] {
				if e.Addr.Addr().String() == newAddr {
					return true
				}
			}
			return false
		})
		i++
	}
	// The loop's own share, from the handler recording the event to the
	// sink having applied it (kubeproxy_network_programming_duration_seconds).
	after := histogram(b, w.runner.m.programming)
	if n := after.GetSampleCount() - before.GetSampleCount(); n > 0 {
		b.ReportMetric((after.GetSampleSum()-before.GetSampleSum())/float64(n)*1e9, "ns-handler-to-sink/op")
	}
	_, _, syncs, _ := w.sink.snapshot()
	if syncs != 1 {
		b.Fatalf("endpoint changes called SyncPorts %d times", syncs-1)
	}
}
