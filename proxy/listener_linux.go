package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/uproxy/uproxy/svc"
)

// listenConfig returns the ListenConfig for a listener. A TCP listening
// socket gets the keepalive settings (keepAlive) itself: accepted sockets
// inherit them from it (and TCP_NODELAY, which Go sets on each anyway), so
// accepting a connection costs no keepalive setsockopt calls. With reusePort
// the socket gets SO_REUSEPORT so an overlapping instance can bind the same
// port. TCP listeners are plain TCP, not the MPTCP Go picks by default
// where the kernel has it: an MPTCP listener refuses socket filters
// (EOPNOTSUPP), which the graceful close needs (handover_linux.go), and
// portal clients do not speak MPTCP.
func listenConfig(reusePort, tcp bool) *net.ListenConfig {
	lc := &net.ListenConfig{KeepAlive: -1} // accepted sockets inherit the listener's
	lc.SetMultipathTCP(false)
	lc.Control = func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			if reusePort {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}
			if tcp && serr == nil {
				serr = setKeepAlive(int(fd), keepAlive)
			}
		}); err != nil {
			return err
		}
		return serr
	}
	return lc
}

// setKeepAlive sets cfg on a TCP socket.
func setKeepAlive(fd int, cfg net.KeepAliveConfig) error {
	for _, o := range []struct{ level, opt, v int }{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(cfg.Idle / time.Second)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(cfg.Interval / time.Second)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, cfg.Count},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			return os.NewSyscallError("setsockopt", err)
		}
	}
	return nil
}

// listenAddr renders a listen address; an invalid or unspecified address
// means every address of both families.
func listenAddr(ip netip.Addr, port uint16) string {
	if !ip.IsValid() || ip.IsUnspecified() {
		return net.JoinHostPort("", itoa(port))
	}
	return netip.AddrPortFrom(ip, port).String()
}

// nodePortAddr is a direct-mode node port's listen address: BindAddr, or
// when that is unspecified the any-address of the port's family only, so a
// dual-stack service's two ports (one per family) can both listen and an
// IPv6 client never reaches an IPv4-only service's endpoints.
func nodePortAddr(bind netip.Addr, fam svc.Family, port uint16) string {
	if bind.IsValid() && !bind.IsUnspecified() {
		return listenAddr(bind, port)
	}
	if fam == svc.IPv6 {
		return netip.AddrPortFrom(netip.IPv6Unspecified(), port).String()
	}
	return netip.AddrPortFrom(netip.IPv4Unspecified(), port).String()
}

// network is "tcp"/"udp" with "4" or "6" appended for an explicit any-address
// of one family (nodePortAddr): Go opens "[::]:p" dual-stack unless the
// network says "6".
func network(base, addr string) string {
	switch {
	case strings.HasPrefix(addr, "[::]:"):
		return base + "6"
	case strings.HasPrefix(addr, "0.0.0.0:"):
		return base + "4"
	}
	return base
}

func itoa(p uint16) string {
	var b [5]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + p%10)
		p /= 10
		if p == 0 {
			return string(b[i:])
		}
	}
}

// lastDataRecv returns how long ago c last received data (TCP_INFO
// tcpi_last_data_recv, millisecond resolution); ok is false when it cannot
// be read (closed socket).
func lastDataRecv(c *net.TCPConn) (d time.Duration, ok bool) {
	info, ok := tcpInfo(c)
	if !ok {
		return 0, false
	}
	return time.Duration(info.Last_data_recv) * time.Millisecond, true
}

// tcpInfo reads TCP_INFO of a TCP socket (a connection or a listener); ok is
// false when it cannot be read (closed socket).
func tcpInfo(c syscall.Conn) (*unix.TCPInfo, bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, false
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || ierr != nil {
		return nil, false
	}
	return info, true
}

func netipUnmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// listenTCP and listenUDP open one listener.
func listenTCP(ctx context.Context, reusePort bool, addr string) (*net.TCPListener, error) {
	ln, err := listenConfig(reusePort, true).Listen(ctx, network("tcp", addr), addr)
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

func listenUDP(ctx context.Context, reusePort bool, addr string) (*net.UDPConn, error) {
	c, err := listenConfig(reusePort, false).ListenPacket(ctx, network("udp", addr), addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.UDPConn), nil
}

// tcpFromKept and udpFromKept turn a socket a previous run left with the
// fd holder (SocketKeeper) back into a listener on addr; they own f.
func tcpFromKept(f *os.File, reuse bool, addr string) (*net.TCPListener, error) {
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("kept socket for tcp %s: %w", addr, err)
	}
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		_ = ln.Close()
		return nil, fmt.Errorf("kept socket for tcp %s is not a TCP listener", addr)
	}
	if err := adoptKept(tl, tl.Addr(), reuse, true, addr); err != nil {
		_ = tl.Close()
		return nil, err
	}
	return tl, nil
}

func udpFromKept(f *os.File, reuse bool, addr string) (*net.UDPConn, error) {
	defer f.Close()
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("kept socket for udp %s: %w", addr, err)
	}
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		_ = pc.Close()
		return nil, fmt.Errorf("kept socket for udp %s is not a UDP socket", addr)
	}
	if err := adoptKept(uc, uc.LocalAddr(), reuse, false, addr); err != nil {
		_ = uc.Close()
		return nil, err
	}
	return uc, nil
}

// adoptKept checks that a kept socket is bound to addr's port, applies the
// listen options again (a previous version may have set others) and removes
// the SYN filter a graceful close may have left on it (refuseSYNs).
func adoptKept(c syscall.Conn, local net.Addr, reuse, tcp bool, addr string) error {
	_, want, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	_, got, err := net.SplitHostPort(local.String())
	if err != nil || got != want {
		return fmt.Errorf("kept socket for %s is bound to %s", addr, local)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	network := "udp"
	if tcp {
		network = "tcp"
	}
	if err := listenConfig(reuse, tcp).Control(network, addr, rc); err != nil {
		return fmt.Errorf("kept socket for %s: %w", addr, err)
	}
	var derr error
	if err := rc.Control(func(fd uintptr) {
		derr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DETACH_FILTER, 0)
	}); err != nil {
		return err
	}
	if derr != nil && !errors.Is(derr, unix.ENOENT) {
		return fmt.Errorf("kept socket for %s: detach filter: %w", addr, os.NewSyscallError("setsockopt", derr))
	}
	return nil
}
