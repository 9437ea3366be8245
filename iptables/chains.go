package iptables

import (
	"net/netip"
	"slices"

	"github.com/uproxy/uproxy/svc"
)

// Chain names. We use legacy userspace kube-proxy's names on purpose: the rule
// listing reads as people know it from the userspace mode, and --cleanup
// removes what either of us left behind in one pass. uproxy and legacy
// kube-proxy must not run on the same node at the same time anyway (both
// would own these chains), exactly as two kube-proxies must not.
const (
	chainPortalsContainer  = "KUBE-PORTALS-CONTAINER"
	chainPortalsHost       = "KUBE-PORTALS-HOST"
	chainNodePortContainer = "KUBE-NODEPORT-CONTAINER"
	chainNodePortHost      = "KUBE-NODEPORT-HOST"
	// chainNodePortNonLocal keeps legacy's name (so --cleanup and an
	// upgrade from an older uproxy find it) but no longer ACCEPTs every new
	// connection to a proxy port: see proxyPortRules.
	chainNodePortNonLocal = "KUBE-NODEPORT-NON-LOCAL"
	// chainLBFirewall is uproxy's own, kube-proxy's KUBE-PROXY-FIREWALL:
	// it drops new connections to a load-balancer IP:port that the portal
	// rules did not redirect because the source is outside the service's
	// loadBalancerSourceRanges (see lbFirewallRules).
	chainLBFirewall = "UPROXY-LB-FIREWALL"
	// chainPortWait is uproxy's own (legacy had no such chain): see
	// portWaitRules.
	chainPortWait = "UPROXY-PORT-WAIT"

	tableNAT    = "nat"
	tableFilter = "filter"
	tableMangle = "mangle"
)

// tables lists the tables of our chains in the order they are written.
var tables = []string{tableNAT, tableFilter, tableMangle}

// ourChain describes one chain we own and the jumps into it from built-in
// chains. jumpSpec is written exactly as iptables-save prints it (so that what
// we read back compares equal to what we wrote).
type ourChain struct {
	table    string
	name     string
	builtins []string // chains holding the jump (the same spec in each)
	jumpSpec string   // rule spec of the jump, without "-A BUILTIN"
	first    bool     // insert the jump at position 1 (else append)
	// ordered: rule order matters (the chain is written whole, never
	// patched, and never sorted); else order carries no meaning.
	ordered bool
}

// Jump comments are legacy kube-proxy's, word for word.
const (
	commentPortals  = `"handle ClusterIPs; NOTE: this must be before the NodePort rules"`
	commentNodePort = `"handle service NodePorts; NOTE: this must be the last rule in the chain"`
	// commentNonLocal is uproxy's: legacy's jump said "Ensure that
	// non-local NodePort traffic can flow" and ACCEPTed every new
	// connection to a proxy port, from anywhere.
	commentNonLocal   = `"uproxy: proxy ports take only portal traffic (DNAT) or the node itself"`
	commentLBFirewall = `"uproxy: load balancer source ranges"`
	commentPortWait   = `"uproxy: drop new connections to proxy ports nothing listens on (restart), the client retries"`
)

// ourChains lists our chains in the order they are written: nat, filter,
// then mangle (the order of the *table sections in the restore input).
// UPROXY-PORT-WAIT hangs off mangle INPUT, which runs before filter INPUT, so
// no filter rule (ours or the host firewall's) can ACCEPT a SYN before it.
//
// The filter jumps match only new connections (-m conntrack --ctstate NEW),
// as kube-proxy's do: established packets never walk our filter chains.
var ourChains = []ourChain{
	{tableNAT, chainPortalsContainer, []string{"PREROUTING"}, "-m comment --comment " + commentPortals + " -j " + chainPortalsContainer, true, false},
	{tableNAT, chainPortalsHost, []string{"OUTPUT"}, "-m comment --comment " + commentPortals + " -j " + chainPortalsHost, true, false},
	{tableNAT, chainNodePortContainer, []string{"PREROUTING"}, "-m addrtype --dst-type LOCAL -m comment --comment " + commentNodePort + " -j " + chainNodePortContainer, false, false},
	{tableNAT, chainNodePortHost, []string{"OUTPUT"}, "-m addrtype --dst-type LOCAL -m comment --comment " + commentNodePort + " -j " + chainNodePortHost, false, false},
	{tableFilter, chainNodePortNonLocal, []string{"INPUT"}, "-m conntrack --ctstate NEW -m comment --comment " + commentNonLocal + " -j " + chainNodePortNonLocal, true, false},
	{tableFilter, chainLBFirewall, []string{"INPUT", "FORWARD", "OUTPUT"}, "-m conntrack --ctstate NEW -m comment --comment " + commentLBFirewall + " -j " + chainLBFirewall, true, false},
	{tableMangle, chainPortWait, []string{"INPUT"}, "-m comment --comment " + commentPortWait + " -j " + chainPortWait, true, true},
}

// jumps returns the chain's canonical jumps as ruleSet.jumps holds them:
// "BUILTIN spec", sorted.
func (c ourChain) jumps() []string {
	out := make([]string, 0, len(c.builtins))
	for _, b := range c.builtins {
		out = append(out, b+" "+c.jumpSpec)
	}
	slices.Sort(out)
	return out
}

// isOurChain reports whether name is one of our chains.
func isOurChain(name string) bool {
	for _, c := range ourChains {
		if c.name == name {
			return true
		}
	}
	return false
}

// isOrdered reports whether name is one of our chains whose rule order
// matters.
func isOrdered(name string) bool {
	for _, c := range ourChains {
		if c.name == name {
			return c.ordered
		}
	}
	return false
}

// family is an IP family: each has its own binaries and rule set.
type family int

const (
	v4 family = iota
	v6
)

func (f family) String() string {
	if f == v6 {
		return "ipv6"
	}
	return "ipv4"
}

// restoreCmd, saveCmd and listCmd name the binaries of a family for a backend
// suffix ("" = the system default, "-nft", "-legacy").
func (f family) restoreCmd(suffix string) string {
	if f == v6 {
		return "ip6tables" + suffix + "-restore"
	}
	return "iptables" + suffix + "-restore"
}

func (f family) saveCmd(suffix string) string {
	if f == v6 {
		return "ip6tables" + suffix + "-save"
	}
	return "iptables" + suffix + "-save"
}

func (f family) listCmd(suffix string) string {
	if f == v6 {
		return "ip6tables" + suffix
	}
	return "iptables" + suffix
}

func familyOf(a netip.Addr) family {
	if a.Is4() || a.Is4In6() {
		return v4
	}
	return v6
}

// svcFamily is f as svc names it.
func (f family) svcFamily() svc.Family {
	if f == v6 {
		return svc.IPv6
	}
	return svc.IPv4
}

func (f family) bits() int {
	if f == v6 {
		return 128
	}
	return 32
}

var families = []family{v4, v6}
