package proxy

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// How a UDP listener hands new datagrams to a surging instance at shutdown.
//
// Both instances bind the proxy port with SO_REUSEPORT, so their sockets
// form one reuseport group and the kernel spreads client datagrams over
// them by a hash of the addresses. Closing the old socket drops what is
// queued in it and the replies its sessions still wait for. Instead the
// old instance attaches a steering program to the group
// (SO_ATTACH_REUSEPORT_CBPF) that sends every new datagram to the other
// socket, keeps reading its own until the queue is empty and its sessions
// got their replies (at most udpDrainMax), and then closes.
//
// The program returns a socket index, so the old instance must know the
// other one's. The kernel (net/core/sock_reuseport.c) keeps the group's
// sockets in an array: a socket that binds appends itself
// (__reuseport_add_sock: socks[num_socks++] = sk); a socket that leaves is
// replaced by the last one (__reuseport_detach_sock: socks[i] =
// socks[num_socks-1]); run_bpf_filter returns NULL for an index >=
// num_socks and reuseport_select_sock then falls back to the hash. The
// program belongs to the group, not to the socket that attached it.
//
// So a socket that was alone on its address when it bound is at index 0
// for its whole life (a leaving socket is only replaced by one after it),
// and in a group of exactly two the other one is at index 1. So is a
// socket that joined others and later found itself alone (the older
// instance left after a surge): refreshUDPGroups marks it, so that the
// instance a rollout brought can steer at the next rollout. That is the
// only case steered: a socket that joined others (the newer of two) cannot
// tell its index, and in a group of three or more "the other" is not one
// socket; those close at once as before (their queued datagrams and
// pending replies are lost). Once the old socket leaves, the new one is
// alone at index 0 and the program's 1 is out of range: the hash (a single
// socket) applies. A later instance that joins the group removes the left
// over program (joinGroup), or the group would send it everything from its
// bind on.

// steerToSecond is a reuseport cBPF program that picks socket index 1.
var steerToSecond = []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 1}}

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
	var derr error
	if err := s.rc.Control(func(fd uintptr) {
		derr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DETACH_REUSEPORT_BPF, 0)
	}); err == nil && derr == nil {
		s.ps.log.Info().Msg("removed the steering program a previous instance left on the UDP port")
	}
}

// steerAway attaches steerToSecond to s's reuseport group: new datagrams go
// to the other socket. Only for a first socket in a group of two.
func (s *udpServer) steerAway() error {
	if !s.first.Load() {
		return errors.New("this socket joined the reuseport group after another, which is still there: its index is unknown")
	}
	prog := unix.SockFprog{Len: uint16(len(steerToSecond)), Filter: &steerToSecond[0]}
	var serr error
	if err := s.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &prog)
	}); err != nil {
		return err
	}
	return os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_CBPF", serr)
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
// while some listener is not first; the janitor calls it every second.
func (p *Proxier) refreshUDPGroups() {
	var pending []*udpServer
	p.mu.Lock()
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
