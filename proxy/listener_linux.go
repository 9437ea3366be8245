package proxy

import (
	"context"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// listenConfig returns the ListenConfig for a listener: keepalive on
// accepted connections and, with reusePort, SO_REUSEPORT so an overlapping
// instance can bind the same port.
func listenConfig(reusePort bool) *net.ListenConfig {
	lc := &net.ListenConfig{KeepAliveConfig: keepAlive}
	if reusePort {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	return lc
}

// listenAddr renders a listen address; an invalid or unspecified address
// means every address of both families.
func listenAddr(ip netip.Addr, port uint16) string {
	if !ip.IsValid() || ip.IsUnspecified() {
		return net.JoinHostPort("", itoa(port))
	}
	return netip.AddrPortFrom(ip, port).String()
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
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || ierr != nil {
		return 0, false
	}
	return time.Duration(info.Last_data_recv) * time.Millisecond, true
}

func netipUnmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// listenTCP and listenUDP open one listener.
func listenTCP(ctx context.Context, reusePort bool, addr string) (*net.TCPListener, error) {
	ln, err := listenConfig(reusePort).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

func listenUDP(ctx context.Context, reusePort bool, addr string) (*net.UDPConn, error) {
	c, err := listenConfig(reusePort).ListenPacket(ctx, "udp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.UDPConn), nil
}
