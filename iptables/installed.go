package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/uproxy/uproxy/svc"
)

// InstalledProxyPorts reads the portal rules already installed (by a
// previous uproxy run) and returns the proxy port each service port's rules
// point to, parsed from the rules' "ns/name:port" comments and their REDIRECT
// --to-ports / DNAT --to-destination. A restarted uproxy opens its listeners
// on these ports before its first sync, so rules that were left in place
// keep working across the restart and the first sync rewrites nothing.
//
// It reads every family whose tools exist; it does not write. Comments that
// do not parse (foreign rules, sanitized hostile names) are skipped.
func (p *Programmer) InstalledProxyPorts(ctx context.Context) (map[svc.PortName]uint16, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[svc.PortName]uint16{}
	for _, st := range p.fams {
		if st.avail != nil {
			continue
		}
		if _, err := p.readInto(ctx, st); err != nil {
			return nil, fmt.Errorf("%s: reading installed portal rules: %w", st.f, err)
		}
		found := false
		for _, c := range ourChains {
			if c.table != tableNAT {
				continue
			}
			for _, spec := range st.model.rules[c.name] {
				name, port, ok := proxyPortOf(spec)
				if !ok {
					continue
				}
				name.Family = st.f.svcFamily()
				found = true
				if old, dup := out[name]; dup && old != port {
					p.log.Warn().Stringer("port", name).Uint16("kept", old).Uint16("other", port).Msg("installed rules name two proxy ports for one service port")
					continue
				}
				out[name] = port
			}
		}
		if found {
			st.active = true
		}
	}
	return out, nil
}

// proxyPortOf extracts the service port name and proxy port from one of our
// nat rules.
func proxyPortOf(spec string) (svc.PortName, uint16, bool) {
	args, err := splitArgs(spec)
	if err != nil {
		return svc.PortName{}, 0, false
	}
	name, ok := parsePortName(argAfter(args, "--comment"))
	if !ok {
		return svc.PortName{}, 0, false
	}
	var port string
	if s := argAfter(args, "--to-ports"); s != "" {
		port = s
	} else if ap, err := netip.ParseAddrPort(argAfter(args, "--to-destination")); err == nil {
		port = strconv.Itoa(int(ap.Port()))
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return svc.PortName{}, 0, false
	}
	return name, uint16(n), true
}

// cleanConntrack deletes conntrack entries of UDP portals that went away or
// now point to another proxy port, so clients are not black-holed by stale
// REDIRECT/DNAT state. Failures are logged, counted and retried at the next
// sync; they do not fail the sync (the rules are right; only old flows are
// affected, and they expire after the UDP conntrack timeout).
func (p *Programmer) cleanConntrack(ctx context.Context, portals []svc.Portal) {
	cur := udpPortals(portals)
	if p.udp == nil {
		p.udp, p.udpSeed = p.udpSeed, nil
	}
	for k, pp := range p.udp {
		if cur[k] != pp {
			p.pendingCT[k] = true
		}
	}
	p.udp = cur
	if len(p.pendingCT) == 0 {
		return
	}
	flows := make([]ctFlow, 0, len(p.pendingCT))
	for k := range p.pendingCT {
		flows = append(flows, k)
	}
	slices.SortFunc(flows, func(a, b ctFlow) int {
		if c := a.addr.Compare(b.addr); c != 0 {
			return c
		}
		return int(a.port) - int(b.port)
	})
	n, err := p.ct.deleteUDP(ctx, flows)
	p.m.ctDeleted.Add(float64(n))
	if err != nil {
		p.m.ctFailures.Inc()
		p.log.Warn().Err(err).Int("portals", len(flows)).Msg("deleting stale UDP conntrack entries failed; retrying at the next sync")
		return
	}
	p.log.Debug().Int("portals", len(flows)).Uint("entries", n).Msg("deleted stale UDP conntrack entries")
	clear(p.pendingCT)
}

// udpPortals maps every UDP portal (address:port, and *:nodePort) to its
// proxy port.
func udpPortals(portals []svc.Portal) map[ctFlow]uint16 {
	out := map[ctFlow]uint16{}
	for _, p := range portals {
		if p.Port.Protocol != svc.UDP {
			continue
		}
		for i, a := range p.Port.PortalAddrs() {
			if container, _ := trafficChains(p.Port, i < len(p.Port.ClusterIPs)); a.IsValid() && container {
				out[ctFlow{addr: a.Unmap(), port: p.Port.Port}] = p.ProxyPort
			}
		}
		if container, _ := trafficChains(p.Port, false); p.Port.NodePort != 0 && container {
			fam := v4
			if p.Port.Name.Family == svc.IPv6 {
				fam = v6
			}
			out[ctFlow{port: p.Port.NodePort, fam: fam}] = p.ProxyPort
		}
	}
	return out
}

// installedUDP reads the UDP portals (address:port, and *:nodePort) and their
// proxy ports from installed rules.
func installedUDP(f family, rs ruleSet) map[ctFlow]uint16 {
	out := map[ctFlow]uint16{}
	for _, chain := range []string{chainPortalsContainer, chainNodePortContainer} {
		for _, spec := range rs.rules[chain] {
			args, err := splitArgs(spec)
			if err != nil || argAfter(args, "-p") != "udp" {
				continue
			}
			_, proxy, ok := proxyPortOf(spec)
			port, err := strconv.ParseUint(argAfter(args, "--dport"), 10, 16)
			if !ok || err != nil {
				continue
			}
			k := ctFlow{port: uint16(port), fam: f}
			if chain == chainPortalsContainer {
				k.fam = v4
				pfx, err := netip.ParsePrefix(argAfter(args, "-d"))
				if err != nil || !pfx.IsSingleIP() {
					continue
				}
				k.addr = pfx.Addr()
			}
			out[k] = proxy
		}
	}
	return out
}
