package proxy

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"github.com/uproxy/uproxy/svc"
)

func TestEchoThroughProxy(t *testing.T) {
	tests := map[string]struct{ proto svc.Protocol }{
		"tcp echo": {svc.TCP},
		"udp echo": {svc.UDP},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p, fp := newProxier(t, Config{})
			n := pn("echo", "")
			var ep string
			if tc.proto == svc.TCP {
				ep = newBackend(t, "a", "who").addr()
				mustSync(t, p, tcpPort(n, 80))
			} else {
				ep = newUDPBackend(t, "a").addr()
				mustSync(t, p, udpPort(n, 53))
			}
			p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(ep)})
			addr := addrOf(p, n)
			if got := fp.last(); len(got) != 1 || got[0].Port.Name != n || got[0].ProxyPort == 0 {
				t.Fatalf("portals %+v", got)
			}
			if tc.proto == svc.TCP {
				if id := who(t, addr); id != "a" {
					t.Fatalf("answer from %q", id)
				}
				return
			}
			got, err := udpAsk(dialUDP(t, addr), []byte("ping"))
			if err != nil || got != "a:ping" {
				t.Fatalf("got %q, %v", got, err)
			}
		})
	}
}

func TestTCPAndUDPServiceAtOnce(t *testing.T) {
	p, fp := newProxier(t, Config{})
	tn, un := pn("dns", "tcp"), pn("dns", "udp")
	mustSync(t, p, tcpPort(tn, 53), udpPort(un, 53))
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{
		tn: ready(newBackend(t, "t", "who").addr()),
		un: ready(newUDPBackend(t, "u").addr()),
	})
	if id := who(t, addrOf(p, tn)); id != "t" {
		t.Fatalf("tcp answer from %q", id)
	}
	if got, err := udpAsk(dialUDP(t, addrOf(p, un)), []byte("q")); err != nil || got != "u:q" {
		t.Fatalf("udp got %q, %v", got, err)
	}
	if len(fp.last()) != 2 {
		t.Fatalf("portals %+v", fp.last())
	}
}

func TestTwoPortServiceGetsBothListeners(t *testing.T) {
	p, _ := newProxier(t, Config{})
	a, b := pn("web", "http"), pn("web", "https")
	mustSync(t, p, tcpPort(a, 80), tcpPort(b, 443))
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{
		a: ready(newBackend(t, "http", "who").addr()),
		b: ready(newBackend(t, "https", "who").addr()),
	})
	if addrOf(p, a) == addrOf(p, b) {
		t.Fatal("both ports share one listener")
	}
	for n, want := range map[svc.PortName]string{a: "http", b: "https"} {
		if id := who(t, addrOf(p, n)); id != want {
			t.Errorf("%s answered by %q", n, id)
		}
	}
}

// refused reports whether nothing listens on addr.
func refused(addr string) bool {
	c, err := net.Dial("tcp", addr)
	if err == nil {
		_ = c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

func TestListenerLifecycle(t *testing.T) {
	n := pn("svc", "")
	tests := map[string]struct {
		mode PortalMode
		// change returns the second desired state; moved says whether the
		// listen address must change.
		change func(svc.Port) []svc.Port
		moved  bool
		gone   bool
	}{
		"stop closes the port": {change: func(svc.Port) []svc.Port { return nil }, gone: true},
		"removing the portal removes the listener": {change: func(sp svc.Port) []svc.Port {
			sp.ClusterIPs = nil
			return []svc.Port{sp}
		}, gone: true},
		"affinity change keeps the listener": {change: func(sp svc.Port) []svc.Port {
			sp.Affinity = svc.Affinity{ClientIP: true}
			return []svc.Port{sp}
		}},
		"port change keeps the proxy port in iptables mode": {change: func(sp svc.Port) []svc.Port {
			sp.Port = 8080
			return []svc.Port{sp}
		}},
		"protocol change replaces the listener": {change: func(sp svc.Port) []svc.Port {
			sp.Protocol = svc.UDP
			return []svc.Port{sp}
		}, gone: true},
		"port change moves the listener in direct mode": {mode: ModeDirect, change: func(sp svc.Port) []svc.Port {
			sp.Port = freePortNum(t)
			return []svc.Port{sp}
		}, moved: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p, fp := newProxier(t, Config{Mode: tc.mode})
			sp := tcpPort(n, 80)
			if tc.mode == ModeDirect {
				sp = directPort(n, svc.TCP, "127.0.0.1", freePortNum(t))
			}
			mustSync(t, p, sp)
			p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(newBackend(t, "a", "who").addr())})
			before := addrOf(p, n)
			if who(t, before) != "a" {
				t.Fatal("no answer before the change")
			}
			next := tc.change(sp)
			mustSync(t, p, next...)
			after := addrOf(p, n)
			switch {
			case tc.gone:
				if !refused(before) {
					t.Fatalf("%s still accepts", before)
				}
			case tc.moved:
				if after == before || after == "" || !refused(before) {
					t.Fatalf("listener %s → %s", before, after)
				}
				if who(t, after) != "a" {
					t.Fatal("no answer after the move")
				}
			default:
				if after != before {
					t.Fatalf("listener moved %s → %s", before, after)
				}
				if who(t, after) != "a" {
					t.Fatal("no answer after the change")
				}
				if tc.mode == ModeIPTables || tc.mode == "" {
					if got := fp.last(); len(got) != 1 || !got[0].Port.Equal(next[0]) {
						t.Fatalf("portals not updated: %+v", got)
					}
				}
			}
		})
	}
}

func TestDeleteThenReAdd(t *testing.T) {
	p, fp := newProxier(t, Config{})
	n := pn("svc", "")
	ep := newBackend(t, "a", "who").addr()
	mustSync(t, p, tcpPort(n, 80))
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(ep)})
	first := addrOf(p, n)
	mustSync(t, p)
	if !refused(first) || len(fp.last()) != 0 {
		t.Fatal("port not removed")
	}
	mustSync(t, p, tcpPort(n, 80))
	// Endpoints are kept across the removal (svc.Sink: ports not in an
	// update keep theirs).
	if id := who(t, addrOf(p, n)); id != "a" {
		t.Fatalf("answer from %q", id)
	}
}

func TestEndpointsBeforeSyncAreRemembered(t *testing.T) {
	p, _ := newProxier(t, Config{})
	n := pn("early", "")
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(newBackend(t, "a", "who").addr())})
	mustSync(t, p, tcpPort(n, 80))
	if id := who(t, addrOf(p, n)); id != "a" {
		t.Fatalf("answer from %q", id)
	}
}

func TestPreferredProxyPort(t *testing.T) {
	n := pn("svc", "")
	pref := freePortNum(t)
	p, fp := newProxier(t, Config{PreferredPorts: map[svc.PortName]uint16{n: pref}, ReusePort: true})
	mustSync(t, p, tcpPort(n, 80))
	if got := fp.last(); len(got) != 1 || got[0].ProxyPort != pref {
		t.Fatalf("proxy port %+v, want %d", got, pref)
	}
	// A second instance (restart overlap) binds the same port through
	// SO_REUSEPORT.
	p2, fp2 := newProxier(t, Config{PreferredPorts: map[svc.PortName]uint16{n: pref}, ReusePort: true})
	mustSync(t, p2, tcpPort(n, 80))
	if got := fp2.last(); len(got) != 1 || got[0].ProxyPort != pref {
		t.Fatalf("second instance proxy port %+v, want %d", got, pref)
	}
	// A fresh allocation never shares a port another socket holds.
	p3, fp3 := newProxier(t, Config{ReusePort: true, PortRange: PortRange{Base: int(pref), Size: 1}})
	if err := p3.SyncPorts(t.Context(), []svc.Port{tcpPort(pn("other", ""), 80)}); err == nil {
		t.Fatalf("allocated a port in use: %+v", fp3.last())
	}
}

func freePortNum(t testing.TB) uint16 {
	return netip.MustParseAddrPort(freePort(t)).Port()
}

func directPort(n svc.PortName, proto svc.Protocol, ip string, port uint16) svc.Port {
	return svc.Port{Name: n, Protocol: proto, Port: port, ClusterIPs: []netip.Addr{netip.MustParseAddr(ip)}}
}

func TestDirectMode(t *testing.T) {
	p, _ := newProxier(t, Config{Mode: ModeDirect})
	tn, un := pn("direct", "tcp"), pn("direct", "udp")
	port := freePortNum(t)
	tsp := directPort(tn, svc.TCP, "127.0.0.77", port)
	// A portal address that is not local is skipped, the local one served.
	tsp.ExternalIPs = []netip.Addr{netip.MustParseAddr("192.0.2.1")}
	mustSync(t, p, tsp, directPort(un, svc.UDP, "127.0.0.77", port))
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{
		tn: ready(newBackend(t, "t", "who").addr()),
		un: ready(newUDPBackend(t, "u").addr()),
	})
	want := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.77"), port).String()
	if got := addrOf(p, tn); got != want {
		t.Fatalf("listening on %q, want %q", got, want)
	}
	if id := who(t, want); id != "t" {
		t.Fatalf("tcp answer from %q", id)
	}
	if got, err := udpAsk(dialUDP(t, want), []byte("q")); err != nil || got != "u:q" {
		t.Fatalf("udp got %q, %v", got, err)
	}
	st := p.Snapshot()
	if len(st) != 2 || len(st[0].Listen) != 1 || len(st[0].Portals) != 2 {
		t.Fatalf("snapshot %+v", st)
	}
}
