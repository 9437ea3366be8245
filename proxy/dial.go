package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
)

// errNoEndpoints: the port has no endpoint at all.
var errNoEndpoints = errors.New("no endpoints")

// keepAlive is the TCP keepalive both legs of a proxied connection use.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 9}

// dialBackend picks an endpoint for client and connects to it, retrying on a
// different endpoint after a failure. Tries are bounded by the retry ladder
// (Config.RetryTimeouts). Try i's timeout is ladder[i]; when the endpoint is
// healthy and untried it is the adaptive timeout × 2^i instead, if lower, so
// that a blackholed endpoint costs tens of milliseconds; the last try always
// gets the full ladder timeout (a slow but live endpoint, or our own
// scheduling delay under load, must not fail a connection that legacy
// would have completed). A failed try forgets
// the client's affinity; the endpoint that answers becomes the new one.
//
// On success the caller owns the returned connection. t carries the
// endpoints already tried (the early-reset retry in splice.go passes its own).
func (p *Proxier) dialBackend(ctx context.Context, ps *portState, client netip.Addr, t *tried) (*net.TCPConn, *backend, error) {
	ladder := p.cfg.RetryTimeouts
	var lastErr error
	for t.n < len(ladder) {
		i := t.n
		be, fresh := ps.bal.pick(client, t, false)
		if be == nil {
			return nil, nil, errNoEndpoints
		}
		t.add(be)
		timeout := ladder[i]
		if fresh && i < len(ladder)-1 {
			timeout = min(timeout, p.firstTimeout(ps)<<i)
		}
		start := mono()
		c, err := p.dialTCP(ctx, be.addr, timeout)
		if err == nil {
			ps.connect.record(mono() - start)
			return c, be, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
		if endpointFault(err) {
			p.endpointFailed(ps, be, false, "dial failed", err)
		} else {
			be.dialFails.Add(1)
		}
		ps.stats.retries.Add(1)
		ps.bal.forget(client)
	}
	return nil, nil, fmt.Errorf("%d tries failed, last: %w", t.n, lastErr)
}

func (p *Proxier) dialTCP(ctx context.Context, addr netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: timeout, KeepAliveConfig: keepAlive}
	c, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// endpointFault reports whether a dial error is the endpoint's fault (so it
// is ejected) rather than ours (fd or ephemeral port exhaustion).
func endpointFault(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTDOWN) ||
		errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, syscall.ECONNRESET)
}
