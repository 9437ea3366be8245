package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Passive health checking.
//
// An endpoint is ejected (skipped by new picks of every client of its port)
// when a dial to it fails with an endpoint fault (refused, unreachable,
// timeout; see endpointFault) or when it resets or closes a connection
// within Config.EarlyResetWindow of the connect before sending a byte and
// before any byte of the client's was sent to it (a connect-level failure;
// see earlyFailure in splice.go), or when it resets Config.EjectAfterResets
// connections in a row before its first byte after the client's bytes had
// reached it (see resetBeforeAnswer in splice.go: those requests are not
// replayed, but an endpoint that accepts and resets everything stops taking
// new ones after a few). Ejection lasts EjectBase,
// doubling per repeated ejection up to EjectMax; an endpoint that stayed
// admitted for 2×EjectMax starts over at EjectBase.
//
// Readmission: for TCP only after an active probe made when the ejection
// time is up succeeds: a TCP connect that is neither reset nor closed by the
// endpoint within EarlyResetWindow (an endpoint that accepts and resets would
// pass a bare connect); a failed probe ejects again with the next backoff.
// For UDP there is no generic probe: once the ejection time is up the
// endpoint takes sessions again on trial and its next reply readmits it,
// while a failed trial (ICMP refused) ejects it again. An endpoint whose
// conditions change in UpdateEndpoints is readmitted at once with a fresh
// backoff. When every usable endpoint of a port is ejected the balancer
// picks among them anyway (panic mode, as Envoy).
//
// Logging: one info line per ejection and per readmission, never per
// connection; re-ejections after failed probes are debug.

// backendHealth is one endpoint's ejection state. Reads are lock-free
// atomics; transitions take mu.
type backendHealth struct {
	mu          sync.Mutex   // serialises ejection state transitions
	ejected     atomic.Bool  // skipped by healthy picks
	until       atomic.Int64 // mono(): when the current ejection may end (probe or UDP trial)
	count       atomic.Int32 // consecutive ejections, the backoff exponent
	lastReadmit atomic.Int64 // mono() of the last readmission
	probing     atomic.Bool  // a probe goroutine runs for this endpoint
	// resetsInRow counts connections reset before the endpoint's first
	// byte since its last answer; not cleared by an ejection, so after a
	// probe's readmission one more such reset ejects again (an update of
	// the endpoint by the API clears it).
	resetsInRow atomic.Int32

	failures  atomic.Uint64 // endpoint faults seen
	ejections atomic.Uint64
	probeOK   atomic.Uint64
	probeFail atomic.Uint64
}

// usable reports whether healthy picks may choose the endpoint now.
func (h *backendHealth) usable(now int64, udp bool) bool {
	if !h.ejected.Load() {
		return true
	}
	return udp && now >= h.until.Load()
}

// backoff returns the ejection time for the n-th consecutive ejection.
func (cfg *Config) backoff(n int32) time.Duration {
	d := cfg.EjectBase
	for i := int32(1); i < n && d < cfg.EjectMax; i++ {
		d *= 2
	}
	return min(d, cfg.EjectMax)
}

// endpointFailed records an endpoint fault of be and ejects it (unless
// ejection is disabled or it is ejected already). For TCP it starts the
// endpoint's probe goroutine.
func (p *Proxier) endpointFailed(ps *portState, be *backend, udp bool, reason string, err error) {
	be.dialFails.Add(1)
	h := &be.health
	h.failures.Add(1)
	if p.cfg.DisableEjection || be.removed.Load() {
		return
	}
	h.mu.Lock()
	now := mono()
	if h.ejected.Load() {
		if udp && now >= h.until.Load() { // a failed UDP trial
			h.until.Store(now + int64(p.cfg.backoff(h.count.Add(1))))
		}
		h.mu.Unlock()
		return
	}
	if now-h.lastReadmit.Load() > 2*int64(p.cfg.EjectMax) {
		h.count.Store(0)
	}
	d := p.cfg.backoff(h.count.Add(1))
	h.until.Store(now + int64(d))
	h.ejected.Store(true)
	h.ejections.Add(1)
	h.mu.Unlock()
	ps.log.Info().Str("endpoint", be.addr.String()).Str("reason", reason).AnErr("error", err).
		Dur("for", d).Msg("endpoint ejected")
	if !udp {
		p.startProbe(ps, be)
	}
}

// readmit ends be's ejection; updated also resets the backoff (the API
// changed the endpoint).
func (p *Proxier) readmit(ps *portState, be *backend, why string, updated bool) {
	h := &be.health
	h.mu.Lock()
	was := h.ejected.Swap(false)
	h.lastReadmit.Store(mono())
	if updated {
		h.count.Store(0)
		h.resetsInRow.Store(0)
	}
	h.mu.Unlock()
	if was {
		ps.log.Info().Str("endpoint", be.addr.String()).Str("reason", why).Msg("endpoint readmitted")
	}
}

func (p *Proxier) startProbe(ps *portState, be *backend) {
	if !be.health.probing.CompareAndSwap(false, true) {
		return
	}
	p.wg.Add(1)
	go p.probeLoop(ps, be)
}

// probeLoop probes an ejected TCP endpoint whenever its ejection time is up,
// until it is readmitted, removed, or the Proxier stops.
func (p *Proxier) probeLoop(ps *portState, be *backend) {
	defer p.wg.Done()
	h := &be.health
	for {
		if !h.ejected.Load() || be.removed.Load() {
			h.probing.Store(false)
			// An ejection that raced with the exit takes the loop back.
			if h.ejected.Load() && !be.removed.Load() && h.probing.CompareAndSwap(false, true) {
				continue
			}
			return
		}
		if wait := time.Duration(h.until.Load() - mono()); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-p.ctx.Done():
				t.Stop()
				h.probing.Store(false)
				return
			case <-t.C:
			}
			continue
		}
		err := p.probe(be)
		if p.ctx.Err() != nil {
			h.probing.Store(false)
			return
		}
		if err == nil {
			h.probeOK.Add(1)
			p.readmit(ps, be, "probe succeeded", false)
			continue
		}
		h.probeFail.Add(1)
		h.mu.Lock()
		b := p.cfg.backoff(h.count.Add(1))
		h.until.Store(mono() + int64(b))
		h.mu.Unlock()
		ps.log.Debug().Str("endpoint", be.addr.String()).Err(err).Dur("for", b).Msg("probe failed, endpoint stays ejected")
	}
}

// probe connects to be and watches the connection for EarlyResetWindow: a
// reset or close by the endpoint in that time fails the probe, as a failed
// connect does. Bytes the endpoint sends (a banner) or silence pass.
func (p *Proxier) probe(be *backend) error {
	d := net.Dialer{Timeout: p.cfg.ProbeTimeout}
	c, err := d.DialContext(p.ctx, "tcp", be.addr.String())
	if err != nil {
		return err
	}
	defer c.Close() // a probe carries no data; its close error means nothing
	_ = c.SetReadDeadline(time.Now().Add(p.cfg.EarlyResetWindow))
	var b [1]byte
	_, err = c.Read(b[:])
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return fmt.Errorf("endpoint ended the probe connection: %w", err)
}

// connectTimes keeps the last connect durations of a port in a ring and
// their p99, recomputed every 16 samples (a sort of 64 values on the
// stack), so the dial path only does two atomic stores.
type connectTimes struct {
	ring [64]atomic.Int64 // nanoseconds
	n    atomic.Uint64
	p99  atomic.Int64
}

func (c *connectTimes) record(d int64) {
	i := c.n.Add(1)
	c.ring[(i-1)%uint64(len(c.ring))].Store(d)
	if i <= 16 || i%16 == 0 {
		c.recompute(min(i, uint64(len(c.ring))))
	}
}

func (c *connectTimes) recompute(k uint64) {
	if k == 0 {
		return
	}
	var a [64]int64
	for j := range k {
		a[j] = c.ring[j].Load()
	}
	s := a[:k]
	slices.Sort(s)
	idx := (99*int(k)+99)/100 - 1
	c.p99.Store(s[idx])
}

// firstTimeout is the adaptive dial timeout: DialTimeoutMultiple × the
// recent connect p99, within [DialTimeoutFloor, DialTimeoutCeiling]; the
// ceiling until there are samples.
func (p *Proxier) firstTimeout(ps *portState) time.Duration {
	v := ps.connect.p99.Load()
	if v == 0 {
		return p.cfg.DialTimeoutCeiling
	}
	t := time.Duration(v) * time.Duration(p.cfg.DialTimeoutMultiple)
	return min(max(t, p.cfg.DialTimeoutFloor), p.cfg.DialTimeoutCeiling)
}

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
