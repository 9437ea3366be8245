package proxy

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// How a UDP listener hands new datagrams to a surging instance at shutdown:
// it steers them to the other socket of its reuseport group
// (reuseport_steer_linux.go), keeps reading its own until the queue is
// empty and its sessions got their replies (at most udpDrainMax), and then
// closes. Closing at once would drop what is queued in it and the replies
// its sessions still wait for. A socket that joined others and later found
// itself alone (the older instance left after a surge) is at index 0 too:
// refreshUDPGroups marks it, so that the instance a rollout brought can
// steer at the next rollout. A socket that cannot be steered from closes at
// once as before.

// udpSocketCounts counts the unconnected UDP sockets per local address and
// port in this network namespace (a session's connected socket is left
// out), from sock_diag.
func udpSocketCounts() (map[netip.AddrPort]int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	defer unix.Close(fd)
	const tcpClose = 7 // an unconnected UDP socket's state
	out := map[netip.AddrPort]int{}
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		err := sockDiag(fd, fam, unix.IPPROTO_UDP, 1<<tcpClose, func(m []byte) {
			var a netip.Addr
			if m[0] == unix.AF_INET {
				a = netip.AddrFrom4([4]byte(m[8:12]))
			} else {
				a = netip.AddrFrom16([16]byte(m[8:24]))
			}
			out[netip.AddrPortFrom(a.Unmap(), binary.BigEndian.Uint16(m[4:6]))]++
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// joinGroup records whether s's socket is the first of its reuseport group
// (alone: it bound a port proven free, or sock_diag sees no other socket on
// its address) and, when it joined others, removes a steering program a
// previous instance's shutdown left on the group. Without sock_diag it
// counts as not first: it is never steered from.
func (s *udpServer) joinGroup(alone bool) {
	if alone {
		s.first.Store(true)
		return
	}
	counts, err := udpSocketCounts()
	if err != nil {
		s.ps.log.Debug().Err(err).Msg("cannot count the UDP sockets on the proxy port")
		return
	}
	if counts[s.local] <= 1 {
		s.first.Store(true)
		return
	}
	if detachSteering(s.rc) {
		s.ps.log.Info().Msg("removed the steering program a previous instance left on the UDP port")
	}
}

// steerAway attaches steerToSecond to s's reuseport group: new datagrams go
// to the other socket. Only for a first socket in a group of two.
func (s *udpServer) steerAway() error {
	if !s.first.Load() {
		return errors.New("this socket joined the reuseport group after another, which is still there: its index is unknown")
	}
	return attachSteering(s.rc)
}

// queued reports whether datagrams wait in s's receive queue (SIOCINQ: the
// size of the next one; an empty datagram counts as none). A socket that
// cannot be asked counts as empty.
func (s *udpServer) queued() bool {
	n := 0
	_ = s.rc.Control(func(fd uintptr) {
		n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	})
	return n > 0
}

// refreshUDPGroups marks as first every UDP listener that is now alone in
// its reuseport group: one that joined an older instance's group at a
// surge is at index 0 once that instance left, and must be able to steer
// at the next surge (two rollouts in a row). One sock_diag dump, only
// while some UDP listener is not first; watchGroups calls it every
// groupWatchEvery.
func (p *Proxier) refreshUDPGroups() {
	var pending []*udpServer
	p.mu.Lock()
	if p.closing || !p.cfg.ReusePort {
		p.mu.Unlock()
		return
	}
	for _, ps := range p.ports {
		if ps.lst == nil {
			continue
		}
		for _, s := range ps.lst.udp {
			if !s.first.Load() {
				pending = append(pending, s)
			}
		}
	}
	p.mu.Unlock()
	if len(pending) == 0 {
		return
	}
	counts, err := udpSocketCounts()
	if err != nil {
		return // counted as not first: never steered from (see joinGroup)
	}
	for _, s := range pending {
		if counts[s.local] == 1 {
			s.first.Store(true)
		}
	}
}
