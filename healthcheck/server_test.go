package healthcheck

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/uproxy/uproxy/svc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// nopSink records nothing; the wrapped proxy.
type nopSink struct{ syncs, updates int }

func (n *nopSink) SyncPorts(context.Context, []svc.Port) error     { n.syncs++; return nil }
func (n *nopSink) UpdateEndpoints(map[svc.PortName][]svc.Endpoint) { n.updates++ }

func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return netip.MustParseAddrPort(ln.Addr().String()).Port()
}

func get(t *testing.T, port uint16) (int, http.Header, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(int(port)) + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func ep(addr, node string, ready bool) svc.Endpoint {
	return svc.Endpoint{Addr: netip.MustParseAddrPort(addr), Ready: ready, Serving: true, Terminating: !ready, NodeName: node}
}

// TestHealthCheckNodePort runs the wrapped sink as watch/ drives it and
// asks the listener over HTTP, as a cloud load balancer does.
func TestHealthCheckNodePort(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	s := New(Config{
		NodeName: "me",
		BindIPs:  func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("127.0.0.1")} },
		Healthy:  healthy.Load,
	}, zerolog.New(zerolog.NewTestWriter(t)))
	t.Cleanup(s.Close)
	next := &nopSink{}
	k := s.Wrap(next)
	hc := freePort(t)
	cluster := svc.Port{Name: svc.PortName{Namespace: "ns", Name: "lb", Port: "http"}, Protocol: svc.TCP, Port: 80, NodePort: 30080,
		Traffic: svc.Traffic{ExternalLocal: true, HealthCheckNodePort: hc, Split: true}}
	external := cluster
	external.Name.External = true
	other := svc.Port{Name: svc.PortName{Namespace: "ns", Name: "plain"}, Protocol: svc.TCP, Port: 80}

	// Endpoints first (watch/ sends them before the port), then the ports.
	k.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{
		cluster.Name:  {ep("10.0.0.1:80", "me", true), ep("10.0.1.1:80", "other", true)},
		external.Name: {ep("10.0.0.1:80", "me", true), ep("10.0.0.2:80", "me", false)},
	})
	if err := k.SyncPorts(context.Background(), []svc.Port{cluster, external, other}); err != nil {
		t.Fatal(err)
	}
	if next.syncs != 1 || next.updates != 1 {
		t.Fatalf("wrapped sink got %d syncs, %d updates; want 1, 1", next.syncs, next.updates)
	}

	cases := []struct {
		name    string
		do      func()
		code    int
		local   int
		proxyOK bool
	}{
		{"one local ready endpoint (the terminating one does not count)", func() {}, 200, 1, true},
		{"proxy unhealthy", func() { healthy.Store(false) }, 503, 1, false},
		{"local endpoint gone", func() {
			healthy.Store(true)
			k.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{external.Name: nil})
		}, 503, 0, true},
		{"two local endpoints", func() {
			k.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{external.Name: {ep("10.0.0.1:80", "me", true), ep("10.0.0.3:80", "me", true)}})
		}, 200, 2, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.do()
			code, h, body := get(t, hc)
			want := "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"lb\"\n\t},\n\t\"localEndpoints\": " +
				strconv.Itoa(tc.local) + ",\n\t\"serviceProxyHealthy\": " + strconv.FormatBool(tc.proxyOK) + "\n}"
			if code != tc.code || body != want {
				t.Errorf("got %d %q, want %d %q", code, body, tc.code, want)
			}
			if h.Get("Content-Type") != "application/json" || h.Get("X-Content-Type-Options") != "nosniff" ||
				h.Get("X-Load-Balancing-Endpoint-Weight") != strconv.Itoa(tc.local) {
				t.Errorf("headers %v", h)
			}
		})
	}

	// The Service loses its health check port: the listener closes.
	if err := k.SyncPorts(context.Background(), []svc.Port{other}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(int(hc)))
	if err == nil {
		c.Close()
		t.Errorf("health check port still open after the Service lost it")
	}
}

// TestPublishCounts: the count is summed over a Service's ports, taken from
// the ports that carry external traffic, and for a dual-stack Service from
// the family with more local endpoints.
func TestPublishCounts(t *testing.T) {
	s := New(Config{NodeName: "me", BindIPs: func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("127.0.0.1")} }},
		zerolog.New(zerolog.NewTestWriter(t)))
	t.Cleanup(s.Close)
	k := s.Wrap(&nopSink{})
	hc := freePort(t)
	port := func(name string, fam svc.Family, external bool) svc.Port {
		return svc.Port{Name: svc.PortName{Namespace: "ns", Name: "lb", Port: name, Family: fam, External: external}, Protocol: svc.TCP, Port: 80,
			Traffic: svc.Traffic{ExternalLocal: true, HealthCheckNodePort: hc, Split: true}}
	}
	ports := []svc.Port{
		port("http", svc.IPv4, false), port("http", svc.IPv4, true),
		port("https", svc.IPv4, false), port("https", svc.IPv4, true),
		port("http", svc.IPv6, false), port("http", svc.IPv6, true),
	}
	if err := k.SyncPorts(context.Background(), ports); err != nil {
		t.Fatal(err)
	}
	k.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{
		ports[0].Name: {ep("10.0.0.1:80", "me", true), ep("10.0.0.2:80", "me", true), ep("10.0.0.3:80", "me", true)}, // cluster twin: not counted
		ports[1].Name: {ep("10.0.0.1:80", "me", true), ep("10.0.1.1:80", "other", true)},
		ports[3].Name: {ep("10.0.0.1:443", "me", true)},
		ports[5].Name: {ep("[fd00::1]:80", "me", true)},
	})
	if got := s.Count(Service{"ns", "lb"}); got != 2 {
		t.Errorf("count %d, want 2 (IPv4: 1 on http + 1 on https; IPv6: 1)", got)
	}
}

// TestListenRetryAndClose: a port another socket holds is retried at the
// next Sync; after Close, Syncs open nothing.
func TestListenRetryAndClose(t *testing.T) {
	s := New(Config{NodeName: "me", BindIPs: func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("127.0.0.1")} }},
		zerolog.New(zerolog.NewTestWriter(t)))
	t.Cleanup(s.Close)
	hc := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(int(hc))
	blocker, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	name := Service{"ns", "lb"}
	s.Sync(map[Service]uint16{name: hc}, map[Service]int{name: 1})
	if s.open[name] != nil {
		t.Fatal("listening although the port is held")
	}
	blocker.Close()
	s.Sync(map[Service]uint16{name: hc}, map[Service]int{name: 1})
	if code, _, _ := get(t, hc); code != http.StatusOK {
		t.Fatalf("after the retry: %d, want 200", code)
	}
	s.Close()
	s.Sync(map[Service]uint16{name: hc}, map[Service]int{name: 1})
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatal("a Sync after Close opened the port again")
	}
}
