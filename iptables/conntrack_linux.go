package iptables

import (
	"context"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// netlinkConntrack deletes entries through netlink (the kernel's
// ctnetlink), inside netns when set.
//
// Why netlink and not the conntrack tool: one table dump per family serves
// every stale portal of a sync (the tool needs one exec, and one dump, per
// portal); there is no binary to ship or find; there is no exit-code
// guessing ("0 flow entries have been deleted" exits 1 on some versions);
// and the socket is opened inside the namespace like everything else.
type netlinkConntrack struct{ netns string }

var _ conntracker = netlinkConntrack{}

func (n netlinkConntrack) deleteUDP(_ context.Context, flows []ctFlow) (uint, error) {
	var total uint
	err := inNetNS(n.netns, func() error {
		h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
		if err != nil {
			return fmt.Errorf("conntrack: netlink: %w", err)
		}
		defer h.Close()
		for _, f := range families {
			var filters []netlink.CustomConntrackFilter
			for _, fl := range flows {
				if (fl.addr.IsValid() && familyOf(fl.addr) != f) || (!fl.addr.IsValid() && fl.fam != f) {
					continue
				}
				cf := &netlink.ConntrackFilter{}
				if err := cf.AddProtocol(unix.IPPROTO_UDP); err != nil {
					return fmt.Errorf("conntrack filter %s: %w", fl, err)
				}
				if err := cf.AddPort(netlink.ConntrackOrigDstPort, fl.port); err != nil {
					return fmt.Errorf("conntrack filter %s: %w", fl, err)
				}
				if fl.addr.IsValid() {
					if err := cf.AddIP(netlink.ConntrackOrigDstIP, fl.addr.AsSlice()); err != nil {
						return fmt.Errorf("conntrack filter %s: %w", fl, err)
					}
				}
				filters = append(filters, cf)
			}
			if len(filters) == 0 {
				continue
			}
			fam := netlink.InetFamily(unix.AF_INET)
			if f == v6 {
				fam = netlink.InetFamily(unix.AF_INET6)
			}
			n, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, fam, filters...)
			total += n
			if err != nil {
				return fmt.Errorf("conntrack delete (%s, %d filters): %w", f, len(filters), err)
			}
		}
		return nil
	})
	return total, err
}
