package dualstack

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/uproxy/uproxy/integration/bed"
)

// TestDualStackUDPReplySourceIPv6: the IPv6 side of the UDP reply source
// (issue 15 item 4). The node gets a second IPv6 address on the bridge;
// ip6tables REDIRECT sends a datagram for the IPv6 ClusterIP to one of the
// two (the first usable in the bridge's list), and the route back to the
// client gets the one or the other as src (a subtest each), so in one of
// them the route's source differs from the address the datagram arrived
// on. A reply must come from [ClusterIP]:53 in both: uproxy sends it from
// the arrival address (IPV6_PKTINFO) and conntrack un-NATs it; a reply
// whose source the kernel picked from the route would come from
// [node address]:proxy port. The client socket is unconnected, so it sees
// any source.
func TestDualStackUDPReplySourceIPv6(t *testing.T) {
	w := newDualWorld(t, "ds-udp-src")
	w.deployEcho("echo")
	s := w.dualService("echo", "echo", corev1.ServiceTypeClusterIP)
	ip6 := s.Spec.ClusterIPs[1]
	want := netip.AddrPortFrom(netip.MustParseAddr(ip6), portUDP)
	w.waitDig(t, ip6, portUDP)

	const other = "fd00:10:244::252"
	if err := w.b.Node.IP("addr", "add", other+"/64", "dev", bed.BridgeName, "nodad"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.b.Node.IP("addr", "del", other+"/64", "dev", bed.BridgeName) })
	for _, src := range []string{bed.NodeIP6, other} {
		t.Run("route src "+src, func(t *testing.T) {
			if err := w.b.Node.IP("route", "add", w.client.IP6+"/128", "dev", bed.BridgeName, "src", src); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = w.b.Node.IP("route", "del", w.client.IP6+"/128", "dev", bed.BridgeName) })
			const n = 20
			var bad []string
			for i := range n { // a new client port each: a new session each
				msg := fmt.Sprintf("q%d", i)
				reply, from, err := w.udp6Exchange(want, msg)
				if err != nil || reply != msg || from != want {
					bad = append(bad, fmt.Sprintf("%s: reply %q from %v, err %v", msg, reply, from, err))
				}
			}
			fmt.Printf("SUMMARY TestDualStackUDPReplySourceIPv6: route to the client with src %s: %d/%d replies from %v\n", src, n-len(bad), n, want)
			if len(bad) > 0 {
				t.Fatalf("%d of %d replies wrong (want from %v):\n%v", len(bad), n, want, bad)
			}
		})
	}
}

// udp6Exchange sends msg from an unconnected IPv6 socket in the client
// namespace to dst and returns the reply and its source (2 s at most).
func (w *dualWorld) udp6Exchange(dst netip.AddrPort, msg string) (reply string, from netip.AddrPort, err error) {
	err = w.client.NS.Do(func() error {
		c, err := net.ListenUDP("udp6", nil)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.WriteToUDPAddrPort([]byte(msg), dst); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 2048)
		k, src, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return err
		}
		reply, from = string(buf[:k]), src
		return nil
	})
	return reply, from, err
}
