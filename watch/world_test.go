package watch

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/uproxy/uproxy/svc"
)

// waitDeadline is generous: tests wait for an observed change, never sleep.
const waitDeadline = 20 * time.Second

// recordSink is a svc.Sink that keeps what it was told, merging endpoint
// updates as the proxy does.
type recordSink struct {
	mu        sync.Mutex // guards everything below
	ports     []svc.Port
	eps       map[svc.PortName][]svc.Endpoint
	syncCalls int
	portCount []int // len(ports) of every SyncPorts
	epCalls   int
	epUpdates []map[svc.PortName][]svc.Endpoint
	syncErr   error // returned by SyncPorts while set
	changed   chan struct{}
}

var _ svc.Sink = (*recordSink)(nil)

func newRecordSink() *recordSink {
	return &recordSink{eps: make(map[svc.PortName][]svc.Endpoint), changed: make(chan struct{}, 1)}
}

func (s *recordSink) SyncPorts(_ context.Context, ports []svc.Port) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.signal()
	s.syncCalls++
	s.portCount = append(s.portCount, len(ports))
	if s.syncErr != nil {
		return s.syncErr
	}
	s.ports = ports
	return nil
}

func (s *recordSink) UpdateEndpoints(eps map[svc.PortName][]svc.Endpoint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.signal()
	s.epCalls++
	s.epUpdates = append(s.epUpdates, eps)
	for pn, l := range eps {
		if len(l) == 0 {
			delete(s.eps, pn)
		} else {
			s.eps[pn] = l
		}
	}
}

func (s *recordSink) signal() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// waitFor waits until cond (called with s.mu held) holds.
func (s *recordSink) waitFor(t testing.TB, what string, cond func(s *recordSink) bool) {
	t.Helper()
	deadline := time.NewTimer(waitDeadline)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ok := cond(s)
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-s.changed:
		case <-deadline.C:
			s.mu.Lock()
			defer s.mu.Unlock()
			t.Fatalf("timed out waiting for %s; sink has %d ports, endpoints %v (sync calls %d, endpoint calls %d)",
				what, len(s.ports), s.eps, s.syncCalls, s.epCalls)
		}
	}
}

func (s *recordSink) snapshot() (ports []svc.Port, eps map[svc.PortName][]svc.Endpoint, syncCalls, epCalls int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	eps = make(map[svc.PortName][]svc.Endpoint, len(s.eps))
	for k, v := range s.eps {
		eps[k] = v
	}
	return slices.Clone(s.ports), eps, s.syncCalls, s.epCalls
}

// world runs a KubeSource over a fake clientset, a Tracker and a Runner
// feeding a recordSink; everything stops at test cleanup.
type world struct {
	client  *fake.Clientset
	tracker *Tracker
	runner  *Runner
	sink    *recordSink
}

func testLogger(t testing.TB) zerolog.Logger {
	level := zerolog.InfoLevel
	if _, bench := t.(*testing.B); bench {
		level = zerolog.WarnLevel
	}
	return zerolog.New(zerolog.NewTestWriter(t)).Level(level)
}

func newWorld(t testing.TB, opts Options, objs ...runtime.Object) *world {
	t.Helper()
	return newWorldClient(t, opts, fake.NewClientset(objs...))
}

// newWorldClient is newWorld with a given fake clientset.
func newWorldClient(t testing.TB, opts Options, client *fake.Clientset) *world {
	t.Helper()
	w := runWorld(t, opts, NewKubeSource(client, opts, testLogger(t)))
	w.client = client
	return w
}

// runWorld runs src, a tracker and a runner until the test ends.
func runWorld(t testing.TB, opts Options, src Source) *world {
	t.Helper()
	w := &world{sink: newRecordSink()}
	log := testLogger(t)
	w.tracker = NewTracker(opts, log)
	w.runner = NewRunner(w.tracker, w.sink, opts, log)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() { errs <- src.Run(ctx, w.tracker) })
	wg.Go(func() { errs <- w.runner.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("run: %v", err)
			}
		}
	})
	return w
}

// synced waits for the first full sync.
func (w *world) synced(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(waitDeadline)
	for !w.runner.Health().Synced {
		if time.Now().After(deadline) {
			t.Fatal("runner never synced")
		}
		time.Sleep(time.Millisecond)
	}
}

// Object builders. Defaults: ClusterIP 10.96.0.10, one TCP port "http" 80.

func service(ns, name string, mods ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports:      []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}},
		},
	}
	for _, m := range mods {
		m(s)
	}
	return s
}

func withClusterIPs(ips ...string) func(*v1.Service) {
	return func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = ips[0], ips }
}

func withPorts(ports ...v1.ServicePort) func(*v1.Service) {
	return func(s *v1.Service) { s.Spec.Ports = ports }
}

func withLabel(k, v string) func(*v1.Service) {
	return func(s *v1.Service) {
		if s.Labels == nil {
			s.Labels = map[string]string{}
		}
		s.Labels[k] = v
	}
}

func slice(ns, name, svcName string, typ discovery.AddressType, ports []discovery.EndpointPort, eps ...discovery.Endpoint) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discovery.LabelServiceName: svcName}},
		AddressType: typ,
		Ports:       ports,
		Endpoints:   eps,
	}
}

func eport(name string, port int32, proto v1.Protocol) discovery.EndpointPort {
	return discovery.EndpointPort{Name: ptr.To(name), Port: ptr.To(port), Protocol: ptr.To(proto)}
}

func httpPorts(port int32) []discovery.EndpointPort {
	return []discovery.EndpointPort{eport("http", port, v1.ProtocolTCP)}
}

type epMod func(*discovery.Endpoint)

func ep(addr string, mods ...epMod) discovery.Endpoint {
	e := discovery.Endpoint{Addresses: []string{addr}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}}
	for _, m := range mods {
		m(&e)
	}
	return e
}

func conds(ready, serving, terminating *bool) epMod {
	return func(e *discovery.Endpoint) {
		e.Conditions = discovery.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating}
	}
}

func onNode(n string) epMod { return func(e *discovery.Endpoint) { e.NodeName = ptr.To(n) } }

func node(name string, addrs ...string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}}}
	for _, a := range addrs {
		n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: a})
	}
	return n
}

// Expected-value helpers.

func pn(ns, name, port string) svc.PortName {
	return svc.PortName{Namespace: ns, Name: name, Port: port}
}

// pn6 is the IPv6 port of a dual-stack (or IPv6) service.
func pn6(ns, name, port string) svc.PortName {
	return svc.PortName{Namespace: ns, Name: name, Port: port, Family: svc.IPv6}
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// wantEP is an expected endpoint: "ip:port" plus conditions.
func readyEP(ap string) svc.Endpoint {
	return svc.Endpoint{Addr: netip.MustParseAddrPort(ap), Ready: true, Serving: true}
}

func termEP(ap string) svc.Endpoint {
	return svc.Endpoint{Addr: netip.MustParseAddrPort(ap), Serving: true, Terminating: true}
}

func withNode(e svc.Endpoint, n string) svc.Endpoint { e.NodeName = n; return e }
