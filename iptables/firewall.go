package iptables

// The filter rules: what the portal rules let in. The proxy listens on every
// address, so KUBE-NODEPORT-NON-LOCAL keeps its ports to portal traffic
// (proxyPortRules), and a Service's loadBalancerSourceRanges narrow its LB
// IP portal rules to the listed sources (lbSources) while UPROXY-LB-FIREWALL
// drops the rest (lbFirewallRule).

import (
	"net/netip"
	"slices"

	"github.com/uproxy/uproxy/svc"
)

// proxyPortRules are a proxy port's two rules in KUBE-NODEPORT-NON-LOCAL
// (filter INPUT, new connections only). The proxy listens on every
// address, so without them nodeIP:proxyPort would serve anyone who can
// reach the node, ahead of any host firewall:
//
//   - a connection a portal rule REDIRECTed or DNATed here (ctstate DNAT) is
//     ACCEPTed: it was addressed to a ClusterIP, ExternalIP, LB IP or
//     NodePort, not to this port, so a host firewall that only knows the
//     node's own ports must not drop it (with kube-proxy's iptables mode
//     such traffic never meets filter INPUT either);
//   - a connection from outside the node that nothing redirected is
//     DROPped (-i lo is the node itself: it is left to the host firewall).
//
// The two rules match disjoint packets, so their order does not matter.
func proxyPortRules(proto, comment string, proxyPort uint16) []rendered {
	m := match(netip.Prefix{}, netip.Prefix{}, "", proto, comment, proxyPort)
	drop := match(netip.Prefix{}, netip.Prefix{}, "! -i lo", proto, comment, proxyPort)
	return []rendered{
		{chainNodePortNonLocal, ruleKey{proto: proto, port: proxyPort}, m + " -m conntrack --ctstate DNAT -j ACCEPT"},
		{chainNodePortNonLocal, ruleKey{proto: proto, port: proxyPort, drop: true}, drop + " -m conntrack ! --ctstate DNAT -j DROP"},
	}
}

// lbSources returns the sources whose traffic to load-balancer IP lb is
// portalled: any (one invalid Prefix) when the service lists no
// loadBalancerSourceRanges or lists one that covers every address of f;
// else the listed ranges of family f, plus lb itself when a range holds a
// node IP (kube-proxy's allowFromNode: a VIP that is also a local address
// makes the node's own requests leave with the VIP as source). restricted
// is true when other sources must be dropped (lbFirewallRule). Ranges of
// the other family only, or none valid, admit nobody of family f: the
// service asked for a source restriction, and fails closed.
func lbSources(f family, t targets, p svc.Port, lb netip.Addr) (srcs []netip.Prefix, restricted bool) {
	if len(p.LoadBalancerSourceRanges) == 0 {
		return []netip.Prefix{{}}, false
	}
	fromNode := false
	for _, r := range p.LoadBalancerSourceRanges {
		if !r.IsValid() || familyOf(r.Addr()) != f {
			continue
		}
		if r.Bits() == 0 {
			return []netip.Prefix{{}}, false
		}
		r = r.Masked()
		if !slices.Contains(srcs, r) {
			srcs = append(srcs, r)
		}
		fromNode = fromNode || slices.ContainsFunc(t.nodeIPs, r.Contains)
	}
	if self := netip.PrefixFrom(lb, f.bits()); fromNode && !slices.Contains(srcs, self) {
		srcs = append(srcs, self)
	}
	return srcs, true
}

// lbFirewallRule drops new connections to a source-restricted load-balancer
// IP:port in UPROXY-LB-FIREWALL (filter INPUT, FORWARD and OUTPUT). Portal
// rules rewrite the destination of admitted sources in nat PREROUTING and
// OUTPUT, before filter, so only what they did not redirect still has lb
// as its destination here: kube-proxy's KUBE-PROXY-FIREWALL works the same
// way. Without it, a refused source's packet would be routed on (FORWARD)
// or reach whatever else listens on lb:port.
func lbFirewallRule(f family, lb netip.Addr, proto, comment string, port uint16) (string, ruleKey, string) {
	key := ruleKey{dst: netip.PrefixFrom(lb, f.bits()), proto: proto, port: port}
	return chainLBFirewall, key, match(netip.Prefix{}, key.dst, "", proto, comment, port) + " -j DROP"
}
