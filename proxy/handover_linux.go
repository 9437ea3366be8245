package proxy

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"strings"
	"syscall"

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
//   - Exactly one other instance shares the port, the migration is off (a
//     hostNetwork pod cannot set the sysctl) and ours bound first: steer new
//     SYNs to the other listener (tcpsteer_linux.go), keep accepting as
//     below until the accept queue is empty, then close.
//   - Otherwise (a sequential restart): attach a socket filter that drops
//     new SYNs (the clients retransmit a second later, when the portal's
//     SYN finds no listener it is dropped by UPROXY-PORT-WAIT, and the next
//     instance takes it), keep accepting for closeSettle so handshakes in
//     flight complete and until the accept queue is empty (a busy or
//     starved process may take longer; at most closeSettleMax), then close.

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
	return attachCBPF(rc, unix.SO_ATTACH_FILTER, "SO_ATTACH_FILTER", synDropFilter)
}

// migrateReqOn reports whether net.ipv4.tcp_migrate_req is 1 in this
// network namespace.
func migrateReqOn() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// tcpListenerCounts counts the listening TCP sockets per local port in this
// network namespace, asking sock_diag for listeners only: /proc/net/tcp
// would walk every socket, TIME_WAIT included, and took seconds on the bed
// under load.
func tcpListenerCounts() (map[uint16]int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	defer unix.Close(fd)
	out := map[uint16]int{}
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		if err := listenersOf(fd, fam, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// listenersOf dumps one family's TCP listeners and counts them per port
// into out.
func listenersOf(fd int, fam uint8, out map[uint16]int) error {
	const tcpListen = 10
	return sockDiag(fd, fam, unix.IPPROTO_TCP, 1<<tcpListen, func(m []byte) {
		out[binary.BigEndian.Uint16(m[4:6])]++
	})
}

// diagMsgLen is the part of struct inet_diag_msg each callback of sockDiag
// gets at least: family, state, timer, retrans, then inet_diag_sockid
// (big-endian source port at 4, source address at 8, 16 bytes).
const diagMsgLen = 24

// sockDiag dumps one family's sockets of proto in the given states (a bit
// per TCP state number; UDP sockets use TCP_CLOSE for unconnected and
// TCP_ESTABLISHED for connected ones) with inet_diag_req_v2 and calls each
// with every inet_diag_msg.
func sockDiag(fd int, fam, proto uint8, states uint32, each func(msg []byte)) error {
	const (
		hdrLen = 16 // struct nlmsghdr
		reqLen = 56 // struct inet_diag_req_v2
	)
	req := make([]byte, hdrLen+reqLen)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	req[hdrLen] = fam
	req[hdrLen+1] = proto
	binary.NativeEndian.PutUint32(req[hdrLen+4:], states)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return os.NewSyscallError("sendto", err)
	}
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return os.NewSyscallError("recvfrom", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				return errors.New("sock_diag: error reply")
			}
			if len(m.Data) >= diagMsgLen {
				each(m.Data)
			}
		}
	}
}

// acceptQueueLen returns how many connections wait in ln's accept queue
// (TCP_INFO of a listener: tcpi_unacked is the queue length).
func acceptQueueLen(ln *net.TCPListener) (int, bool) {
	info, ok := tcpInfo(ln)
	if !ok {
		return 0, false
	}
	return int(info.Unacked), true
}
