package proxy

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/uproxy/uproxy/svc"
)

func TestUDPSessions(t *testing.T) {
	tests := map[string]func(t *testing.T, p *Proxier, n svc.PortName, addr string){
		"expiry after the idle timeout": func(t *testing.T, p *Proxier, n svc.PortName, addr string) {
			c := dialUDP(t, addr)
			if _, err := udpAsk(c, []byte("a")); err != nil {
				t.Fatal(err)
			}
			if got := p.Snapshot()[0].UDPSessions; got != 1 {
				t.Fatalf("sessions %d, want 1", got)
			}
			eventually(t, "session expiry", func() bool { return p.Snapshot()[0].UDPSessions == 0 })
			// The client comes back and gets a new session.
			if got, err := udpAsk(c, []byte("b")); err != nil || got != "u1:b" {
				t.Fatalf("got %q, %v", got, err)
			}
			if st := p.Snapshot()[0]; st.UDPSessionsTotal != 2 {
				t.Fatalf("sessions total %d, want 2", st.UDPSessionsTotal)
			}
		},
		"one session per client port": func(t *testing.T, p *Proxier, n svc.PortName, addr string) {
			for range 3 {
				c := dialUDP(t, addr)
				for range 2 {
					if _, err := udpAsk(c, []byte("x")); err != nil {
						t.Fatal(err)
					}
				}
			}
			if st := p.Snapshot()[0]; st.UDPSessionsTotal != 3 {
				t.Fatalf("sessions total %d, want 3", st.UDPSessionsTotal)
			}
		},
		"large datagram": func(t *testing.T, p *Proxier, n svc.PortName, addr string) {
			big := bytes.Repeat([]byte("z"), 60000)
			got, err := udpAsk(dialUDP(t, addr), big)
			if err != nil || got != "u1:"+string(big) {
				t.Fatalf("got %d bytes, %v", len(got), err)
			}
		},
		"bursts from several clients, batched": func(t *testing.T, p *Proxier, n svc.PortName, addr string) {
			// Each client sends its burst without waiting, so the proxy's
			// recvmmsg and sendmmsg move several datagrams (of several
			// clients) at a time; a 20000-byte datagram lands in a later
			// slot of a batch and must not be truncated.
			const clients, burst = 3, 16
			payload := func(c, i int) string {
				if i%8 == 7 {
					return strings.Repeat(string(rune('a'+c)), 20000)
				}
				return fmt.Sprintf("c%d-%d", c, i)
			}
			conns := make([]*net.UDPConn, clients)
			for c := range conns {
				conns[c] = dialUDP(t, addr)
			}
			for i := range burst {
				for c, conn := range conns {
					if _, err := conn.Write([]byte(payload(c, i))); err != nil {
						t.Fatal(err)
					}
				}
			}
			buf := make([]byte, 70000)
			for c, conn := range conns {
				_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
				for i := range burst {
					m, err := conn.Read(buf)
					if err != nil {
						t.Fatalf("client %d reply %d: %v", c, i, err)
					}
					if got, want := string(buf[:m]), "u1:"+payload(c, i); got != want {
						t.Fatalf("client %d reply %d: %d bytes %.20q, want %d bytes %.20q", c, i, len(got), got, len(want), want)
					}
				}
			}
			if st := p.Snapshot()[0]; st.UDPSessionsTotal != clients {
				t.Fatalf("sessions total %d, want %d", st.UDPSessionsTotal, clients)
			}
		},
		"session moves off a removed endpoint": func(t *testing.T, p *Proxier, n svc.PortName, addr string) {
			c := dialUDP(t, addr)
			if got, _ := udpAsk(c, []byte("x")); got != "u1:x" {
				t.Fatalf("got %q", got)
			}
			u2 := newUDPBackend(t, "u2")
			p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(u2.addr())})
			if got, err := udpAsk(c, []byte("y")); err != nil || got != "u2:y" {
				t.Fatalf("after removal got %q, %v", got, err)
			}
		},
		"session cap drops new clients": func(t *testing.T, p *Proxier, n svc.PortName, addr string) {
			for range 2 {
				if _, err := udpAsk(dialUDP(t, addr), []byte("x")); err != nil {
					t.Fatal(err)
				}
			}
			c := dialUDP(t, addr)
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			eventually(t, "cap drop", func() bool { return p.Snapshot()[0].UDPCapDrops == 1 })
			if st := p.Snapshot()[0]; st.UDPSessions != 2 {
				t.Fatalf("sessions %d, want 2 (cap)", st.UDPSessions)
			}
		},
		"session cap evicts the longest-idle session": func(t *testing.T, p *Proxier, n svc.PortName, addr string) {
			c1, c2 := dialUDP(t, addr), dialUDP(t, addr)
			for _, c := range []*net.UDPConn{c1, c2} {
				if _, err := udpAsk(c, []byte("x")); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(udpEvictIdle + 100*time.Millisecond)
			if _, err := udpAsk(c2, []byte("y")); err != nil { // c2 busy again; c1 idle longest
				t.Fatal(err)
			}
			if got, err := udpAsk(dialUDP(t, addr), []byte("z")); err != nil || got != "u1:z" {
				t.Fatalf("a new client at the cap: %q, %v; want it served in c1's place", got, err)
			}
			st := p.Snapshot()[0]
			if st.UDPCapDrops != 0 || st.UDPSessions != 2 || p.ports[n].stats.udpEvictions.Load() != 1 {
				t.Fatalf("cap drops %d, sessions %d, evictions %d; want 0, 2, 1", st.UDPCapDrops, st.UDPSessions, p.ports[n].stats.udpEvictions.Load())
			}
			if got, err := udpAsk(c2, []byte("w")); err != nil || got != "u1:w" {
				t.Fatalf("the busier session was evicted: %q, %v", got, err)
			}
		},
	}
	for name, run := range tests {
		t.Run(name, func(t *testing.T) {
			cfg := Config{UDPIdleTimeout: 100 * time.Millisecond}
			if strings.Contains(name, "cap") {
				cfg = Config{UDPIdleTimeout: time.Minute, UDPMaxSessions: 2}
			}
			p, _ := newProxier(t, cfg)
			n := pn("dns", "")
			mustSync(t, p, udpPort(n, 53))
			p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(newUDPBackend(t, "u1").addr())})
			run(t, p, n, addrOf(p, n))
		})
	}
}

func TestUDPRefusedEndpointIsEjected(t *testing.T) {
	p, _ := newProxier(t, Config{UDPIdleTimeout: time.Minute, EjectBase: time.Minute})
	n := pn("dns", "")
	mustSync(t, p, udpPort(n, 53))
	// A UDP port nobody listens on answers with ICMP port unreachable.
	dead, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr().String()
	_ = dead.Close()
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(deadAddr, newUDPBackend(t, "live").addr())})
	// Whoever lands on the dead endpoint loses its datagram (UDP); once it
	// is ejected every client is answered by the live one.
	for range 2 {
		c := dialUDP(t, addrOf(p, n))
		_, _ = c.Write([]byte("x"))
	}
	eventually(t, "ejection", func() bool { return p.Snapshot()[0].Endpoints[0].State == "ejected" })
	for range 4 {
		if got, err := udpAsk(dialUDP(t, addrOf(p, n)), []byte("x")); err != nil || got != "live:x" {
			t.Fatalf("got %q, %v", got, err)
		}
	}
}
