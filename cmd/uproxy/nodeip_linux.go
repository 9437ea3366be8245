//go:build linux

package main

import (
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// defaultRouteIPs returns the preferred source address of the default route
// of each family: the node's primary IPs when no Node object says otherwise
// (manifest mode, or a Node without addresses). It asks the kernel for the
// route to a public address (netlink RTM_GETROUTE; no packet is sent).
func defaultRouteIPs() []netip.Addr {
	var out []netip.Addr
	for _, dst := range []net.IP{net.IPv4(192, 0, 2, 1), net.ParseIP("2001:db8::1")} { // TEST-NET-1, documentation prefix
		routes, err := netlink.RouteGet(dst)
		if err != nil {
			continue // no route in this family
		}
		for _, r := range routes {
			if a, ok := netip.AddrFromSlice(r.Src); ok && !a.Unmap().IsLoopback() && a.Unmap().IsValid() {
				out = append(out, a.Unmap())
				break
			}
		}
	}
	return out
}
