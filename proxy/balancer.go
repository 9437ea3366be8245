package proxy

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/uproxy/uproxy/svc"
)

// clockBase anchors mono(): monotonic nanoseconds since process start, cheap
// to store in atomics and immune to wall-clock steps.
var clockBase = time.Now()

func mono() int64 { return int64(time.Since(clockBase)) }

// monoTime converts a mono() value back to wall time for display.
func monoTime(ns int64) time.Time { return clockBase.Add(time.Duration(ns)) }

// Endpoint tiers (KEP-1669): ready endpoints take new connections; serving
// and terminating ones only when no ready one is usable.
const (
	tierReady uint32 = iota
	tierTerminating
)

// backend is one endpoint address of one service port. It lives as long as
// the address stays in the port's endpoint set, so its health and counters
// survive endpoint updates that keep it. All fields are atomics: picks,
// dials and the prober touch them without locks.
type backend struct {
	addr netip.AddrPort
	tier atomic.Uint32 // tierReady or tierTerminating, updated with each set
	// removed is set when the address leaves the endpoint set: probes stop,
	// affinity entries and UDP sessions pointing here move elsewhere.
	removed atomic.Bool
	health  backendHealth

	active    atomic.Int64  // open TCP connections / UDP sessions
	total     atomic.Uint64 // connections / sessions started
	dialFails atomic.Uint64 // failed dials and early resets
}

// epSet is an immutable endpoint set; a port's balancer swaps whole sets.
type epSet struct {
	all   []*backend     // every endpoint, in the order given
	info  []svc.Endpoint // info[i] describes all[i]
	ready []*backend     // Ready endpoints
	term  []*backend     // Serving and Terminating endpoints (not Ready)
}

// balancer chooses endpoints for one service port. pick never blocks on an
// endpoint update and does not allocate (see BenchmarkPick); only a
// first-seen ClientIP affinity entry allocates (map growth).
type balancer struct {
	set atomic.Pointer[epSet]
	rr  atomic.Uint32

	clientIP   atomic.Bool  // session affinity ClientIP
	affTimeout atomic.Int64 // nanoseconds
	aff        affinityTable
}

// setEndpoints builds a new set from eps, reusing the backends of addresses
// already present, and swaps it in. It returns the backends that left the
// set and those whose conditions changed (which the caller readmits).
// Duplicate addresses keep their first occurrence. It is called by the
// Proxier's single update path only.
func (b *balancer) setEndpoints(eps []svc.Endpoint) (gone, changed []*backend) {
	old := b.set.Load()
	prev := map[netip.AddrPort]int{}
	if old != nil {
		for i, be := range old.all {
			prev[be.addr] = i
		}
	}
	s := &epSet{}
	seen := make(map[netip.AddrPort]bool, len(eps))
	for _, ep := range eps {
		if !ep.Addr.IsValid() || seen[ep.Addr] {
			continue
		}
		var be *backend
		if i, ok := prev[ep.Addr]; ok {
			be = old.all[i]
			if old.info[i] != ep {
				changed = append(changed, be)
			}
		} else {
			be = &backend{addr: ep.Addr}
		}
		switch {
		case ep.Ready:
			be.tier.Store(tierReady)
			s.ready = append(s.ready, be)
		case ep.Serving && ep.Terminating:
			be.tier.Store(tierTerminating)
			s.term = append(s.term, be)
		default:
			continue // neither ready nor serving: not a backend
		}
		seen[ep.Addr] = true
		s.all = append(s.all, be)
		s.info = append(s.info, ep)
	}
	b.set.Store(s)
	if old != nil {
		for _, be := range old.all {
			if !seen[be.addr] {
				be.removed.Store(true)
				gone = append(gone, be)
			}
		}
	}
	return gone, changed
}

// setAffinity applies a port's session affinity; turning it off forgets
// every client.
func (b *balancer) setAffinity(a svc.Affinity) {
	t := a.Timeout
	if t <= 0 {
		t = svc.DefaultAffinityTimeout
	}
	b.affTimeout.Store(int64(t))
	if b.clientIP.Swap(a.ClientIP) && !a.ClientIP {
		b.aff.reset()
	}
}

// tried is the list of endpoints a connection already tried; a fixed array so
// that picking allocates nothing.
type tried struct {
	be [maxTries]*backend
	n  int
}

func (t *tried) has(be *backend) bool {
	for i := range t.n {
		if t.be[i] == be {
			return true
		}
	}
	return false
}

func (t *tried) add(be *backend) {
	if t.n < len(t.be) {
		t.be[t.n] = be
		t.n++
	}
}

// pick chooses an endpoint for a client, or nil when the port has none.
// Order: the client's affinity endpoint (first try only, while it is still
// in the set, ready or the best tier left, and not ejected); then round robin
// over healthy untried ready endpoints, then healthy untried
// serving-terminating ones; then panic mode (Envoy): ejected untried ones,
// ready first; finally any endpoint but the one that failed last (a single
// endpoint is retried with the next timeout of the ladder). fresh reports whether the
// endpoint is healthy and untried. udp selects UDP's readmission rule (an
// ejected endpoint whose time is up is tried again; see health.go).
func (b *balancer) pick(client netip.Addr, t *tried, udp bool) (be *backend, fresh bool) {
	s := b.set.Load()
	if s == nil || len(s.all) == 0 {
		return nil, false
	}
	now := mono()
	sticky := b.clientIP.Load()
	if sticky && t.n == 0 {
		if be := b.aff.lookup(client, now, b.affTimeout.Load()); be != nil &&
			!be.removed.Load() && be.health.usable(now, udp) &&
			(be.tier.Load() == tierReady || len(s.ready) == 0) {
			return be, true
		}
	}
	start := int(b.rr.Add(1) - 1)
	be = b.scan(s.ready, start, t, now, udp, true)
	if be == nil {
		be = b.scan(s.term, start, t, now, udp, true)
	}
	fresh = be != nil
	if be == nil {
		be = b.scan(s.ready, start, t, now, udp, false)
	}
	if be == nil {
		be = b.scan(s.term, start, t, now, udp, false)
	}
	if be == nil {
		// Every endpoint was tried: go round again, avoiding the one that
		// just failed when there is another.
		be = s.all[start%len(s.all)]
		if len(s.all) > 1 && t.n > 0 && be == t.be[t.n-1] {
			be = s.all[(start+1)%len(s.all)]
		}
	}
	if sticky {
		b.aff.store(client, be, now)
	}
	return be, fresh
}

// scan walks list round robin from start and returns the first untried
// endpoint that is healthy (or, with healthy false, any untried one).
func (b *balancer) scan(list []*backend, start int, t *tried, now int64, udp, healthy bool) *backend {
	n := len(list)
	for i := range n {
		be := list[(start+i)%n]
		if t.has(be) {
			continue
		}
		if healthy && !be.health.usable(now, udp) {
			continue
		}
		return be
	}
	return nil
}

// forget drops a client's affinity (a retry re-picks; the successful
// endpoint becomes the new affinity).
func (b *balancer) forget(client netip.Addr) {
	if b.clientIP.Load() {
		b.aff.remove(client)
	}
}

// affinityTable maps client IPs to their endpoint.
type affinityTable struct {
	mu sync.Mutex // guards m
	m  map[netip.Addr]affEntry
}

type affEntry struct {
	be   *backend
	last int64 // mono() of the last use
}

func (a *affinityTable) lookup(client netip.Addr, now, timeout int64) *backend {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.m[client]
	if !ok || now-e.last > timeout {
		return nil
	}
	e.last = now
	a.m[client] = e
	return e.be
}

func (a *affinityTable) store(client netip.Addr, be *backend, now int64) {
	a.mu.Lock()
	if a.m == nil {
		a.m = make(map[netip.Addr]affEntry)
	}
	a.m[client] = affEntry{be: be, last: now}
	a.mu.Unlock()
}

func (a *affinityTable) remove(client netip.Addr) {
	a.mu.Lock()
	delete(a.m, client)
	a.mu.Unlock()
}

func (a *affinityTable) reset() {
	a.mu.Lock()
	a.m = nil
	a.mu.Unlock()
}

// sweep drops entries idle longer than timeout or pointing at removed
// endpoints; the Proxier's janitor calls it.
func (a *affinityTable) sweep(now, timeout int64) {
	a.mu.Lock()
	for k, e := range a.m {
		if now-e.last > timeout || e.be.removed.Load() {
			delete(a.m, k)
		}
	}
	a.mu.Unlock()
}

func (a *affinityTable) len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.m)
}
