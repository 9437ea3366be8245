package iptables

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/uproxy/uproxy/svc"
)

// ruleSet is the content of our chains in one family: for each chain its
// rule specs (what follows "-A CHAIN " in iptables-save), and for each chain
// the specs of the rules in its built-in chain that jump to it.
//
// Desired sets hold each spec once; sets read back from the kernel may hold
// duplicates (someone appended a copy), which the diff removes.
type ruleSet struct {
	rules  map[string][]string // our chain -> rule specs
	exists map[string]bool     // our chain -> the chain exists
	jumps  map[string][]string // our chain -> specs of jumps into it
	// strays lists every rule outside our chains that jumps to one of
	// them, from any chain (read back only; --cleanup removes them all).
	strays []stray
}

// stray is a rule in a chain that is not ours jumping to one of ours.
type stray struct{ table, from, spec string }

func newRuleSet() ruleSet {
	return ruleSet{rules: map[string][]string{}, exists: map[string]bool{}, jumps: map[string][]string{}}
}

// targets says where one family's portal traffic goes.
type targets struct {
	// redirect: traffic from pods and from outside is REDIRECTed to the proxy
	// port (the proxy listens on the unspecified address); else it is
	// DNATed to container:proxyPort.
	redirect  bool
	container netip.Addr // DNAT target for traffic from pods (!redirect); invalid = none
	// host is the DNAT target for traffic from the node itself (REDIRECT of
	// locally generated packets picks 127.0.0.1, and the replies break).
	host netip.Addr // invalid = no host rules in this family
	// nodePortDst restricts NodePort rules to these destinations; nil
	// means every local address (the jump's -m addrtype --dst-type LOCAL).
	nodePortDst []netip.Prefix
	// noNodePorts: --nodeport-addresses names none of this family.
	noNodePorts bool
	// wait is Config.WaitPorts (zero: no UPROXY-PORT-WAIT rules).
	wait PortSpan
	// nodeIPs are the node's addresses of this family: a load-balancer
	// source range holding one also admits the LB IP itself as source
	// (see lbSources).
	nodeIPs []netip.Addr
}

// renderResult is a family's desired rules plus what could not be rendered.
type renderResult struct {
	set       ruleSet
	conflicts []string // rules claimed twice; the first name (sorted) wins
	ruleCount int
	cache     renderCache
}

// rendered is one rule of one portal. key identifies what the rule matches
// (two rules with the same chain and key would shadow each other).
type rendered struct {
	chain string
	key   ruleKey
	spec  string
}

type ruleKey struct {
	src   netip.Prefix // invalid: any source
	dst   netip.Prefix // invalid: any destination
	proto string
	port  uint16
	// drop tells a proxy port's DROP rule from its ACCEPT rule (same
	// port, disjoint matches).
	drop bool
}

func (k ruleKey) String() string {
	d := "any"
	if k.dst.IsValid() {
		d = k.dst.String()
	}
	if k.src.IsValid() {
		d = "from " + k.src.String() + " to " + d
	}
	return d + " " + k.proto + "/" + strconv.Itoa(int(k.port))
}

// renderCache keeps each portal's rendered rules between syncs, so a sync
// formats only the portals that changed (at 10,000 services, formatting
// every rule again is most of a sync's CPU).
type renderCache map[cacheKey]cacheEntry

type cacheKey struct {
	name  svc.PortName
	proto svc.Protocol
}

type cacheEntry struct {
	portal svc.Portal
	rules  []rendered
}

// render builds the desired rules of family f. Portals are sorted by name so
// the output is deterministic and conflicts resolve the same way each time.
// cache holds the previous sync's rendered portals (nil: none); the result
// carries the cache for the next sync.
func render(f family, t targets, portals []svc.Portal, cache renderCache) renderResult {
	sorted := slices.Clone(portals)
	slices.SortFunc(sorted, func(a, b svc.Portal) int {
		return cmp.Or(cmp.Compare(a.Port.Name.Namespace, b.Port.Name.Namespace),
			cmp.Compare(a.Port.Name.Name, b.Port.Name.Name),
			cmp.Compare(a.Port.Name.Port, b.Port.Name.Port),
			cmp.Compare(a.Port.Name.Family, b.Port.Name.Family),
			cmp.Compare(a.Port.Protocol, b.Port.Protocol),
			cmp.Compare(a.Port.Name.String(), b.Port.Name.String()))
	})
	r := renderResult{set: newRuleSet()}
	for _, c := range ourChains {
		r.set.exists[c.name] = true
		r.set.jumps[c.name] = c.jumps()
		r.set.rules[c.name] = make([]string, 0, len(portals))
	}
	type seenKey struct {
		chain string
		key   ruleKey
	}
	seen := make(map[seenKey]struct{}, 2*len(portals))
	r.cache = make(renderCache, len(portals))
	for _, p := range sorted {
		ck := cacheKey{p.Port.Name, p.Port.Protocol}
		var rules []rendered
		if e, ok := cache[ck]; ok && e.portal.ProxyPort == p.ProxyPort && e.portal.Port.Equal(p.Port) {
			rules = e.rules
		} else {
			rules = portalRules(f, t, p)
		}
		r.cache[ck] = cacheEntry{portal: p, rules: rules}
		for _, rr := range rules {
			sk := seenKey{rr.chain, rr.key}
			if _, dup := seen[sk]; dup {
				r.conflicts = append(r.conflicts, rr.chain+" "+rr.key.String()+" ("+p.Port.Name.String()+")")
				continue
			}
			seen[sk] = struct{}{}
			r.set.rules[rr.chain] = append(r.set.rules[rr.chain], rr.spec)
			r.ruleCount++
		}
	}
	r.set.rules[chainPortWait] = portWaitRules(t.wait)
	r.ruleCount += len(r.set.rules[chainPortWait])
	return r
}

// portWaitRules are UPROXY-PORT-WAIT's rules (in this order): a new TCP
// connection or UDP datagram that a portal rule DNATed (or REDIRECTed) to a
// proxy port goes on when a socket listens there (-m socket --nowildcard:
// wildcard listeners count too, which xt_socket ignores by default), and is
// dropped when none does, i.e. while uproxy restarts. A dropped SYN is
// retransmitted by the client after 1 s (then 3 s, 7 s); a reset or an ICMP
// port unreachable would fail the request at once. Dropped before
// conntrack confirms the flow, the retransmission is NATed afresh.
func portWaitRules(w PortSpan) []string {
	if w.First == 0 || w.Last < w.First {
		return []string{}
	}
	ports := strconv.Itoa(int(w.First)) + ":" + strconv.Itoa(int(w.Last))
	syn := "-p tcp -m tcp --dport " + ports + " --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate DNAT"
	udp := "-p udp -m udp --dport " + ports + " -m conntrack --ctstate DNAT"
	return []string{
		syn + " -m socket --nowildcard -j RETURN",
		syn + " -m comment --comment " + commentPortWait + " -j DROP",
		udp + " -m socket --nowildcard -j RETURN",
		udp + " -m comment --comment " + commentPortWait + " -j DROP",
	}
}

// portalRules renders one portal's rules in family f.
func portalRules(f family, t targets, p svc.Portal) []rendered {
	proto := strings.ToLower(string(p.Port.Protocol))
	if proto != "tcp" && proto != "udp" {
		return nil
	}
	var out []rendered
	add := func(chain string, key ruleKey, spec string) {
		out = append(out, rendered{chain, key, spec})
	}
	comment := commentArg(p.Port.Name)
	portal := func(a netip.Addr, srcs []netip.Prefix, clusterDst bool) {
		container, host := trafficChains(p.Port, clusterDst)
		for _, src := range srcs {
			key := ruleKey{src, netip.PrefixFrom(a, f.bits()), proto, p.Port.Port, false}
			m := match(src, key.dst, "", proto, comment, p.Port.Port)
			if tgt, ok := t.containerTarget(p.ProxyPort); ok && container {
				add(chainPortalsContainer, key, m+tgt)
			}
			if t.host.IsValid() && host {
				add(chainPortalsHost, key, m+dnat(t.host, p.ProxyPort))
			}
		}
	}
	anySrc := []netip.Prefix{{}}
	for _, a := range p.Port.ClusterIPs {
		if a = a.Unmap(); a.IsValid() && familyOf(a) == f {
			portal(a, anySrc, true)
		}
	}
	for _, a := range p.Port.ExternalIPs {
		if a = a.Unmap(); a.IsValid() && familyOf(a) == f {
			portal(a, anySrc, false)
		}
	}
	for _, a := range p.Port.LoadBalancerIPs {
		if a = a.Unmap(); !a.IsValid() || familyOf(a) != f {
			continue
		}
		srcs, restricted := lbSources(f, t, p.Port, a)
		portal(a, srcs, false)
		// A port split by traffic policies comes twice with the same LB
		// IPs (svc.Traffic); one DROP rule is enough, the cluster one's.
		if restricted && !p.Port.Name.External {
			add(lbFirewallRule(f, a, proto, comment, p.Port.Port))
		}
	}
	out = append(out, proxyPortRules(proto, comment, p.ProxyPort)...)
	if p.Port.NodePort == 0 || !hasFamily(p.Port, f) || t.noNodePorts {
		return out
	}
	dsts := []netip.Prefix{{}}
	if t.nodePortDst != nil {
		dsts = t.nodePortDst
	}
	container, host := trafficChains(p.Port, false)
	for _, pfx := range dsts {
		key := ruleKey{dst: pfx, proto: proto, port: p.Port.NodePort}
		m := match(netip.Prefix{}, pfx, "", proto, comment, p.Port.NodePort)
		if tgt, ok := t.containerTarget(p.ProxyPort); ok && container {
			add(chainNodePortContainer, key, m+tgt)
		}
		if t.host.IsValid() && host {
			add(chainNodePortHost, key, m+dnat(t.host, p.ProxyPort))
		}
	}
	return out
}

// match renders the match part of a rule in iptables-save's order: source,
// destination (invalid Prefix: any), an interface match (e.g. "! -i lo";
// "": none), protocol, comment, port.
func match(src, dst netip.Prefix, iface, proto, comment string, port uint16) string {
	var b strings.Builder
	if src.IsValid() {
		b.WriteString("-s " + src.String() + " ")
	}
	if dst.IsValid() {
		b.WriteString("-d " + dst.String() + " ")
	}
	if iface != "" {
		b.WriteString(iface + " ")
	}
	b.WriteString("-p " + proto + " -m comment --comment " + comment + " -m " + proto + " --dport ")
	b.WriteString(strconv.Itoa(int(port)))
	return b.String()
}

func dnat(to netip.Addr, port uint16) string {
	return " -j DNAT --to-destination " + netip.AddrPortFrom(to, port).String()
}

// containerTarget is the jump of a rule for traffic from pods or from outside.
func (t targets) containerTarget(proxyPort uint16) (string, bool) {
	if t.redirect {
		return " -j REDIRECT --to-ports " + strconv.Itoa(int(proxyPort)), true
	}
	if t.container.IsValid() {
		return dnat(t.container, proxyPort), true
	}
	return "", false
}

// hasFamily reports whether the service has a ClusterIP of family f; a
// service with none (not expected) gets NodePort rules in IPv4 only.
func hasFamily(p svc.Port, f family) bool {
	if len(p.ClusterIPs) == 0 {
		return f == v4
	}
	for _, a := range p.ClusterIPs {
		if familyOf(a.Unmap()) == f {
			return true
		}
	}
	return false
}

// targetsFor derives family f's targets from the configuration.
func (c Config) targetsFor(f family) targets {
	t := targets{wait: c.WaitPorts}
	for _, n := range c.NodeIPs {
		if n = n.Unmap(); n.IsValid() && familyOf(n) == f {
			t.nodeIPs = append(t.nodeIPs, n)
		}
	}
	bind := c.BindAddr.Unmap()
	switch {
	case !bind.IsValid() || bind.IsUnspecified():
		t.redirect = true
	case familyOf(bind) == f:
		t.container = bind
		t.host = bind
	}
	if !t.host.IsValid() && (t.redirect || t.container.IsValid()) {
		for _, n := range c.NodeIPs {
			if n = n.Unmap(); n.IsValid() && familyOf(n) == f {
				t.host = n
				break
			}
		}
	}
	if len(c.NodePortAddresses) > 0 {
		t.nodePortDst = []netip.Prefix{}
		for _, p := range c.NodePortAddresses {
			if !p.IsValid() || familyOf(p.Addr()) != f {
				continue
			}
			if p.Bits() == 0 { // 0.0.0.0/0 or ::/0: every local address
				t.nodePortDst = nil
				break
			}
			t.nodePortDst = append(t.nodePortDst, p.Masked())
		}
		t.noNodePorts = t.nodePortDst != nil && len(t.nodePortDst) == 0
	}
	return t
}
