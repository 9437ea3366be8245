package iptables

import (
	"context"
	"fmt"
	"net/netip"
)

// ctFlow names stale UDP conntrack entries by their original destination:
// a portal address and port, or (addr invalid) a NodePort on any address.
type ctFlow struct {
	addr netip.Addr
	port uint16
}

func (c ctFlow) String() string {
	if !c.addr.IsValid() {
		return fmt.Sprintf("*:%d/udp", c.port)
	}
	return netip.AddrPortFrom(c.addr, c.port).String() + "/udp"
}

// conntracker deletes UDP conntrack entries (the seam tests replace).
type conntracker interface {
	deleteUDP(ctx context.Context, flows []ctFlow) (uint, error)
}
