package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// udpBufSize fits any UDP datagram (legacy's 4 KiB truncated large ones,
// kubernetes#47659).
const udpBufSize = 64 << 10

var udpBufPool = sync.Pool{New: func() any { b := make([]byte, udpBufSize); return &b }}

// udpServer serves one UDP listen socket of a service port: a session per
// client ip:port, each with its own connected socket to the chosen endpoint
// and a reply goroutine.
//
// Ownership: the serve goroutine owns conn's reads and creates sessions; a
// session's socket is owned by the session, closed exactly once by
// udpSession.close (called by its reply goroutine on idle or error, by serve
// when the session moves or on exit, by close after a shutdown stopped
// serve: see udpdrain.go).
type udpServer struct {
	p     *Proxier
	ps    *portState
	conn  *net.UDPConn
	rc    syscall.RawConn // conn's: batched reads and writes
	local netip.AddrPort  // conn's local address, unmapped (udpSocketCounts' key)
	first atomic.Bool     // at index 0 of its reuseport group: first at bind (joinGroup) or alone since (refreshUDPGroups)

	stopped atomic.Bool // shutdown stopped reading: serve returns and leaves the sessions to close
	closed  atomic.Bool

	mu       sync.Mutex // guards sessions
	sessions map[netip.AddrPort]*udpSession
}

type udpSession struct {
	srv    *udpServer
	client netip.AddrPort // as received: the session's key
	name   sockName       // client as the kernel gave it: the replies' destination
	ctrl   []byte         // IP(V6)_PKTINFO: replies leave from the address the client sent to (udppktinfo.go)
	be     *backend
	conn   *net.UDPConn    // connected to be
	rc     syscall.RawConn // conn's
	last   atomic.Int64    // mono() of the last datagram either way
	// unanswered counts client datagrams forwarded since the endpoint's
	// last reply (a reply answers as many as it counts): a shutdown waits
	// for it to reach 0 (udpdrain.go).
	unanswered atomic.Int64
	once       sync.Once
}

func newUDPServer(p *Proxier, ps *portState, c *net.UDPConn) (*udpServer, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	if err := enablePktinfo(rc); err != nil {
		return nil, fmt.Errorf("IP_PKTINFO on %s: %w", c.LocalAddr(), err)
	}
	local := netipUnmap(c.LocalAddr().(*net.UDPAddr).AddrPort())
	return &udpServer{p: p, ps: ps, conn: c, rc: rc, local: local, sessions: map[netip.AddrPort]*udpSession{}}, nil
}

// close closes the listen socket and ends every session (serve ends them
// too when it sees the socket closed; after stopReading it has returned).
func (s *udpServer) close() {
	s.closed.Store(true)
	_ = s.conn.Close()
	s.closeSessions()
}

// serve reads client datagrams, a batch per recvmmsg, until the socket is
// closed and forwards each to its session's endpoint, a sendmmsg per
// session and batch.
func (s *udpServer) serve() {
	defer s.p.wg.Done()
	defer func() {
		if !s.stopped.Load() || s.closed.Load() {
			s.closeSessions()
		}
	}()
	b := newUDPBatch(true)
	var sess [udpBatchSize]*udpSession // datagram i's session
	for {
		n, err := b.recv(s.rc)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.stopped.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
			// Unconnected UDP sockets rarely fail; never spin on it.
			if !sleepCtx(s.p.ctx, acceptBackoffMin) {
				return
			}
			continue
		}
		for i := range n {
			caddr, name := b.sender(i)
			sess[i] = s.session(caddr, &name, b, i)
		}
		b.fanOut(&sess, s.sendFailed)
		b.release()
	}
}

// sendFailed handles a session socket that refused a client datagram.
func (s *udpServer) sendFailed(sess *udpSession, err error) {
	if errors.Is(err, syscall.ECONNREFUSED) {
		s.p.endpointFailed(s.ps, sess.be, true, "udp refused", err)
	}
	sess.close() // the next datagram picks again
}

// session returns the client's session, creating one when there is none or
// when its endpoint was removed or ejected (the session moves). It returns
// nil when the datagram must be dropped (cap reached, no endpoint). A new
// session takes its replies' source from datagram i of b.
func (s *udpServer) session(caddr netip.AddrPort, name *sockName, b *udpBatch, i int) *udpSession {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sess := s.sessions[caddr]; sess != nil {
		if !sess.be.removed.Load() && sess.be.health.usable(mono(), true) {
			return sess
		}
		delete(s.sessions, caddr)
		sess.closeLocked()
	}
	ps := s.ps
	if ps.stats.udpActive.Load() >= int64(s.p.cfg.UDPMaxSessions) && !s.evictIdleLocked() {
		ps.stats.udpCapDrops.Add(1)
		s.logCap()
		return nil
	}
	client := caddr.Addr().Unmap()
	var t tried
	for t.n < len(s.p.cfg.RetryTimeouts) {
		be, _ := ps.bal.pick(client, &t, true)
		if be == nil {
			ps.stats.noEndpoint.Add(1)
			return nil
		}
		t.add(be)
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(be.addr))
		if err != nil {
			be.dialFails.Add(1)
			ps.bal.forget(client)
			continue
		}
		rc, err := c.SyscallConn()
		if err != nil {
			_ = c.Close() // never used
			be.dialFails.Add(1)
			continue
		}
		sess := &udpSession{srv: s, client: caddr, name: *name, ctrl: pktinfoCmsg(b.local(i)), be: be, conn: c, rc: rc}
		sess.last.Store(mono())
		s.sessions[caddr] = sess
		ps.stats.udpActive.Add(1)
		udpMemOpened()
		s.p.fds.other.Add(1)
		ps.stats.udpTotal.Add(1)
		be.active.Add(1)
		be.total.Add(1)
		s.p.wg.Add(1)
		go sess.proxyReplies()
		return sess
	}
	ps.stats.dialFailed.Add(1)
	return nil
}

// udpEvictIdle is how long a session must have been idle before a new
// client at the cap takes its place: a DNS query's session, answered at
// once, is done long before --udp-timeout, which only keeps the reply path
// for slow answers.
const udpEvictIdle = time.Second

// evictIdleLocked makes room at the session cap by closing this server's
// longest-idle session, if it has been idle for udpEvictIdle (as conntrack
// drops old unreplied entries when its table is full). It reports whether
// it closed one. The scan is linear, and only runs at the cap. Callers hold
// s.mu.
func (s *udpServer) evictIdleLocked() bool {
	now := mono()
	var victim *udpSession
	oldest := now - int64(udpEvictIdle)
	for _, sess := range s.sessions {
		if l := sess.last.Load(); l <= oldest {
			victim, oldest = sess, l
		}
	}
	if victim == nil {
		return false
	}
	delete(s.sessions, victim.client)
	victim.closeLocked()
	s.ps.stats.udpEvictions.Add(1)
	return true
}

// logCap logs the session cap once per burst (at most every 10s).
func (s *udpServer) logCap() {
	now := mono()
	last := s.ps.stats.udpCapLogAt.Load()
	if last != 0 && now-last < int64(10*time.Second) || !s.ps.stats.udpCapLogAt.CompareAndSwap(last, now) {
		return
	}
	s.ps.log.Warn().Int("cap", s.p.cfg.UDPMaxSessions).Uint64("dropped_total", s.ps.stats.udpCapDrops.Load()).
		Msg("UDP session cap reached; dropping datagrams of new clients")
}

func (s *udpServer) closeSessions() {
	s.mu.Lock()
	for k, sess := range s.sessions {
		delete(s.sessions, k)
		sess.closeLocked()
	}
	s.mu.Unlock()
}

// proxyReplies relays the endpoint's replies to the client, a batch per
// recvmmsg/sendmmsg, until the session has been idle for UDPIdleTimeout
// (either way) or its socket fails. A reply readmits an ejected endpoint;
// ICMP refused ejects it.
//
// The read deadline is armed once per idle period, not per datagram: when
// it fires while the session is still busy the loop re-arms it from the
// last datagram's time.
func (sess *udpSession) proxyReplies() {
	s := sess.srv
	defer s.p.wg.Done()
	defer sess.close()
	rc := sess.rc
	b := newUDPBatch(false)
	idle := int64(s.p.cfg.UDPIdleTimeout)
	armed := false
	for {
		if !armed {
			deadline := sess.last.Load() + idle
			if mono() >= deadline {
				return
			}
			if err := sess.conn.SetReadDeadline(monoTime(deadline)); err != nil {
				return
			}
			armed = true
		}
		n, err := b.recv(rc)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				armed = false // re-check: client datagrams may have moved last
				continue
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				s.p.endpointFailed(s.ps, sess.be, true, "udp refused", err)
			}
			return
		}
		sess.last.Store(mono())
		if sess.be.health.ejected.Load() {
			s.p.readmit(s.ps, sess.be, "udp reply", false)
		}
		err = b.sendAll(s.rc, &sess.name, sess.ctrl) // a refused reply is lost: UDP's contract
		b.release()
		sess.answered(n) // after the send: a shutdown closes the listen socket once none is awaited
		if errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

// forwarded records n client datagrams sent to the endpoint.
func (sess *udpSession) forwarded(n int) { sess.unanswered.Add(int64(n)) }

// answered records n replies: each answers one forwarded datagram.
func (sess *udpSession) answered(n int) {
	for {
		u := sess.unanswered.Load()
		if u == 0 || sess.unanswered.CompareAndSwap(u, max(u-int64(n), 0)) {
			return
		}
	}
}

// close ends the session once: its socket, its map entry, its counters.
func (sess *udpSession) close() {
	s := sess.srv
	s.mu.Lock()
	if s.sessions[sess.client] == sess {
		delete(s.sessions, sess.client)
	}
	sess.closeLocked()
	s.mu.Unlock()
}

// closeLocked is close without the map; callers hold srv.mu.
func (sess *udpSession) closeLocked() {
	sess.once.Do(func() {
		_ = sess.conn.Close() // ends proxyReplies
		sess.srv.ps.stats.udpActive.Add(-1)
		if udpMemClosed() {
			p := sess.srv.p
			p.wg.Add(1) // a session's goroutine is still counted: never 0 here
			go func() {
				defer p.wg.Done()
				releaseUDPMem()
			}()
		}
		sess.srv.p.fds.other.Add(-1)
		sess.be.active.Add(-1)
	})
}
