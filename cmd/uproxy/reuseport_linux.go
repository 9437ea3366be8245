//go:build linux

package main

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// reusePort sets SO_REUSEPORT on a listening socket, so that during a
// DaemonSet surge (maxSurge 1, hostNetwork) the new pod can bind /healthz and
// /metrics while the old one still holds them. The kernel only lets sockets
// of the same user share a port.
func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}
