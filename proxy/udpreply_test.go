package proxy

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/uproxy/uproxy/svc"
)

// TestUDPReplySource: a client sends to a local address that is not the
// route's preferred source towards it (127.0.0.5; replies to 127.0.0.1
// would leave from 127.0.0.1) and must get its reply from exactly the
// address and port it sent to, as conntrack needs to un-NAT a REDIRECTed
// reply. The client socket is unconnected, so it sees any source.
func TestUDPReplySource(t *testing.T) {
	tests := map[string]struct {
		bind           netip.Addr
		network        string
		client, sentTo string
	}{
		"wildcard listener (dual-stack socket), IPv4 client": {bind: netip.IPv4Unspecified(), network: "udp4", client: "127.0.0.1", sentTo: "127.0.0.5"},
		"listener bound to the address":                      {bind: netip.MustParseAddr("127.0.0.5"), network: "udp4", client: "127.0.0.1", sentTo: "127.0.0.5"},
		// Only ::1 exists without root, so this one cannot tell a picked
		// source from the cmsg; it proves the kernel takes our
		// IPV6_PKTINFO message on the send (a malformed one fails it).
		"wildcard listener, IPv6 client": {bind: netip.IPv4Unspecified(), network: "udp6", client: "::1", sentTo: "::1"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			p, _ := newProxier(t, Config{BindAddr: tt.bind, UDPIdleTimeout: time.Minute})
			n := pn("dns", "")
			mustSync(t, p, udpPort(n, 53))
			p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(newUDPBackend(t, "u1").addr())})
			_, port, err := net.SplitHostPort(addrOf(p, n))
			if err != nil {
				t.Fatal(err)
			}
			dst, err := net.ResolveUDPAddr(tt.network, net.JoinHostPort(tt.sentTo, port))
			if err != nil {
				t.Fatal(err)
			}
			c, err := net.ListenUDP(tt.network, &net.UDPAddr{IP: net.ParseIP(tt.client)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })
			buf := make([]byte, 100)
			for i, msg := range []string{"first", "second"} { // a new session, then an existing one
				if _, err := c.WriteToUDP([]byte(msg), dst); err != nil {
					t.Fatal(err)
				}
				_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
				k, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					t.Fatalf("reply %d: %v", i, err)
				}
				if got := netipUnmap(from); got != netipUnmap(dst.AddrPort()) || string(buf[:k]) != "u1:"+msg {
					t.Fatalf("reply %d %q from %v, want %q from %v", i, buf[:k], got, "u1:"+msg, dst)
				}
			}
		})
	}
}

func TestPktinfoRoundTrip(t *testing.T) {
	tests := map[string]struct {
		local, want netip.Addr
	}{
		"IPv4":              {netip.MustParseAddr("10.244.0.1"), netip.MustParseAddr("10.244.0.1")},
		"IPv4-mapped":       {netip.MustParseAddr("::ffff:10.0.0.7"), netip.MustParseAddr("10.0.0.7")},
		"IPv6":              {netip.MustParseAddr("fd00::5"), netip.MustParseAddr("fd00::5")},
		"unspecified: none": {netip.IPv6Unspecified(), netip.Addr{}},
		"multicast: none":   {netip.MustParseAddr("ff02::1"), netip.Addr{}},
		"invalid: none":     {netip.Addr{}, netip.Addr{}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			// A sent IP_PKTINFO carries the address in ipi_spec_dst, a
			// received one's is read from there too: the same layout.
			ctrl := pktinfoCmsg(tt.local)
			if got := pktinfoLocal(ctrl); got != tt.want {
				t.Fatalf("pktinfoLocal(pktinfoCmsg(%v)) = %v, want %v", tt.local, got, tt.want)
			}
			if len(ctrl) > udpCtrlSize {
				t.Fatalf("control message %d bytes > udpCtrlSize %d", len(ctrl), udpCtrlSize)
			}
		})
	}
}
