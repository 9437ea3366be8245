package proxy

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// How a stopping instance sends new connections and datagrams to the
// surging one that shares its port (UDP: udpsteer_linux.go, TCP:
// tcpsteer_linux.go).
//
// Both instances bind the proxy port with SO_REUSEPORT, so their sockets
// form one reuseport group and the kernel spreads new clients over them by a
// hash of the addresses. The stopping instance attaches a steering program
// to the group (SO_ATTACH_REUSEPORT_CBPF) that picks the other socket for
// every new client, serves what already reached its own socket, and then
// closes.
//
// The program returns a socket index, so the stopping instance must know the
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
// and in a group of exactly two the other one is at index 1. So is a socket
// that joined others and was later seen alone (the older instance left
// after a surge): markAlone (TCP) and refreshUDPGroups (UDP) mark it. That
// is the only case steered: a socket that joined others (the newer of two) cannot
// tell its index, and in a group of three or more "the other" is not one
// socket. Once the stopping socket leaves, the other one is alone at index
// 0 and the program's 1 is out of range: the hash (a single socket)
// applies. A later instance that joins the group removes the left over
// program (detachSteering), or the group would send it everything from its
// bind on.
//
// The same program applies to both protocols: UDP delivery
// (udp4_lib_lookup2 -> inet_lookup_reuseport) and TCP listener lookup for a
// SYN (net/ipv4/inet_hashtables.c: inet_lhash2_lookup ->
// inet_lookup_reuseport -> reuseport_select_sock(sk, phash, skb, doff);
// inet6_lhash2_lookup likewise) both run the group's program with the
// packet before falling back to the hash.

// steerToSecond is a reuseport cBPF program that picks socket index 1.
var steerToSecond = []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 1}}

// attachSteering attaches steerToSecond to the reuseport group of the
// socket behind rc: new clients go to the group's second socket.
func attachSteering(rc syscall.RawConn) error {
	return attachCBPF(rc, unix.SO_ATTACH_REUSEPORT_CBPF, "SO_ATTACH_REUSEPORT_CBPF", steerToSecond)
}

// attachCBPF sets the classic BPF program prog with SOL_SOCKET option opt
// (named name in the error) on the socket behind rc.
func attachCBPF(rc syscall.RawConn, opt int, name string, prog []unix.SockFilter) error {
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, opt, &fprog)
	}); err != nil {
		return err
	}
	return os.NewSyscallError("setsockopt "+name, serr)
}

// detachSteering removes a program from the reuseport group of the socket
// behind rc and reports whether there was one.
func detachSteering(rc syscall.RawConn) bool {
	var derr error
	if err := rc.Control(func(fd uintptr) {
		derr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DETACH_REUSEPORT_BPF, 0)
	}); err != nil {
		return false
	}
	return derr == nil
}
