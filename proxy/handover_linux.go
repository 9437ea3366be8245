package proxy

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// How a TCP listener is closed at shutdown without resetting a client.
//
// close(2) on a listening socket resets every connection in its accept queue
// and drops the handshakes in progress. Two ways around it:
//
//   - Another instance listens on the same port (a surge rollout; both bind
//     with SO_REUSEPORT) and net.ipv4.tcp_migrate_req is 1: the kernel moves
//     the accept queue and the half-open requests to it on close. Close at
//     once (closeNow).
//   - Otherwise (a sequential restart): attach a socket filter that drops
//     new SYNs (the clients retransmit a second later, when the portal's
//     SYN finds no listener it is dropped by UPROXY-PORT-WAIT, and the next
//     instance takes it), keep accepting for closeSettle so the queue
//     empties and handshakes in flight complete, then close.

// synDropFilter is a classic BPF socket filter for a TCP listener: drop a
// segment with SYN set, pass the rest (the final ACKs of handshakes in
// flight). tcp_filter runs it with skb->data at the TCP header, so byte 13
// is the flags.
var synDropFilter = []unix.SockFilter{
	{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 13},
	{Code: unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, Jt: 0, Jf: 1, K: 0x02},
	{Code: unix.BPF_RET | unix.BPF_K, K: 0},
	{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff},
}

// refuseSYNs attaches synDropFilter to ln.
func refuseSYNs(ln *net.TCPListener) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	prog := unix.SockFprog{Len: uint16(len(synDropFilter)), Filter: &synDropFilter[0]}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog)
	}); err != nil {
		return err
	}
	return os.NewSyscallError("setsockopt SO_ATTACH_FILTER", serr)
}

// migrateReqOn reports whether net.ipv4.tcp_migrate_req is 1 in this
// network namespace.
func migrateReqOn() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// tcpListenerCounts counts the listening TCP sockets per local port in this
// network namespace (/proc/net/tcp and tcp6; a dual-stack socket is in tcp6
// only).
func tcpListenerCounts() map[uint16]int {
	out := map[uint16]int{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 4 || fs[3] != "0A" { // TCP_LISTEN
				continue
			}
			i := strings.LastIndexByte(fs[1], ':')
			if i < 0 {
				continue
			}
			port, err := strconv.ParseUint(fs[1][i+1:], 16, 16)
			if err == nil {
				out[uint16(port)]++
			}
		}
	}
	return out
}
