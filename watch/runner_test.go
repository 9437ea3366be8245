package watch

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	discovery "k8s.io/api/discovery/v1"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/uproxy/uproxy/svc"
)

// steppedLoop drives a Runner by hand with a fake clock: no goroutine, so
// the test decides exactly when a pass runs and what time it is.
type steppedLoop struct {
	clk  *testingclock.FakeClock
	tr   *Tracker
	r    *Runner
	sink *recordSink
	ctx  context.Context
}

func newSteppedLoop(t *testing.T, opts Options) *steppedLoop {
	clk := testingclock.NewFakeClock(time.Unix(1_700_000_000, 0))
	l := &steppedLoop{clk: clk, sink: newRecordSink(), ctx: t.Context()}
	l.tr = newTracker(opts, testLogger(t), clk)
	l.r = NewRunner(l.tr, l.sink, opts, testLogger(t))
	return l
}

func (l *steppedLoop) counts() (syncs, epCalls int) {
	_, _, s, e := l.sink.snapshot()
	return s, e
}

func (l *steppedLoop) expect(t *testing.T, step string, wantSyncs, wantEP int) {
	t.Helper()
	if s, e := l.counts(); s != wantSyncs || e != wantEP {
		t.Fatalf("%s: SyncPorts %d, UpdateEndpoints %d; want %d, %d", step, s, e, wantSyncs, wantEP)
	}
}

func TestRunnerRateLimit(t *testing.T) {
	opts := Options{MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second}
	l := newSteppedLoop(t, opts)
	l.tr.SetSynced()
	l.r.start(l.ctx)
	l.expect(t, "initial", 1, 0)
	if d := l.r.nextDelay(l.clk.Now()); d != 30*time.Second {
		t.Fatalf("idle delay %v, want the sync period", d)
	}

	// The first sync spent one of the two tokens: the next change is
	// applied at once, the one after it waits for the min interval.
	l.tr.OnServiceAdd(service("ns", "a"))
	l.r.pass(l.ctx, false)
	l.expect(t, "a change right after the first sync", 2, 0)
	l.tr.OnServiceAdd(service("ns", "b", withClusterIPs("10.96.0.11")))
	l.r.pass(l.ctx, false)
	l.expect(t, "a third sync within the min interval", 2, 0)
	if d := l.r.nextDelay(l.clk.Now()); d != time.Second {
		t.Fatalf("delay with a queued rule change %v, want the min sync period", d)
	}
	if h := l.r.Health(); !h.QueuedSince.Equal(l.clk.Now()) {
		t.Fatalf("QueuedSince %v, want %v", h.QueuedSince, l.clk.Now())
	}

	// Endpoints are not rate limited, even while a rule change waits.
	l.tr.OnEndpointSliceAdd(slice("ns", "a-1", "a", discovery.AddressTypeIPv4, httpPorts(8080), ep("10.244.0.1")))
	l.r.pass(l.ctx, false)
	l.expect(t, "endpoint change", 2, 1)

	l.clk.Step(999 * time.Millisecond)
	l.r.pass(l.ctx, false)
	l.expect(t, "before the min interval", 2, 1)

	l.clk.Step(time.Millisecond)
	l.r.pass(l.ctx, false)
	l.expect(t, "at the min interval", 3, 1)
	ports, _, _, _ := l.sink.snapshot()
	if len(ports) != 2 {
		t.Fatalf("coalesced sync has %d ports, want 2", len(ports))
	}
	if h := l.r.Health(); !h.QueuedSince.IsZero() || !h.LastUpdated.Equal(l.clk.Now()) || !h.Synced {
		t.Fatalf("health after sync: %+v", h)
	}

	// Endpoint-only changes: many, no SyncPorts.
	for i := range 5 {
		l.tr.OnEndpointSliceUpdate(nil, slice("ns", "a-1", "a", discovery.AddressTypeIPv4, httpPorts(8080), ep("10.244.0.1"), ep("10.244.1."+string(rune('1'+i)))))
		l.r.pass(l.ctx, false)
	}
	l.expect(t, "endpoint-only changes", 3, 6)

	// Nothing changes: a full resync once per SyncPeriod.
	l.clk.Step(29 * time.Second)
	l.r.pass(l.ctx, false)
	l.expect(t, "before the sync period", 3, 6)
	l.clk.Step(time.Second)
	l.r.pass(l.ctx, false)
	l.expect(t, "periodic full sync", 4, 6)
}

func TestRunnerRetryBackoff(t *testing.T) {
	opts := Options{MinSyncPeriod: time.Second, SyncPeriod: 10 * time.Second}
	l := newSteppedLoop(t, opts)
	l.tr.SetSynced()
	l.sink.syncErr = errors.New("iptables-restore: exit status 4")
	l.r.start(l.ctx)
	l.expect(t, "failed initial sync", 1, 0)
	if h := l.r.Health(); h.Synced || h.QueuedSince.IsZero() {
		t.Fatalf("health after a failed first sync: %+v", h)
	}
	// Backoff 1s, 2s, 4s, 8s, then capped at the sync period.
	syncs := 1
	for _, wait := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second} {
		if d := l.r.nextDelay(l.clk.Now()); d != wait {
			t.Fatalf("retry %d: delay %v, want %v", syncs, d, wait)
		}
		// A change does not bypass the backoff.
		l.tr.OnServiceAdd(service("ns", "s"+time.Duration(syncs).String()))
		l.clk.Step(wait - time.Millisecond)
		l.r.pass(l.ctx, false)
		l.expect(t, "before the retry", syncs, 0)
		l.clk.Step(time.Millisecond)
		l.r.pass(l.ctx, false)
		syncs++
		l.expect(t, "retry", syncs, 0)
	}
	l.sink.mu.Lock()
	l.sink.syncErr = nil
	l.sink.mu.Unlock()
	l.clk.Step(10 * time.Second)
	l.r.pass(l.ctx, false)
	l.expect(t, "recovered", syncs+1, 0)
	if h := l.r.Health(); !h.Synced || !h.QueuedSince.IsZero() {
		t.Fatalf("health after recovery: %+v", h)
	}
	if d := l.r.nextDelay(l.clk.Now()); d != 10*time.Second {
		t.Fatalf("delay after recovery %v, want the sync period", d)
	}
	if got := testutil.ToFloat64(l.r.m.syncErrors); got != float64(syncs) {
		t.Fatalf("uproxy_sync_errors_total %v, want %d", got, syncs)
	}
}

func TestRunnerNodeFamilies(t *testing.T) {
	opts := Options{NodeName: "me", SyncPeriod: time.Hour}
	l := newSteppedLoop(t, opts)
	l.tr.OnServiceAdd(service("ns", "web", withClusterIPs("10.96.0.10", "fd00::10")))
	l.tr.OnEndpointSliceAdd(slice("ns", "web-4", "web", discovery.AddressTypeIPv4, httpPorts(80), ep("10.244.0.1")))
	l.tr.OnEndpointSliceAdd(slice("ns", "web-6", "web", discovery.AddressTypeIPv6, httpPorts(80), ep("fd00::1")))
	l.tr.OnNodeAdd(node("me", "192.168.0.1"))
	l.tr.SetSynced()
	l.r.start(l.ctx)
	ports, eps, _, _ := l.sink.snapshot()
	if len(ports) != 1 || !slices.Equal(ports[0].ClusterIPs, addrs("10.96.0.10")) || len(eps[pn("ns", "web", "http")]) != 1 {
		t.Fatalf("IPv4 node: ports %+v endpoints %v", ports, eps)
	}
	l.tr.OnNodeUpdate(nil, node("me", "192.168.0.1", "fd00::5"))
	l.r.pass(l.ctx, false)
	ports, eps, _, _ = l.sink.snapshot()
	if len(ports) != 2 || !slices.Equal(ports[0].ClusterIPs, addrs("10.96.0.10")) || !slices.Equal(ports[1].ClusterIPs, addrs("fd00::10")) ||
		ports[1].Name != pn6("ns", "web", "http") ||
		epList(eps[pn("ns", "web", "http")]) != "10.244.0.1:80" || epList(eps[pn6("ns", "web", "http")]) != "[fd00::1]:80" {
		t.Fatalf("dual-stack node: ports %+v endpoints %v", ports, eps)
	}
	if got := l.tr.Node(); !slices.Equal(got.Addresses, addrs("192.168.0.1", "fd00::5")) {
		t.Fatalf("Node() addresses %v", got.Addresses)
	}
}

// TestRunnerLoopTimer runs the real loop with a fake clock: a rule change
// right after the first sync is applied at once (burst), the next one when
// the clock reaches the min interval, with no other wake-up.
func TestRunnerLoopTimer(t *testing.T) {
	opts := Options{MinSyncPeriod: 5 * time.Second, SyncPeriod: time.Hour}
	l := newSteppedLoop(t, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	if h := l.r.Health(); h.Synced {
		t.Fatal("synced before the source was")
	}
	l.tr.SetSynced()
	l.sink.waitFor(t, "first sync", func(s *recordSink) bool { return s.syncCalls == 1 })
	l.tr.OnServiceAdd(service("ns", "web"))
	l.tr.OnEndpointSliceAdd(slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080), ep("10.244.0.1")))
	l.sink.waitFor(t, "burst sync", func(s *recordSink) bool { return len(s.eps) == 1 && s.syncCalls == 2 })
	l.tr.OnServiceAdd(service("ns", "db", withClusterIPs("10.96.0.11")))
	// No observable event says the loop has seen db's change; give it time
	// to (wrongly) sync it.
	time.Sleep(50 * time.Millisecond)
	if _, _, syncs, _ := l.sink.snapshot(); syncs != 2 {
		t.Fatalf("third rule change applied before the min interval (%d syncs)", syncs)
	}
	l.clk.Step(5 * time.Second)
	// The loop may still be finishing the endpoint pass when the clock
	// moves; it then arms its timer for "now", which a zero step fires.
	deadline := time.Now().Add(waitDeadline)
	for {
		if _, _, syncs, _ := l.sink.snapshot(); syncs == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("rule change not applied at the min interval")
		}
		time.Sleep(time.Millisecond)
		l.clk.Step(0)
	}
	if ports, _, _, _ := l.sink.snapshot(); len(ports) != 2 {
		t.Fatalf("ports after the timed sync: %+v", ports)
	}
}

func TestRunnerCollectors(t *testing.T) {
	l := newSteppedLoop(t, Options{})
	l.tr.SetSynced()
	l.r.start(l.ctx)
	l.tr.OnServiceAdd(service("ns", "web"))
	l.tr.OnEndpointSliceAdd(slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080), ep("10.244.0.1")))
	l.r.pass(l.ctx, false)
	reg := prometheus.NewPedanticRegistry()
	for _, c := range l.r.Collectors() {
		if err := reg.Register(c); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	for _, want := range []string{
		"kubeproxy_sync_proxy_rules_duration_seconds",
		"kubeproxy_sync_full_proxy_rules_duration_seconds",
		"kubeproxy_network_programming_duration_seconds",
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds",
		"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
		"kubeproxy_sync_proxy_rules_service_changes_total",
		"kubeproxy_sync_proxy_rules_endpoint_changes_total",
		"uproxy_sync_errors_total",
	} {
		if !slices.Contains(names, want) {
			t.Errorf("metric %s missing (have %s)", want, strings.Join(names, ", "))
		}
	}
	if n := testutil.CollectAndCount(l.r.m.programming); n != 1 {
		t.Errorf("network programming histogram has %d series", n)
	}
	// The rule change (ports) was observed at SyncPorts: one sample.
	if got := histogramCount(t, l.r.m.programming); got != 1 {
		t.Errorf("network programming samples %d, want 1", got)
	}
}

func histogramCount(t *testing.T, h prometheus.Histogram) uint64 {
	return histogram(t, h).GetSampleCount()
}

func histogram(t testing.TB, h prometheus.Histogram) *dto.Histogram {
	t.Helper()
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatalf("histogram: %v", err)
	}
	return m.GetHistogram()
}

// epList renders an endpoint list as "ip:port ip:port".
func epList(eps []svc.Endpoint) string {
	var out []string
	for _, e := range eps {
		out = append(out, e.String())
	}
	return strings.Join(out, " ")
}
