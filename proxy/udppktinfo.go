package proxy

import (
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A UDP listener in iptables mode is a wildcard socket: a client datagram
// REDIRECTed to it arrives with its destination rewritten to the receiving
// interface's primary address, and conntrack un-NATs a reply back to the
// portal only when the reply leaves from that very address. A reply sent
// without a source lets the kernel pick the route's preferred source, which
// differs when the route to the client has another src (several addresses,
// policy routing): conntrack then sees a new flow, the client receives a
// datagram from node-address:proxy-port instead of the portal and drops it.
// So every session remembers the local address its first datagram was sent
// to (IP_PKTINFO / IPV6_PKTINFO on receipt) and sends every reply with that
// address as ipi_spec_dst / ipi6_addr. (TPROXY's IP_RECVORIGDSTADDR would
// give the portal itself, but with REDIRECT the reply must leave from the
// redirected address for conntrack to rewrite it; measured in
// integration/reliability TestUDPReplySource.)

// udpCtrlSize holds one IPV6_PKTINFO control message (the larger of the two)
// with room to spare.
const udpCtrlSize = 64

// enablePktinfo makes the kernel report each datagram's local destination:
// IP_PKTINFO, and on an IPv6 socket also IPV6_RECVPKTINFO (its IPv4-mapped
// datagrams still come with IP_PKTINFO).
func enablePktinfo(rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		dom, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		if err != nil {
			serr = err
			return
		}
		if err := unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1); err != nil {
			serr = err
			return
		}
		if dom == unix.AF_INET6 {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// pktinfoLocal returns the local address in a received control buffer's
// IP_PKTINFO (ipi_spec_dst: the address a reply should come from, which for
// unicast is the header's destination) or IPV6_PKTINFO; invalid when there
// is none or it cannot be a source (IPv6 multicast).
func pktinfoLocal(ctrl []byte) netip.Addr {
	for len(ctrl) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&ctrl[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(ctrl) {
			return netip.Addr{}
		}
		data := ctrl[unix.CmsgLen(0):l]
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			return netip.AddrFrom4(pi.Spec_dst)
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
			if a := netip.AddrFrom16(pi.Addr); !a.IsMulticast() {
				return a.Unmap()
			}
			return netip.Addr{}
		}
		ctrl = ctrl[min(unix.CmsgSpace(l-unix.CmsgLen(0)), len(ctrl)):]
	}
	return netip.Addr{}
}

// pktinfoCmsg is the control message that sends a datagram from local:
// IP_PKTINFO for IPv4 (also on an IPv6 socket towards an IPv4-mapped
// client: the kernel's IPv4 path reads SOL_IP messages), IPV6_PKTINFO for
// IPv6. The interface index stays 0: routing picks the way out. nil when
// local is not a usable source.
func pktinfoCmsg(local netip.Addr) []byte {
	if !local.IsValid() || local.IsUnspecified() || local.IsMulticast() {
		return nil
	}
	local = local.Unmap()
	size := unix.SizeofInet6Pktinfo
	if local.Is4() {
		size = unix.SizeofInet4Pktinfo
	}
	b := make([]byte, unix.CmsgSpace(size)) // heap: 8-byte aligned
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.SetLen(unix.CmsgLen(size))
	data := unsafe.Pointer(&b[unix.CmsgLen(0)])
	if local.Is4() {
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		(*unix.Inet4Pktinfo)(data).Spec_dst = local.As4()
	} else {
		h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
		(*unix.Inet6Pktinfo)(data).Addr = local.As16()
	}
	return b
}
