package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/uproxy/uproxy/svc"
)

// Proxier is the data plane: it implements svc.Sink. SyncPorts and
// UpdateEndpoints are called from one goroutine (watch/); Snapshot, Describe,
// Collector and Shutdown may be called from any goroutine.
type Proxier struct {
	cfg     Config
	portals svc.PortalSyncer // nil: no portal rules (direct mode, tests)
	log     zerolog.Logger

	// ctx ends when Shutdown gives up draining; it stops dials, probes and
	// the janitor.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the Proxier starts

	mu         sync.Mutex // guards ports, alloc, closing, skipLogged
	ports      map[svc.PortName]*portState
	alloc      *portAllocator // nil: kernel-chosen proxy ports
	closing    bool
	skipLogged map[string]bool // direct-mode portal addresses reported as not local

	conns    connTable    // established relays, for the janitor and Shutdown
	handlers atomic.Int64 // serveTCP goroutines running (dialing or relaying)

	reserve      fdReserve
	fds          *fdBudget
	acceptErrors atomic.Uint64
	shed         atomic.Uint64
	acceptLogAt  atomic.Int64
	idleClosed   atomic.Uint64
}

var _ svc.Sink = (*Proxier)(nil)

// errClosed is returned by SyncPorts after Shutdown.
var errClosed = errors.New("proxier is shut down")

// portState is everything uproxy keeps for one service port: it exists while
// the port is synced or has endpoints.
type portState struct {
	name    svc.PortName
	label   string // name.String(), the metrics and log label
	log     zerolog.Logger
	spec    atomic.Pointer[svc.Port] // nil while only endpoints are known
	bal     balancer
	connect connectTimes
	stats   portStats
	lst     *portListener // guarded by Proxier.mu
}

// portStats are a port's counters; bytes are added when a copy ends.
type portStats struct {
	active      atomic.Int64 // relayed TCP connections open
	total       atomic.Uint64
	bytesUp     atomic.Uint64 // client → endpoint
	bytesDown   atomic.Uint64 // endpoint → client
	noEndpoint  atomic.Uint64 // connections reset: no endpoint
	dialFailed  atomic.Uint64 // connections reset: every try failed
	retries     atomic.Uint64 // dial tries that failed and were retried
	earlyResets atomic.Uint64 // endpoint reset right after connect
	replays     atomic.Uint64 // connections moved to another endpoint after an early reset
	resetsCut   atomic.Uint64 // connections reset before the endpoint's answer, passed to the client

	udpActive    atomic.Int64
	udpTotal     atomic.Uint64
	udpCapDrops  atomic.Uint64 // datagrams dropped: session cap reached
	udpEvictions atomic.Uint64 // idle sessions closed to make room at the cap
	udpCapLogAt  atomic.Int64
}

// New returns a Proxier. portals receives the complete portal set after every
// SyncPorts in iptables mode; it may be nil (direct mode, or no rules).
func New(cfg Config, portals svc.PortalSyncer, log zerolog.Logger) (*Proxier, error) {
	cfg = cfg.withDefaults()
	if cfg.Mode != ModeIPTables && cfg.Mode != ModeDirect {
		return nil, fmt.Errorf("portal mode %q: want %q or %q", cfg.Mode, ModeIPTables, ModeDirect)
	}
	if cfg.PortRange.Size < 0 || !cfg.PortRange.Empty() && (cfg.PortRange.Base < 1 || cfg.PortRange.Base+cfg.PortRange.Size-1 > 65535) {
		return nil, fmt.Errorf("proxy port range %d+%d is outside 1-65535", cfg.PortRange.Base, cfg.PortRange.Size)
	}
	p := &Proxier{
		cfg:        cfg,
		portals:    portals,
		log:        log.With().Str("component", "proxy").Logger(),
		ports:      map[svc.PortName]*portState{},
		skipLogged: map[string]bool{},
	}
	if !cfg.PortRange.Empty() {
		p.alloc = newPortAllocator(cfg.PortRange)
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.fds = newFDBudget(cfg.FDHeadroom)
	p.reserve.open()
	p.wg.Add(2)
	go p.janitor()
	go p.watchGroups()
	return p, nil
}

// portLocked returns the state of a port, creating it. Callers hold p.mu.
func (p *Proxier) portLocked(name svc.PortName) *portState {
	ps := p.ports[name]
	if ps == nil {
		ps = &portState{name: name, label: name.String()}
		ps.log = p.log.With().Str("service", ps.label).Logger()
		p.ports[name] = ps
	}
	return ps
}

// gcLocked forgets a port that is neither synced nor has endpoints.
func (p *Proxier) gcLocked(ps *portState) {
	if ps.spec.Load() == nil && ps.lst == nil {
		if s := ps.bal.set.Load(); s == nil || len(s.all) == 0 {
			delete(p.ports, ps.name)
		}
	}
}

// SyncPorts makes the listeners match ports (see svc.Sink), then hands the
// complete portal set to the PortalSyncer. Only what changed is touched: a
// port keeps its listener (and in iptables mode its proxy port) unless its
// protocol changes or, in direct mode, its listen addresses change. A port
// that fails to get a listener is reported in the joined error and left out
// of the portal set; the others proceed.
func (p *Proxier) SyncPorts(ctx context.Context, ports []svc.Port) error {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		return errClosed
	}
	desired := make(map[svc.PortName]svc.Port, len(ports))
	for _, sp := range ports {
		desired[sp.Name] = sp
	}
	for name, ps := range p.ports {
		if _, ok := desired[name]; !ok {
			ps.spec.Store(nil)
			if ps.lst != nil {
				p.closeListenerLocked(ps, "service port removed")
			}
			p.gcLocked(ps)
		}
	}
	var errs []error
	names := make([]svc.PortName, 0, len(desired))
	for name := range desired {
		names = append(names, name)
	}
	sort.Slice(names, func(i, j int) bool { return names[i].String() < names[j].String() })
	for _, name := range names {
		sp := desired[name]
		ps := p.portLocked(name)
		ps.spec.Store(&sp)
		ps.bal.setAffinity(sp.Affinity)
		if err := p.reconcileLocked(ps, sp); err != nil {
			errs = append(errs, fmt.Errorf("service port %s: %w", name, err))
		}
	}
	var portals []svc.Portal
	if p.cfg.Mode == ModeIPTables {
		for _, name := range names {
			if ps := p.ports[name]; ps.lst != nil {
				portals = append(portals, svc.Portal{Port: desired[name], ProxyPort: ps.lst.proxyPort})
			}
		}
	}
	p.mu.Unlock()
	if p.portals != nil && p.cfg.Mode == ModeIPTables {
		if err := p.portals.SyncPortals(ctx, portals); err != nil {
			errs = append(errs, fmt.Errorf("sync portals: %w", err))
		}
	}
	if p.cfg.Sockets != nil {
		p.cfg.Sockets.Settle() // a previous run's sockets no port took are released
	}
	return errors.Join(errs...)
}

// UpdateEndpoints swaps the endpoint sets of the named ports (see svc.Sink).
// Picks in flight keep the set they loaded; endpoints whose conditions
// changed are readmitted if ejected; removed endpoints stop being probed and
// lose their affinity entries and UDP sessions, while their established TCP
// connections run until they end.
func (p *Proxier) UpdateEndpoints(eps map[svc.PortName][]svc.Endpoint) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, list := range eps {
		ps := p.ports[name]
		if ps == nil {
			if len(list) == 0 {
				continue
			}
			ps = p.portLocked(name)
		}
		_, changed := ps.bal.setEndpoints(list)
		for _, be := range changed {
			p.readmit(ps, be, "endpoint updated", true)
		}
		p.gcLocked(ps)
	}
}

// closeSettle is how long a listener keeps accepting at shutdown after its
// SYN filter is attached: handshakes in flight complete and the accept queue
// empties before close(2), which would reset them. Clients on the node
// complete a handshake in microseconds; remote NodePort clients get 100ms.
const (
	closeSettle    = 100 * time.Millisecond
	closeSettleMax = time.Second // then close even if connections still wait
)

// holderCheck is how long Shutdown waits to see whether the fd holder goes
// away too: when the pod is deleted it gets SIGTERM with uproxy and hangs up
// at once.
const holderCheck = 300 * time.Millisecond

// sharedLocked reports whether another instance listens on any of this
// proxier's proxy ports (counts: TCP listeners per port; ucounts:
// unconnected UDP sockets per address). Callers hold p.mu.
func (p *Proxier) sharedLocked(counts map[uint16]int, ucounts map[netip.AddrPort]int) bool {
	for _, ps := range p.ports {
		if ps.lst == nil {
			continue
		}
		for _, ln := range ps.lst.tcp {
			if counts[ln.Addr().(*net.TCPAddr).AddrPort().Port()] > 1 {
				return true
			}
		}
		for _, s := range ps.lst.udp {
			if ucounts[s.local] > 1 {
				return true
			}
		}
	}
	return false
}

// Shutdown stops accepting without resetting a client that already sent its
// SYN (see handover_linux.go), closes every listener (a UDP listener once
// the replies its sessions await arrived, see udpdrain.go), lets
// established TCP connections drain until ctx is done, then closes those
// left and waits for every goroutine of the Proxier. Portal rules are left in
// place. It logs how many connections drained and how many it cut, and
// returns an error naming the cut ones.
//
// With a SocketKeeper whose holder stays (only this container is being
// restarted, e.g. after a failed liveness probe) and no other instance on
// the proxy ports, it hands off instead: the listeners close here at once,
// the held copies keep queueing for the next run, and established
// connections and UDP replies drain for at most HandoffDrain, so that the
// next run starts soon.
func (p *Proxier) Shutdown(ctx context.Context) error {
	// Read outside p.mu: which ports another instance shares.
	counts, err := tcpListenerCounts()
	if err != nil {
		p.log.Warn().Err(err).Msg("cannot list listeners; assuming no other instance shares the proxy ports")
		counts = nil
	}
	ucounts, err := udpSocketCounts()
	if err != nil {
		p.log.Warn().Err(err).Msg("cannot list UDP sockets; unless handing off, UDP listeners close at once")
		ucounts = nil
	}
	migrate := migrateReqOn() // the kernel moves a closed listener's queue to the other instance
	holderStays := p.cfg.Sockets != nil && p.cfg.Sockets.HolderStays(holderCheck)
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		return nil
	}
	p.closing = true
	udp := &udpDrain{deadline: mono() + int64(udpDrainMax)}
	if holderStays && !p.sharedLocked(counts, ucounts) {
		udp.deadline = mono() + int64(p.cfg.HandoffDrain)
		p.handOffLocked(udp)
		p.mu.Unlock()
		p.log.Info().Dur("drain", p.cfg.HandoffDrain).
			Msg("the fd holder keeps the listening sockets for the next run: draining established connections and UDP replies briefly")
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.HandoffDrain)
		defer cancel()
	} else {
		settling := p.stopAcceptingLocked(counts, migrate, ucounts, udp)
		p.mu.Unlock()
		if len(settling) > 0 {
			p.settle(ctx, settling)
			p.mu.Lock()
			for _, ps := range settling {
				if ps.lst != nil {
					p.closeListenerLocked(ps, "shutdown")
				}
			}
			p.mu.Unlock()
		}
	}
	start := mono()
	open := p.handlers.Load()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for ctx.Err() == nil {
		if len(udp.ports) > 0 && p.udpDrainDone(udp) {
			p.closeUDPDrain(udp, "shutdown; replies delivered")
		}
		if p.handlers.Load() == 0 && len(udp.ports) == 0 {
			break
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
	p.closeUDPDrain(udp, "shutdown; the drain ended")
	left := p.handlers.Load()
	p.cancel()
	p.conns.closeAll()
	p.wg.Wait()
	p.reserve.close()
	p.log.Info().Int64("open", open).Int64("drained", max(open-left, 0)).Int64("cut", left).
		Dur("took", time.Duration(mono()-start)).Msg("connections at shutdown: drained, cut when the grace ended")
	if left > 0 {
		return fmt.Errorf("shutdown: closed %d connections still open when draining ended: %w", left, ctx.Err())
	}
	return nil
}

// settle waits closeSettle, then until the accept queues of the settling
// ports are empty, at most closeSettleMax in all or until ctx ends.
func (p *Proxier) settle(ctx context.Context, settling []*portState) {
	start := mono()
	if !sleepCtx(ctx, closeSettle) {
		return
	}
	var lns []*net.TCPListener
	p.mu.Lock()
	for _, ps := range settling {
		if ps.lst != nil {
			lns = append(lns, ps.lst.tcp...)
		}
	}
	p.mu.Unlock()
	for time.Duration(mono()-start) < closeSettleMax {
		waiting := 0
		for _, ln := range lns {
			if n, ok := acceptQueueLen(ln); ok {
				waiting += n
			}
		}
		if waiting == 0 || !sleepCtx(ctx, 5*time.Millisecond) {
			return
		}
	}
	p.log.Warn().Dur("waited", closeSettleMax).Msg("closing listeners with connections still in their accept queues")
}

// stopAcceptingLocked starts closing every listener without resetting a
// client: with migrate (tcp_migrate_req is on), a TCP port whose every
// listener shares its port with another instance (counts: listeners per
// port, nil when unknown) is closed at once (the kernel moves its queue to
// the other instance); a UDP port joins udp when stopUDPLocked keeps it open
// for its replies and is closed at once otherwise; the other TCP ports are
// steered to the other instance or get the SYN filter (stopTCPLocked) and
// are returned, to be closed after settle. Callers hold p.mu.
func (p *Proxier) stopAcceptingLocked(counts map[uint16]int, migrate bool, ucounts map[netip.AddrPort]int, udp *udpDrain) []*portState {
	var settling []*portState
	var steerErr, tcpSteerErr error
	for _, ps := range p.ports {
		l := ps.lst
		if l == nil {
			continue
		}
		if len(l.udp) > 0 {
			drain, err := p.stopUDPLocked(ps, ucounts)
			if drain {
				udp.ports = append(udp.ports, ps)
				continue
			}
			if err != nil && steerErr == nil {
				steerErr = fmt.Errorf("%s: %w", ps.label, err)
			}
		}
		if len(l.tcp) == 0 || p.cfg.NoGracefulClose {
			p.closeListenerLocked(ps, "shutdown")
			continue
		}
		shared := migrate && counts != nil
		for _, ln := range l.tcp {
			shared = shared && counts[ln.Addr().(*net.TCPAddr).AddrPort().Port()] > 1
		}
		if shared {
			p.closeListenerLocked(ps, "shutdown; the kernel moves its queue to the other instance")
			continue
		}
		if err := p.stopTCPLocked(ps, l, counts); err != nil && tcpSteerErr == nil {
			tcpSteerErr = fmt.Errorf("%s: %w", ps.label, err)
		}
		settling = append(settling, ps)
	}
	if tcpSteerErr != nil {
		p.log.Warn().Err(tcpSteerErr).Msg("cannot steer new TCP connections to the other instance; dropping their SYNs instead (clients retransmit after 1 s)")
	}
	if steerErr != nil {
		p.log.Warn().Err(steerErr).Msg("cannot steer new UDP datagrams to the other instance; closing shared UDP listeners at once (queued datagrams and awaited replies are lost)")
	}
	return settling
}

// connTable holds the established relays.
type connTable struct {
	mu     sync.Mutex // guards m and closed
	m      map[*tcpRelay]struct{}
	closed bool // after closeAll every relay added is expired at once
}

func (t *connTable) add(r *tcpRelay) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[*tcpRelay]struct{}{}
	}
	t.m[r] = struct{}{}
	if t.closed {
		r.expire()
	}
}

func (t *connTable) remove(r *tcpRelay) {
	t.mu.Lock()
	delete(t.m, r)
	t.mu.Unlock()
}

func (t *connTable) list() []*tcpRelay {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*tcpRelay, 0, len(t.m))
	for r := range t.m {
		out = append(out, r)
	}
	return out
}

func (t *connTable) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for r := range t.m {
		r.expire()
	}
}

// janitor bounds idle and half-closed TCP connections and sweeps affinity
// tables. Idleness comes from the kernel (TCP_INFO last data received on
// both sockets), so the copy path sets no per-read deadline and splice keeps
// working; the resolution is the sweep interval (a quarter of the smaller
// timeout, 10ms to 5s).
func (p *Proxier) janitor() {
	defer p.wg.Done()
	interval := min(max(min(p.cfg.TCPIdleTimeout, p.cfg.HalfCloseTimeout)/4, 10*time.Millisecond), 5*time.Second)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
			p.sweepIdle()
			p.sweepAffinity()
			p.reserve.open() // retake a spare fd lost to a racing socket()
		}
	}
}

func (p *Proxier) sweepIdle() {
	for _, r := range p.conns.list() {
		limit := p.cfg.TCPIdleTimeout
		if r.halfClosed.Load() {
			limit = p.cfg.HalfCloseTimeout
		}
		ci, ok1 := lastDataRecv(r.client)
		r.mu.Lock()
		bc := r.backend
		r.mu.Unlock()
		bi, ok2 := lastDataRecv(bc)
		if ok1 && ok2 && min(ci, bi) > limit {
			p.idleClosed.Add(1)
			r.ps.log.Debug().Str("client", r.caddr.String()).Bool("half_closed", r.halfClosed.Load()).
				Dur("idle", min(ci, bi)).Msg("closing idle connection")
			r.expire()
		}
	}
}

func (p *Proxier) sweepAffinity() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := mono()
	for _, ps := range p.ports {
		if ps.bal.clientIP.Load() {
			ps.bal.aff.sweep(now, ps.bal.affTimeout.Load())
		}
	}
}
