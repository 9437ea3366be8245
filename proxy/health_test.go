package proxy

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/uproxy/uproxy/svc"
)

func TestEjectionUntilProbeReadmits(t *testing.T) {
	p, _ := newProxier(t, Config{EjectBase: 300 * time.Millisecond})
	n := pn("eject", "")
	mustSync(t, p, tcpPort(n, 80))
	deadAddr := freePort(t)
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(deadAddr, newBackend(t, "live", "who").addr())})
	// One refused dial ejects it: no further picks (failures stay 1).
	for range 20 {
		if id := who(t, addrOf(p, n)); id != "live" {
			t.Fatalf("answer from %q", id)
		}
	}
	ep := p.Snapshot()[0].Endpoints[0]
	if ep.State != "ejected" || ep.Failures != 1 || ep.EjectedUntil == nil {
		t.Fatalf("after one refused dial: %+v", ep)
	}
	// The endpoint comes alive; the probe readmits it and it takes traffic.
	ln, err := net.Listen("tcp", deadAddr)
	if err != nil {
		t.Skipf("port taken meanwhile: %v", err)
	}
	revived := &backendServer{id: "revived", ln: ln.(*net.TCPListener), stop: make(chan struct{})}
	revived.wg.Add(1)
	go revived.serve("who")
	t.Cleanup(revived.close)
	eventually(t, "probe readmission", func() bool { return p.Snapshot()[0].Endpoints[0].State == "ready" })
	seen := map[string]int{}
	for range 4 {
		seen[who(t, addrOf(p, n))]++
	}
	if seen["revived"] != 2 || seen["live"] != 2 {
		t.Fatalf("after readmission %v", seen)
	}
}

func TestPanicModePicksAmongEjected(t *testing.T) {
	p, _ := newProxier(t, Config{EjectBase: time.Minute})
	n := pn("panic", "")
	mustSync(t, p, tcpPort(n, 80))
	a, b := freePort(t), freePort(t)
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(a, b)})
	if _, err := roundTrip(addrOf(p, n), "x"); err == nil {
		t.Fatal("answer from two dead endpoints")
	}
	st := p.Snapshot()[0]
	if st.Endpoints[0].State != "ejected" || st.Endpoints[1].State != "ejected" {
		t.Fatalf("endpoints %+v", st.Endpoints)
	}
	// Both ejected, no probe for a minute: one comes back and is used
	// anyway (panic mode) instead of refusing every client.
	ln, err := net.Listen("tcp", a)
	if err != nil {
		t.Skipf("port taken meanwhile: %v", err)
	}
	be := &backendServer{id: "a", ln: ln.(*net.TCPListener), stop: make(chan struct{})}
	be.wg.Add(1)
	go be.serve("who")
	t.Cleanup(be.close)
	for range 4 {
		if id := who(t, addrOf(p, n)); id != "a" {
			t.Fatalf("answer from %q", id)
		}
	}
}

func TestTerminatingFallback(t *testing.T) {
	p, _ := newProxier(t, Config{EjectBase: time.Minute})
	n := pn("term", "")
	mustSync(t, p, tcpPort(n, 80))
	r := newBackend(t, "ready", "who")
	term := newBackend(t, "term", "who")
	terminating := svc.Endpoint{Addr: mustAP(term.addr()), Serving: true, Terminating: true}
	steps := []struct {
		name string
		eps  []svc.Endpoint
		want string
	}{
		{"ready preferred over terminating", append(ready(r.addr()), terminating), "ready"},
		{"terminating used when no ready one exists", []svc.Endpoint{terminating}, "term"},
		{"new ready endpoint takes traffic at once", append(ready(r.addr()), terminating), "ready"},
		{"terminating used when the ready one is ejected", append(ready(freePort(t)), terminating), "term"},
	}
	for _, s := range steps {
		p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: s.eps})
		for range 3 {
			if id := who(t, addrOf(p, n)); id != s.want {
				t.Fatalf("%s: answer from %q", s.name, id)
			}
		}
	}
}

func mustAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestBackoffDoublesToCap(t *testing.T) {
	cfg := Config{}.withDefaults()
	tests := map[string]struct {
		n    int32
		want time.Duration
	}{
		"first":  {1, time.Second},
		"second": {2, 2 * time.Second},
		"fifth":  {5, 16 * time.Second},
		"capped": {6, 30 * time.Second},
		"far":    {40, 30 * time.Second},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := cfg.backoff(tc.n); got != tc.want {
				t.Fatalf("backoff(%d) = %s, want %s", tc.n, got, tc.want)
			}
		})
	}
}

func TestAdaptiveDialTimeout(t *testing.T) {
	p := &Proxier{cfg: Config{}.withDefaults()}
	tests := map[string]struct {
		samples []time.Duration
		want    time.Duration
	}{
		"no samples: ceiling":        {nil, 250 * time.Millisecond},
		"fast endpoints: floor":      {[]time.Duration{100 * time.Microsecond}, 50 * time.Millisecond},
		"3x p99":                     {[]time.Duration{30 * time.Millisecond}, 90 * time.Millisecond},
		"slow endpoints: ceiling":    {[]time.Duration{200 * time.Millisecond}, 250 * time.Millisecond},
		"p99 of 100 mostly fast":     {append(repeat(time.Millisecond, 99), 40*time.Millisecond), 120 * time.Millisecond},
		"old samples leave the ring": {append(repeat(time.Second, 10), repeat(time.Millisecond, 64)...), 50 * time.Millisecond},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ps := &portState{}
			for _, d := range tc.samples {
				ps.connect.record(int64(d))
			}
			ps.connect.recompute(min(ps.connect.n.Load(), 64))
			if got := p.firstTimeout(ps); got != tc.want {
				t.Fatalf("timeout %s, want %s", got, tc.want)
			}
		})
	}
}

func repeat(d time.Duration, n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = d
	}
	return out
}
