package watch

import (
	"context"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/uproxy/uproxy/svc"
)

// gatedSource runs src only once open is closed: an API server that is
// unreachable until then.
type gatedSource struct {
	open chan struct{}
	src  Source
}

func (g gatedSource) Run(ctx context.Context, t *Tracker) error {
	select {
	case <-ctx.Done():
		return nil
	case <-g.open:
	}
	return g.src.Run(ctx, t)
}

// portNames returns the sorted names of ports.
func portNames(ports []svc.Port) []string {
	out := make([]string, len(ports))
	for i, p := range ports {
		out[i] = p.Name.String()
	}
	sort.Strings(out)
	return out
}

// epAddrs renders endpoint sets as name → addresses.
func epAddrs(eps map[svc.PortName][]svc.Endpoint) map[string][]string {
	out := make(map[string][]string, len(eps))
	for pn, l := range eps {
		for _, e := range l {
			out[pn.String()] = append(out[pn.String()], e.Addr.String())
		}
	}
	return out
}

func cpPort(name, ip string, eps ...string) CheckpointPort {
	cp := CheckpointPort{Port: svc.Port{Name: pn("ns", name, "http"), Protocol: svc.TCP, ClusterIPs: addrs(ip), Port: 80}}
	for _, e := range eps {
		cp.Endpoints = append(cp.Endpoints, readyEP(e))
	}
	return cp
}

// TestRunnerStartsFromCheckpoint: before the source syncs the sink gets the
// checkpoint; once it syncs, the source's state replaces it entirely, and
// that state is what the next checkpoint holds.
func TestRunnerStartsFromCheckpoint(t *testing.T) {
	checkpoint := &Checkpoint{Node: "node-1", Written: time.Now().Add(-time.Minute), Ports: []CheckpointPort{
		cpPort("old", "10.96.0.11", "10.244.0.2:8080"),
		cpPort("web", "10.96.0.10", "10.244.0.1:8080"),
	}}
	webSlice := func(eps ...discovery.Endpoint) *discovery.EndpointSlice {
		return slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080), eps...)
	}
	tests := map[string]struct {
		api       []runtime.Object
		wantPorts []string
		wantEPs   map[string][]string
	}{
		"same state in the API, one service gone": {
			api:       []runtime.Object{service("ns", "web"), webSlice(ep("10.244.0.1"))},
			wantPorts: []string{"ns/web:http"},
			wantEPs:   map[string][]string{"ns/web:http": {"10.244.0.1:8080"}},
		},
		"endpoints moved, a new service": {
			api: []runtime.Object{service("ns", "web"), webSlice(ep("10.244.0.3")),
				service("ns", "new", withClusterIPs("10.96.0.12")),
				slice("ns", "new-1", "new", discovery.AddressTypeIPv4, httpPorts(8080), ep("10.244.0.4"))},
			wantPorts: []string{"ns/new:http", "ns/web:http"},
			wantEPs:   map[string][]string{"ns/new:http": {"10.244.0.4:8080"}, "ns/web:http": {"10.244.0.3:8080"}},
		},
		"service kept, its endpoints gone": {
			api:       []runtime.Object{service("ns", "web"), service("ns", "old", withClusterIPs("10.96.0.11"))},
			wantPorts: []string{"ns/old:http", "ns/web:http"},
			wantEPs:   map[string][]string{},
		},
		"nothing in the API": {
			wantPorts: []string{},
			wantEPs:   map[string][]string{},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			opts := Options{NodeName: "node-1", CheckpointPath: filepath.Join(t.TempDir(), "state.json")}
			log := testLogger(t)
			sink := newRecordSink()
			tracker := NewTracker(opts, log)
			runner := NewRunner(tracker, sink, opts, log)
			runner.StartFrom(checkpoint)
			src := gatedSource{open: make(chan struct{}), src: NewKubeSource(fake.NewClientset(tc.api...), opts, log)}
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Go(func() { _ = src.Run(ctx, tracker) })
			wg.Go(func() { _ = runner.Run(ctx) })
			defer func() { cancel(); wg.Wait() }()

			// The API server is unreachable: the checkpoint is served.
			sink.waitFor(t, "the checkpoint's ports", func(s *recordSink) bool {
				return slices.Equal(portNames(s.ports), []string{"ns/old:http", "ns/web:http"})
			})
			_, eps, _, _ := sink.snapshot()
			if got, want := epAddrs(eps), epAddrs(checkpoint.endpoints()); !mapsEqual(got, want) {
				t.Fatalf("endpoints served from the checkpoint %v, want %v", got, want)
			}
			if runner.Health().Synced {
				t.Fatal("Synced before the source synced")
			}
			if v := testutil.ToFloat64(runner.m.checkpointServing); v != 1 {
				t.Fatalf("uproxy_checkpoint_serving %v while serving it", v)
			}

			// The API answers: its state replaces the checkpoint.
			close(src.open)
			sink.waitFor(t, "the API's state", func(s *recordSink) bool {
				return slices.Equal(portNames(s.ports), tc.wantPorts) && mapsEqual(epAddrs(s.eps), tc.wantEPs)
			})
			// The gauge drops when the runner has applied the API's first
			// full pass, which may be after the sink saw matching ports
			// (when the API's ports equal the checkpoint's).
			for deadline := time.Now().Add(waitDeadline); testutil.ToFloat64(runner.m.checkpointServing) != 0; {
				if time.Now().After(deadline) {
					t.Fatalf("uproxy_checkpoint_serving %v after the API's state", testutil.ToFloat64(runner.m.checkpointServing))
				}
				time.Sleep(5 * time.Millisecond)
			}

			// The next checkpoint holds the API's state.
			deadline := time.Now().Add(waitDeadline)
			for {
				c, err := LoadCheckpoint(opts)
				if err == nil {
					var names []string
					got := map[string][]string{}
					for _, cp := range c.Ports {
						names = append(names, cp.Port.Name.String())
						for _, e := range cp.Endpoints {
							got[cp.Port.Name.String()] = append(got[cp.Port.Name.String()], e.Addr.String())
						}
					}
					if slices.Equal(append([]string{}, names...), tc.wantPorts) && mapsEqual(got, tc.wantEPs) {
						break
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("checkpoint never held the API's state (last: %+v, %v)", c, err)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

func mapsEqual(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || !slices.Equal(v, w) {
			return false
		}
	}
	return true
}

// TestRunnerCheckpointRateLimit: the first full sync is checkpointed at
// once, later changes at most once per checkpointInterval (the latest
// state), and nothing is written while nothing changes.
func TestRunnerCheckpointRateLimit(t *testing.T) {
	opts := Options{NodeName: "node-1", MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second,
		CheckpointPath: filepath.Join(t.TempDir(), "state.json")}
	l := newSteppedLoop(t, opts)
	offered := func() []*Checkpoint { // what the runner handed the writer (not running here)
		var out []*Checkpoint
		for {
			select {
			case c := <-l.r.ck.next:
				out = append(out, c)
			default:
				return out
			}
		}
	}
	l.tr.OnServiceAdd(service("ns", "web"))
	l.tr.SetSynced()
	l.r.start(l.ctx)
	if got := offered(); len(got) != 1 || len(got[0].Ports) != 1 {
		t.Fatalf("after the first sync: %d snapshots %+v, want 1 with the port", len(got), got)
	}

	steps := []struct {
		name    string
		advance time.Duration
		slice   []discovery.Endpoint // nil: no change
		want    int                  // snapshots offered by this step
		wantEPs int                  // endpoints of ns/web:http in the last one
	}{
		{name: "endpoint change right after", slice: []discovery.Endpoint{ep("10.244.0.1")}, want: 0},
		{name: "another within the interval", advance: 500 * time.Millisecond, slice: []discovery.Endpoint{ep("10.244.0.1"), ep("10.244.0.2")}, want: 0},
		{name: "just before the interval", advance: 499 * time.Millisecond, want: 0},
		{name: "at the interval: the latest state", advance: time.Millisecond, want: 1, wantEPs: 2},
		{name: "nothing changed", advance: 5 * time.Second, want: 0},
		{name: "a change after a quiet time is written at once", slice: []discovery.Endpoint{ep("10.244.0.3")}, want: 1, wantEPs: 1},
	}
	for _, st := range steps {
		l.clk.Step(st.advance)
		if st.slice != nil {
			l.tr.OnEndpointSliceUpdate(nil, slice("ns", "web-1", "web", discovery.AddressTypeIPv4, httpPorts(8080), st.slice...))
		}
		l.r.pass(l.ctx, false)
		got := offered()
		if len(got) != st.want {
			t.Fatalf("%s: %d snapshots, want %d", st.name, len(got), st.want)
		}
		if st.want > 0 {
			if n := len(got[0].Ports[0].Endpoints); n != st.wantEPs {
				t.Fatalf("%s: snapshot has %d endpoints, want %d", st.name, n, st.wantEPs)
			}
		}
		if l.r.ckDirty {
			if d := l.r.nextDelay(l.clk.Now()); d > checkpointInterval {
				t.Fatalf("%s: loop sleeps %v with a snapshot due", st.name, d)
			}
		}
	}
}

// TestCheckpointWriter: the writer keeps only the latest snapshot, writes
// what is pending when the runner stops it, and counts a failed write
// without ever failing the runner.
func TestCheckpointWriter(t *testing.T) {
	tests := map[string]struct {
		missingDir bool
		wantOK     float64
		wantErr    float64
	}{
		"writes the last offered snapshot on stop": {wantOK: 1},
		"missing directory: counted, not fatal":    {missingDir: true, wantErr: 1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.missingDir {
				dir = filepath.Join(dir, "absent")
			}
			path := filepath.Join(dir, "state.json")
			m := newMetrics(NewTracker(Options{}, testLogger(t)))
			w := newCheckpointWriter(path, m, testLogger(t))
			first, last := testCheckpoint(), testCheckpoint()
			last.Ports = last.Ports[:1]
			// Offered before the writer runs: the second replaces the first.
			w.offer(first)
			w.offer(last)
			go w.run()
			close(w.stop)
			<-w.done
			ok, bad := testutil.ToFloat64(m.checkpointWrites.WithLabelValues("ok")), testutil.ToFloat64(m.checkpointWrites.WithLabelValues("error"))
			if ok != tc.wantOK || bad != tc.wantErr {
				t.Fatalf("writes ok=%v error=%v, want %v, %v", ok, bad, tc.wantOK, tc.wantErr)
			}
			if tc.missingDir {
				return
			}
			got, err := LoadCheckpoint(Options{CheckpointPath: path, NodeName: "node-1"})
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Ports) != 1 {
				t.Fatalf("file has %d ports, want the last snapshot's 1", len(got.Ports))
			}
		})
	}
}
