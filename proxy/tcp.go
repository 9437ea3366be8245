package proxy

import (
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// Accept error backoff: 5ms doubling to 1s, reset by a successful accept.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
	acceptLogEvery   = 10 * time.Second
)

// acceptLoop accepts connections on ln until ln is closed. It never waits on
// a dial: every connection goes to its own serveTCP goroutine at once (a dead
// endpoint must not stall other clients, kubernetes#12242). Accept errors
// never end the loop or panic: they are counted, logged at most once per
// acceptLogEvery, and back off; on fd exhaustion (EMFILE/ENFILE) pending
// connections are shed through the reserve fd so clients see a reset instead
// of hanging, and service resumes by itself when fds free up.
func (p *Proxier) acceptLoop(ps *portState, ln *net.TCPListener) {
	defer p.wg.Done()
	var delay time.Duration
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			p.acceptErrors.Add(1)
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				p.reserve.shed(ln, &p.shed)
			}
			delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
			p.logAcceptError(ps, err, delay)
			if !sleepCtx(p.ctx, delay) {
				return
			}
			continue
		}
		delay = 0
		if !p.fds.admit(p.handlers.Load()) {
			p.shedConn(ps, c)
			continue
		}
		p.handlers.Add(1)
		p.wg.Add(1)
		go p.serveTCP(ps, c)
	}
}

// acceptLogDue reports whether an accept-side warning (accept errors,
// shedding) may be logged now: at most one per acceptLogEvery for the whole
// Proxier.
func (p *Proxier) acceptLogDue() bool {
	now := mono()
	last := p.acceptLogAt.Load()
	return (last == 0 || now-last >= int64(acceptLogEvery)) && p.acceptLogAt.CompareAndSwap(last, now)
}

// shedConn resets a connection that does not fit the fd budget.
func (p *Proxier) shedConn(ps *portState, c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
	p.shed.Add(1)
	if !p.acceptLogDue() {
		return
	}
	p.log.Warn().Str("service", ps.label).Int64("connections", p.handlers.Load()).
		Uint64("shed_total", p.shed.Load()).
		Msg("open-file limit reached; shedding new connections (raise RLIMIT_NOFILE)")
}

// logAcceptError logs at most one line per acceptLogEvery for the whole
// Proxier, with the number of errors since the previous line.
func (p *Proxier) logAcceptError(ps *portState, err error, delay time.Duration) {
	if !p.acceptLogDue() {
		return
	}
	total := p.acceptErrors.Load()
	p.log.Warn().Str("service", ps.label).Err(err).Dur("backoff", delay).
		Uint64("accept_errors_total", total).Uint64("shed_total", p.shed.Load()).
		Msg("accept failing; backing off and shedding new connections")
}

// serveTCP dials an endpoint for one accepted connection and relays it. It
// owns client until the relay takes it (see tcpRelay).
func (p *Proxier) serveTCP(ps *portState, client *net.TCPConn) {
	defer p.wg.Done()
	defer p.handlers.Add(-1)
	ps.stats.total.Add(1)
	r := &tcpRelay{p: p, ps: ps, client: client, committed: p.cfg.DisableEjection}
	if a, ok := client.RemoteAddr().(*net.TCPAddr); ok {
		r.caddr = a.AddrPort()
		r.caddr = netipUnmap(r.caddr)
	}
	bc, be, err := p.dialBackend(p.ctx, ps, r.caddr.Addr(), &r.tried)
	if err != nil {
		if errors.Is(err, errNoEndpoints) {
			ps.stats.noEndpoint.Add(1)
		} else {
			ps.stats.dialFailed.Add(1)
		}
		ps.log.Debug().Str("client", r.caddr.String()).Err(err).Msg("connection refused with reset")
		_ = client.SetLinger(0)
		_ = client.Close() // RST: the client sees the failure at once
		return
	}
	r.backend, r.be, r.connectedAt = bc, be, mono()
	be.active.Add(1)
	be.total.Add(1)
	ps.stats.active.Add(1)
	p.conns.add(r)
	r.run()
	p.conns.remove(r)
	ps.stats.active.Add(-1)
}

// fdReserve holds one spare file descriptor. When accept fails for lack of
// fds, shed frees it, accepts and resets pending connections, and takes it
// back (the libev/nginx trick), so an exhausted process still answers
// connection attempts at once instead of leaving them in the backlog.
type fdReserve struct {
	mu sync.Mutex // guards f
	f  *os.File
}

func (r *fdReserve) open() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		r.f, _ = os.Open(os.DevNull) // without a reserve, shedding waits for the next try
	}
}

func (r *fdReserve) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f != nil {
		_ = r.f.Close()
		r.f = nil
	}
}

// shed resets up to 256 pending connections of ln, counting them in n.
func (r *fdReserve) shed(ln *net.TCPListener, n interface{ Add(uint64) uint64 }) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		// Lost to a socket() that raced the last shed: without a spare fd
		// nothing can be accepted until one frees.
		if r.f, _ = os.Open(os.DevNull); r.f == nil {
			return
		}
	}
	_ = r.f.Close()
	r.f = nil
	_ = ln.SetDeadline(time.Now().Add(time.Millisecond))
	for range 256 {
		c, err := ln.AcceptTCP()
		if err != nil {
			break
		}
		_ = c.SetLinger(0)
		_ = c.Close()
		n.Add(1)
	}
	_ = ln.SetDeadline(time.Time{})
	r.f, _ = os.Open(os.DevNull)
}
