package iptables

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/uproxy/uproxy/svc"
)

// DefaultCheckPeriod is Config.CheckPeriod's default, kube-proxy's default
// --iptables-sync-period.
const DefaultCheckPeriod = 30 * time.Second

// Config says where portal traffic goes and where the rules live.
type Config struct {
	// BindAddr is the proxy's listen address. Unspecified (0.0.0.0, :: or
	// the zero Addr) means REDIRECT for traffic from pods and from outside;
	// a specific address means DNAT to BindAddr:proxyPort (and then only
	// portals of BindAddr's family are programmed). Loopback is refused.
	BindAddr netip.Addr
	// NodeIPs are the node's addresses (IPv4 and/or IPv6). Traffic the node
	// itself sends to a portal is DNATed to the first node IP of the
	// portal's family (REDIRECT on locally generated packets picks
	// 127.0.0.1, and replies break); with a specific BindAddr, to BindAddr.
	NodeIPs []netip.Addr
	// NodePortAddresses (--nodeport-addresses) restricts NodePorts to these
	// destinations; empty means every local address (-m addrtype
	// --dst-type LOCAL on the jump).
	NodePortAddresses []netip.Prefix
	// NetNS, when set, runs every iptables command and the conntrack
	// cleanup inside the named network namespace (/run/netns/NAME); for
	// tests and the integration bed. "" = the current namespace.
	NetNS string
	// Backend forces the iptables flavour: "" uses iptables/ip6tables as
	// installed (whatever the alternatives point to), "nft" or "legacy"
	// use iptables-nft* or iptables-legacy*. (Added to the shared API.)
	Backend string
	// WaitPorts is the range proxy ports come from (--proxy-port-range, or
	// the kernel's ip_local_port_range when the kernel chooses them). A new
	// connection DNATed to one of them on which nothing listens (uproxy is
	// restarting) is dropped, so the client retransmits, instead of being
	// reset (see portWaitRules). Zero: UPROXY-PORT-WAIT stays empty.
	WaitPorts PortSpan
	// OwnerSocket is the abstract unix socket ("@name") through which
	// overlapping instances agree that the newest writes the rules (see
	// TakeOwnership). "" = every instance writes.
	OwnerSocket string
	// CheckPeriod bounds how long tampering (rules or jumps deleted or
	// changed by someone else) can go unnoticed. A sync that changes
	// nothing re-reads the installed rules when the last read is older than
	// CheckPeriod/2; a sync that changes rules re-reads first when it is
	// older than CheckPeriod. Set it to --iptables-sync-period: then every
	// periodic sync checks, and bursts of syncs cost at most one read per
	// CheckPeriod/2. 0 means DefaultCheckPeriod. (Added to the shared API.)
	CheckPeriod time.Duration
}

// PortSpan is a range of ports, both ends included.
type PortSpan struct{ First, Last uint16 }

// Programmer owns the portal rules of one node (or network namespace). It
// implements svc.PortalSyncer.
type Programmer struct {
	cfg         Config
	log         zerolog.Logger
	run         runner
	ct          conntracker
	now         func() time.Time
	m           *metrics
	checkPeriod time.Duration

	// mu guards fams, udp, udpSeed, pendingCT, conflicts, warnedTargets, yielded and desired: SyncPortals (the sync
	// loop) and InstalledProxyPorts (start-up) may run on different
	// goroutines; each call holds mu for its whole duration.
	mu        sync.Mutex
	fams      [2]*famState
	udp       map[ctFlow]uint16 // UDP portal -> proxy port, as of the last sync
	udpSeed   map[ctFlow]uint16 // UDP portals found in the rules of a previous run
	pendingCT map[ctFlow]bool   // stale UDP flows still to delete
	conflicts [2]string
	// warnedTargets: the missing-target warning was logged for a family.
	warnedTargets [2]bool
	// yielded: a newer instance writes the rules; syncs only record
	// desired (see TakeOwnership).
	yielded bool
	desired []svc.Portal   // the last SyncPortals' portals
	ownerWG sync.WaitGroup // the TakeOwnership goroutine
}

var _ svc.PortalSyncer = (*Programmer)(nil)

// famState is what we know about one family's installed rules.
type famState struct {
	f        family
	backend  backend
	avail    error // non-nil: this family's tools are missing or unusable
	active   bool  // we program this family
	known    bool  // model reflects the kernel (read back, or written by us since)
	model    ruleSet
	lastRead time.Time
	cache    renderCache
	// noPortWait: the kernel refused the UPROXY-PORT-WAIT rules.
	noPortWait bool
}

// New detects the iptables tools (iptables, ip6tables and their -restore and
// -save) and returns a Programmer. It fails when the IPv4 tools are missing
// or the nat table is unavailable, naming the command and its output; a
// missing ip6tables only fails syncs that carry IPv6 portals. New changes
// no rules.
func New(cfg Config, log zerolog.Logger) (*Programmer, error) {
	suffix := ""
	switch cfg.Backend {
	case "":
	case "nft", "legacy":
		suffix = "-" + cfg.Backend
	default:
		return nil, fmt.Errorf("iptables backend %q: want \"\", \"nft\" or \"legacy\"", cfg.Backend)
	}
	return newProgrammer(cfg, log, execRunner{netns: cfg.NetNS, suffix: suffix}, netlinkConntrack{netns: cfg.NetNS}, time.Now)
}

func newProgrammer(cfg Config, log zerolog.Logger, r runner, ct conntracker, now func() time.Time) (*Programmer, error) {
	if b := cfg.BindAddr.Unmap(); b.IsLoopback() {
		return nil, fmt.Errorf("bind address %s: cannot proxy on loopback (portal DNAT to loopback drops packets)", b)
	}
	if t4, t6 := cfg.targetsFor(v4), cfg.targetsFor(v6); !t4.host.IsValid() && !t6.host.IsValid() {
		return nil, errors.New("no node IP: with an unspecified bind address, traffic from the node itself is DNATed to a node IP; set NodeIPs")
	}
	p := &Programmer{
		cfg: cfg, log: log.With().Str("component", "iptables").Logger(),
		run: r, ct: ct, now: now, m: newMetrics(),
		checkPeriod: cfg.CheckPeriod,
		pendingCT:   map[ctFlow]bool{},
		udpSeed:     map[ctFlow]uint16{},
	}
	if p.checkPeriod <= 0 {
		p.checkPeriod = DefaultCheckPeriod
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, f := range families {
		st := &famState{f: f, model: newRuleSet(), cache: renderCache{}}
		p.fams[f] = st
		st.backend, st.avail = r.detect(ctx, f)
		if st.avail != nil {
			if f == v4 {
				return nil, st.avail
			}
			if p.dualStackListeners() {
				p.log.Warn().Err(st.avail).Msg("IPv6 portal rules unavailable: the proxy ports listen on IPv6 too and are reachable directly at the node's IPv6 addresses (set --bind-address to an IPv4 address to avoid it)")
			} else {
				p.log.Info().Err(st.avail).Msg("IPv6 portal rules unavailable")
			}
			continue
		}
		st.active = f == v4 || p.familyConfigured(f) || p.dualStackListeners()
		p.log.Info().Stringer("family", f).Stringer("backend", st.backend).Bool("active", st.active).Msg("iptables found")
	}
	return p, nil
}

// familyConfigured reports whether node IPs or the bind address use f.
func (p *Programmer) familyConfigured(f family) bool {
	if b := p.cfg.BindAddr.Unmap(); b.IsValid() && !b.IsUnspecified() && familyOf(b) == f {
		return true
	}
	return slices.ContainsFunc(p.cfg.NodeIPs, func(a netip.Addr) bool { return a.IsValid() && familyOf(a.Unmap()) == f })
}

// dualStackListeners reports whether the proxy ports listen on every
// address of both families (an unspecified bind address: proxy/ opens
// ":port"). Then IPv6 is programmed whenever ip6tables works, even with no
// IPv6 node IP or portal: without KUBE-NODEPORT-NON-LOCAL's rules there, any
// IPv6 address of the node (a link-local one at least) would reach every
// proxy port directly (see proxyPortRules).
func (p *Programmer) dualStackListeners() bool {
	b := p.cfg.BindAddr.Unmap()
	return !b.IsValid() || b.IsUnspecified()
}

// Collectors returns the Programmer's metrics for the caller to register.
func (p *Programmer) Collectors() []prometheus.Collector { return p.m.collectors() }

// SyncPortals makes the installed portal rules equal the rules for portals
// (the complete set). See the package doc for when it reads and writes. On
// error the caller retries (with backoff); rules already installed keep
// working meanwhile.
func (p *Programmer) SyncPortals(ctx context.Context, portals []svc.Portal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.desired = slices.Clone(portals)
	if p.yielded {
		return nil
	}
	err := p.syncLocked(ctx, portals)
	if err != nil {
		p.m.syncFailures.Inc()
	}
	return err
}

func (p *Programmer) syncLocked(ctx context.Context, portals []svc.Portal) error {
	var errs []error
	if n := countFamily(portals, v6); n > 0 {
		if st := p.fams[v6]; st.avail != nil {
			errs = append(errs, fmt.Errorf("%d IPv6 portal addresses not programmed: %w", n, st.avail))
		} else {
			st.active = true
		}
	}
	perTable := map[string]int{tableNAT: 0, tableFilter: 0, tableMangle: 0}
	for _, st := range p.fams {
		if !st.active {
			continue
		}
		t := p.cfg.targetsFor(st.f)
		if _, ok := t.containerTarget(1); (!ok || !t.host.IsValid()) && !p.warnedTargets[st.f] && countFamily(portals, st.f) > 0 {
			p.warnedTargets[st.f] = true
			p.log.Warn().Stringer("family", st.f).Bool("fromPods", ok).Bool("fromNode", t.host.IsValid()).
				Msg("some portal traffic of this family cannot be redirected: no bind address or node IP of the family; those rules are left out")
		}
		if st.noPortWait {
			t.wait = PortSpan{}
		}
		res := render(st.f, t, portals, st.cache)
		st.cache = res.cache
		normalize(res.set)
		p.noteConflicts(st.f, res.conflicts)
		err := p.syncFamily(ctx, st, res.set)
		if err != nil && len(res.set.rules[chainPortWait]) > 0 {
			// A kernel without xt_socket refuses the UPROXY-PORT-WAIT
			// rules, and with them the whole batch: the portal rules
			// matter more. Retry without; keep them off if that works.
			t.wait = PortSpan{}
			res = render(st.f, t, portals, st.cache)
			st.cache = res.cache
			normalize(res.set)
			if err2 := p.syncFamily(ctx, st, res.set); err2 == nil {
				st.noPortWait = true
				p.log.Warn().Stringer("family", st.f).AnErr("cause", err).
					Msg("UPROXY-PORT-WAIT rules refused (no xt_socket?); left out: connections arriving while uproxy restarts will be reset")
				err = nil
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s portal rules: %w", st.f, err))
		}
		if st.known {
			for _, c := range ourChains {
				perTable[c.table] += len(st.model.rules[c.name])
			}
		}
	}
	for t, n := range perTable {
		p.m.rules.WithLabelValues(t).Set(float64(n))
	}
	p.cleanConntrack(ctx, portals)
	return errors.Join(errs...)
}

// syncFamily brings one family's rules to want with at most one restore
// (two when the first fails because what we believed installed was stale).
func (p *Programmer) syncFamily(ctx context.Context, st *famState, want ruleSet) error {
	repaired := 0
	same := st.known && sameRules(st.model, want)
	age := p.now().Sub(st.lastRead)
	if !st.known || (same && age >= p.checkPeriod/2) || age >= p.checkPeriod {
		n, err := p.readInto(ctx, st)
		if err != nil {
			return err
		}
		repaired += n
		same = sameRules(st.model, want)
	}
	if same {
		return nil // the common case: no write at all
	}
	err := p.write(ctx, st.f, restoreText(st.model, want, false))
	if err != nil {
		// A -D of a rule someone removed fails the whole (atomic) batch:
		// read what is really there and rewrite every chain that differs.
		n, rerr := p.readInto(ctx, st)
		if rerr != nil {
			st.known = false
			return errors.Join(err, rerr)
		}
		repaired += n
		if !sameRules(st.model, want) {
			if err := p.write(ctx, st.f, restoreText(st.model, want, true)); err != nil {
				st.known = false
				return err
			}
		}
	}
	st.model = cloneRuleSet(want)
	if repaired > 0 {
		p.m.repairs.WithLabelValues(st.f.String()).Add(float64(repaired))
		p.log.Warn().Stringer("family", st.f).Int("lines", repaired).Msg("restored portal rules or jumps that someone else deleted or changed")
	}
	return nil
}

// readInto replaces st.model with what iptables-save shows and returns how
// many lines differ from what we believed installed (0 when nothing was
// known yet).
func (p *Programmer) readInto(ctx context.Context, st *famState) (int, error) {
	p.m.checks.WithLabelValues(st.f.String()).Inc()
	out, err := p.run.save(ctx, st.f)
	if err != nil {
		return 0, err
	}
	actual := parseSave(out)
	n := 0
	if st.known {
		n = countDiff(actual, st.model)
	} else if p.udp == nil {
		// First look at rules a previous run left: remember their UDP
		// portals so that the first sync also flushes conntrack entries
		// of portals that moved to another proxy port meanwhile.
		for k, v := range installedUDP(st.f, actual) {
			p.udpSeed[k] = v
		}
	}
	st.model, st.known, st.lastRead = actual, true, p.now()
	return n, nil
}

func (p *Programmer) write(ctx context.Context, f family, text []byte) error {
	start := p.now()
	err := p.run.restore(ctx, f, text)
	took := p.now().Sub(start)
	p.m.restoreTime.WithLabelValues(f.String()).Observe(took.Seconds())
	result := "success"
	if err != nil {
		result = "failure"
	}
	p.m.restores.WithLabelValues(f.String(), result).Inc()
	p.log.Debug().Stringer("family", f).Int("bytes", len(text)).Dur("took", took).Err(err).Msg("iptables-restore")
	return err
}

// noteConflicts logs portals whose rules collide, once per change.
func (p *Programmer) noteConflicts(f family, conflicts []string) {
	s := strings.Join(conflicts, "; ")
	if s == p.conflicts[f] {
		return
	}
	p.conflicts[f] = s
	if s != "" {
		p.log.Warn().Stringer("family", f).Int("count", len(conflicts)).Strs("rules", conflicts[:min(len(conflicts), 10)]).
			Msg("portals claim the same address and port; the first service by name keeps it")
	}
}

// countFamily counts portal addresses of family f.
func countFamily(portals []svc.Portal, f family) int {
	n := 0
	for _, p := range portals {
		for _, a := range p.Port.PortalAddrs() {
			if a.IsValid() && familyOf(a.Unmap()) == f {
				n++
			}
		}
	}
	return n
}
