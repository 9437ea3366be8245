package proxy

import (
	"errors"
	"fmt"
	"net"
)

// How a TCP listener hands new connections to a surging instance at
// shutdown when the kernel does not migrate its queue (tcp_migrate_req is
// off, as in a hostNetwork pod, which cannot set it).
//
// Dropping new SYNs (synDropFilter) keeps the queued clients but delays each
// client whose SYN the reuseport hash sent to the stopping listener by the
// SYN retransmission, a second. Instead, when exactly one other listener
// shares the port and ours was alone when it bound, the stopping instance
// steers new SYNs to the other listener (reuseport_steer_linux.go), keeps
// accepting until its own accept queue is empty (Proxier.settle), and then
// closes. Otherwise, or with Config.NoTCPSteer, the SYN filter applies as
// before.

// tcpJoinGroup reports whether ln is the first listener of its reuseport
// group (alone: it bound a port proven free, or sock_diag sees no other
// listener on its port) and, when it joined others, removes a steering
// program a previous instance's shutdown left on the group. Without
// sock_diag it counts as not first: it is never steered from.
func tcpJoinGroup(ps *portState, ln *net.TCPListener, alone bool) bool {
	if alone {
		return true
	}
	counts, err := tcpListenerCounts()
	if err != nil {
		ps.log.Debug().Err(err).Msg("cannot count the TCP listeners on the proxy port")
		return false
	}
	if counts[ln.Addr().(*net.TCPAddr).AddrPort().Port()] <= 1 {
		return true
	}
	if rc, err := ln.SyscallConn(); err == nil && detachSteering(rc) {
		ps.log.Info().Msg("removed the steering program a previous instance left on the TCP port")
	}
	return false
}

// steerTCP attaches steerToSecond to the reuseport group of ln (n: the
// listeners on its port; first: tcpJoinGroup's answer): new SYNs go to the
// other listener. Only for a first listener in a group of two.
func steerTCP(ln *net.TCPListener, first bool, n int) error {
	if n != 2 {
		return fmt.Errorf("%d listeners share %s: only a group of two is steered (reuseport_steer_linux.go)", n, ln.Addr())
	}
	if !first {
		return fmt.Errorf("%s joined the reuseport group after another: its index is unknown", ln.Addr())
	}
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	return attachSteering(rc)
}

// stopTCPLocked makes the listeners of l take no new connection without
// dropping one already queued: steered to the other instance when possible
// (counts: listeners per port, nil when unknown), the SYN filter otherwise.
// It returns why steering failed on a shared port (nil when it did not or
// was not tried). The caller closes l after settle. Callers hold p.mu.
func (p *Proxier) stopTCPLocked(ps *portState, l *portListener, counts map[uint16]int) error {
	var steerErr error
	for _, ln := range l.tcp {
		if n := counts[ln.Addr().(*net.TCPAddr).AddrPort().Port()]; n > 1 && !p.cfg.NoTCPSteer {
			err := steerTCP(ln, l.tcpFirst[ln], n)
			if err == nil {
				continue
			}
			steerErr = errors.Join(steerErr, err)
		}
		if err := refuseSYNs(ln); err != nil {
			ps.log.Warn().Err(err).Msg("cannot filter SYNs before closing; queued connections may be reset")
		}
	}
	return steerErr
}
