package proxy

import (
	"encoding/binary"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpBatchSize is how many datagrams one recvmmsg/sendmmsg moves at most.
const udpBatchSize = 8

// udpBatch receives (recvmmsg) and sends (sendmmsg) up to udpBatchSize
// datagrams per system call. Its 64 KiB buffers come from udpBufPool when
// the socket is readable and go back after each batch (release), so an idle
// socket holds none; a buffer that size never truncates a datagram.
//
// A batch is owned by one goroutine (a listener's serve loop or a session's
// reply loop). Its callbacks are bound once, so a batch allocates nothing.
type udpBatch struct {
	msgs  [udpBatchSize]unix.Mmsghdr
	iovs  [udpBatchSize]unix.Iovec
	names [udpBatchSize]unix.RawSockaddrInet6 // senders (recv with names)
	ctrls *[udpBatchSize][udpCtrlSize]byte    // IP(V6)_PKTINFO of each datagram (recv with names only: a session's batch does without)
	bufs  [udpBatchSize]*[]byte
	n     int // datagrams in hand after recv
	// want is how many datagrams the next recv asks for, and so how many
	// 64 KiB buffers it takes: 1 at first, doubled (up to udpBatchSize)
	// after a recv that filled every slot, back to what the last recv got
	// otherwise. A session's reply socket usually holds one datagram (a DNS
	// answer): with a fixed 8 each reply took 512 KiB of buffers from the
	// pool, which under many sessions grew the process's RSS.
	want int

	withNames bool
	rerr      error
	recvFn    func(fd uintptr) bool

	out    mmsgSender
	fan    [udpBatchSize]unix.Mmsghdr // fanOut's share of one session
	fanIov [udpBatchSize]unix.Iovec
}

// sockName is a raw socket address as the kernel wrote it (a sender) or
// will read it (a destination).
type sockName struct {
	raw unix.RawSockaddrInet6 // large enough for AF_INET too
	len uint32
}

func newUDPBatch(withNames bool) *udpBatch {
	b := &udpBatch{withNames: withNames, want: 1}
	if withNames {
		b.ctrls = new([udpBatchSize][udpCtrlSize]byte)
	}
	b.recvFn, b.out.fn = b.recvFD, b.out.sendFD
	return b
}

// recv waits until rc is readable and receives up to udpBatchSize
// datagrams; datagram i is b.data(i), its sender b.sender(i). The caller
// calls release when done with them.
func (b *udpBatch) recv(rc syscall.RawConn) (int, error) {
	b.n, b.rerr = 0, nil
	if err := rc.Read(b.recvFn); err != nil {
		b.release()
		return 0, err
	}
	if b.rerr != nil {
		b.release()
		return 0, os.NewSyscallError("recvmmsg", b.rerr)
	}
	return b.n, nil
}

func (b *udpBatch) recvFD(fd uintptr) bool {
	for i := range b.want {
		if b.bufs[i] == nil {
			b.bufs[i] = udpBufPool.Get().(*[]byte)
		}
		b.iovs[i].Base = &(*b.bufs[i])[0]
		b.iovs[i].SetLen(udpBufSize)
		h := &b.msgs[i].Hdr
		*h = unix.Msghdr{Iov: &b.iovs[i], Iovlen: 1}
		if b.withNames {
			h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
			h.Namelen = unix.SizeofSockaddrInet6
			h.Control = &b.ctrls[i][0]
			h.SetControllen(udpCtrlSize)
		}
		b.msgs[i].Len = 0
	}
	n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.msgs[0])), uintptr(b.want),
		unix.MSG_DONTWAIT, 0, 0)
	switch errno {
	case 0:
		b.n = int(n)
		if b.n == b.want {
			b.want = min(2*b.want, udpBatchSize)
		} else {
			b.want = max(b.n, 1)
		}
		return true
	case unix.EAGAIN, unix.EINTR:
		b.release() // no buffer is held while the socket is idle
		return false
	}
	b.rerr = errno
	return true
}

// data is datagram i of the batch in hand.
func (b *udpBatch) data(i int) []byte { return (*b.bufs[i])[:b.msgs[i].Len] }

// sender is datagram i's source address (recv with names), as received: a
// v4-mapped address on a dual-stack socket stays mapped.
func (b *udpBatch) sender(i int) (netip.AddrPort, sockName) {
	sa := &b.names[i]
	name := sockName{raw: *sa, len: b.msgs[i].Hdr.Namelen}
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port), name
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port), name
	}
	return netip.AddrPort{}, name
}

// local is the address datagram i was sent to as this host received it
// (after NAT: for a REDIRECTed datagram the redirected local address), from
// its IP_PKTINFO or IPV6_PKTINFO (recv with names on a socket with
// enablePktinfo); invalid when the kernel gave none.
func (b *udpBatch) local(i int) netip.Addr {
	if b.ctrls == nil {
		return netip.Addr{}
	}
	return pktinfoLocal(b.ctrls[i][:min(int(b.msgs[i].Hdr.Controllen), udpCtrlSize)])
}

// release returns the batch's buffers to the pool.
func (b *udpBatch) release() {
	for i, buf := range b.bufs {
		if buf != nil {
			udpBufPool.Put(buf)
			b.bufs[i] = nil
			b.iovs[i].Base = nil
		}
	}
	b.n = 0
}

// sendAll sends the batch in hand (datagrams 0..n-1, as received) to dst
// through rc with sendmmsg, each with the control message ctrl (the reply's
// source, see pktinfoCmsg; nil: the kernel picks it); see mmsgSender.send.
func (b *udpBatch) sendAll(rc syscall.RawConn, dst *sockName, ctrl []byte) error {
	for i := 0; i < b.n; i++ {
		b.iovs[i].SetLen(int(b.msgs[i].Len))
		h := &b.msgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&dst.raw))
		h.Namelen = dst.len
		h.Control, h.Controllen, h.Flags = nil, 0, 0
		if len(ctrl) > 0 {
			h.Control = &ctrl[0]
			h.SetControllen(len(ctrl))
		}
	}
	return b.out.send(rc, b.msgs[:b.n])
}

// fanOut sends the batch in hand to the sessions datagram i belongs to
// (sess[i]; nil: dropped), one sendmmsg per session on its connected
// socket, in order within each session. sess is cleared. failed is called
// for a session whose socket refused a datagram (after the rest of its
// share was sent; see mmsgSender.send).
func (b *udpBatch) fanOut(sess *[udpBatchSize]*udpSession, failed func(*udpSession, error)) {
	for i := 0; i < b.n; i++ {
		cur := sess[i]
		if cur == nil {
			continue
		}
		k := 0
		for j := i; j < b.n; j++ {
			if sess[j] != cur {
				continue
			}
			sess[j] = nil
			b.fanIov[k].Base = &(*b.bufs[j])[0]
			b.fanIov[k].SetLen(int(b.msgs[j].Len))
			b.fan[k] = unix.Mmsghdr{Hdr: unix.Msghdr{Iov: &b.fanIov[k], Iovlen: 1}}
			k++
		}
		cur.last.Store(mono())
		if err := b.out.send(cur.rc, b.fan[:k]); err != nil {
			failed(cur, err)
			continue
		}
		cur.forwarded(k)
	}
}

// mmsgSender sends a slice of messages with sendmmsg through a RawConn,
// waiting while the socket buffer is full. Its callback fn is sendFD, bound
// once by newUDPBatch.
type mmsgSender struct {
	msgs []unix.Mmsghdr
	sent int
	serr error
	fn   func(fd uintptr) bool
}

// send sends msgs. A datagram the kernel refuses is dropped (UDP's
// contract) and the rest are still sent; the first such error is returned.
// An error of rc itself (closed) ends it at once.
func (m *mmsgSender) send(rc syscall.RawConn, msgs []unix.Mmsghdr) error {
	m.msgs, m.sent, m.serr = msgs, 0, nil
	var first error
	for m.sent < len(m.msgs) {
		if err := rc.Write(m.fn); err != nil {
			return err
		}
		if m.serr != nil {
			if first == nil {
				first = os.NewSyscallError("sendmmsg", m.serr)
			}
			m.sent++ // drop the datagram the kernel refused
			m.serr = nil
		}
	}
	return first
}

func (m *mmsgSender) sendFD(fd uintptr) bool {
	rest := m.msgs[m.sent:]
	n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)),
		unix.MSG_DONTWAIT, 0, 0)
	switch errno {
	case 0:
		m.sent += int(n)
		return true
	case unix.EAGAIN:
		return false
	case unix.EINTR:
		return true // send calls again
	}
	m.serr = errno
	return true
}
