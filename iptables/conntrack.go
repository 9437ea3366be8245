package iptables

import (
	"context"
	"fmt"
	"net/netip"
)

// ctFlow names stale UDP conntrack entries by their original destination:
// a portal address and port, or (addr invalid) a NodePort on any address of
// family fam (a dual-stack service's node port has one proxy port per
// family).
type ctFlow struct {
	addr netip.Addr
	port uint16
	fam  family // of a node port flow; v4 when addr is valid
}

func (c ctFlow) String() string {
	if !c.addr.IsValid() {
		if c.fam == v6 {
			return fmt.Sprintf("[*]:%d/udp", c.port)
		}
		return fmt.Sprintf("*:%d/udp", c.port)
	}
	return netip.AddrPortFrom(c.addr, c.port).String() + "/udp"
}

// conntracker deletes UDP conntrack entries (the seam tests replace).
type conntracker interface {
	deleteUDP(ctx context.Context, flows []ctFlow) (uint, error)
}
