package proxy

import (
	"net"
	"net/netip"
	"testing"

	"github.com/uproxy/uproxy/svc"
)

// TestNodePortAddr: a direct-mode node port listens on the any-address of
// its port's family only, so the two ports of a dual-stack service (one per
// family, same node port) can both bind it, and an IPv6 client never
// reaches an IPv4-only service through a dual-stack socket.
func TestNodePortAddr(t *testing.T) {
	tests := map[string]struct {
		bind    netip.Addr
		fam     svc.Family
		want    string
		network string
	}{
		"unspecified bind, IPv4 port": {netip.IPv4Unspecified(), svc.IPv4, "0.0.0.0:30080", "tcp4"},
		"unspecified bind, IPv6 port": {netip.IPv4Unspecified(), svc.IPv6, "[::]:30080", "tcp6"},
		"no bind address, IPv6 port":  {netip.Addr{}, svc.IPv6, "[::]:30080", "tcp6"},
		"bind :: , IPv4 port":         {netip.IPv6Unspecified(), svc.IPv4, "0.0.0.0:30080", "tcp4"},
		"explicit bind address stays": {netip.MustParseAddr("10.0.0.5"), svc.IPv4, "10.0.0.5:30080", "tcp"},
		"explicit IPv6 bind address":  {netip.MustParseAddr("fd00::5"), svc.IPv6, "[fd00::5]:30080", "tcp"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := nodePortAddr(tc.bind, tc.fam, 30080)
			if got != tc.want {
				t.Fatalf("nodePortAddr = %q, want %q", got, tc.want)
			}
			if n := network("tcp", got); n != tc.network {
				t.Fatalf("network = %q, want %q", n, tc.network)
			}
		})
	}
}

// TestFamilyListenersShareAPort binds what a dual-stack service's two node
// port listeners bind: the IPv4 and the IPv6 any-address on one port. With
// a dual-stack "[::]" socket (network "tcp") the second bind would fail with
// EADDRINUSE. No traffic is sent.
func TestFamilyListenersShareAPort(t *testing.T) {
	ln4, err := listenTCP(t.Context(), false, nodePortAddr(netip.Addr{}, svc.IPv4, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer ln4.Close()
	port := uint16(ln4.Addr().(*net.TCPAddr).Port)
	ln6, err := listenTCP(t.Context(), false, nodePortAddr(netip.Addr{}, svc.IPv6, port))
	if err != nil {
		t.Fatalf("IPv6 listener on the IPv4 listener's port %d: %v", port, err)
	}
	defer ln6.Close()
	u4, err := listenUDP(t.Context(), false, nodePortAddr(netip.Addr{}, svc.IPv4, port))
	if err != nil {
		t.Fatal(err)
	}
	defer u4.Close()
	u6, err := listenUDP(t.Context(), false, nodePortAddr(netip.Addr{}, svc.IPv6, port))
	if err != nil {
		t.Fatalf("IPv6 UDP socket on port %d: %v", port, err)
	}
	defer u6.Close()
}
