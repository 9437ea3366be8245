// Package svc holds the small value types that describe what uproxy proxies:
// service ports and their endpoints. watch/ produces them from API objects or
// manifest files, proxy/ and iptables/ consume them. It imports nothing from
// client-go on purpose, and holds no behaviour beyond comparison and naming.
//
// It is a leaf package so that proxy/, watch/ and iptables/ never import each
// other for types.
package svc

import (
	"net/netip"
	"slices"
	"time"
)

// Protocol is a service port's transport protocol.
type Protocol string

// Supported protocols. SCTP is not proxied (legacy userspace did not either).
const (
	TCP Protocol = "TCP"
	UDP Protocol = "UDP"
)

// DefaultAffinityTimeout is the ClientIP affinity timeout used when a Service
// does not set sessionAffinityConfig.clientIP.timeoutSeconds (3 hours).
const DefaultAffinityTimeout = 10800 * time.Second

// Family is an IP family. The zero value is IPv4, so single-stack IPv4
// names read as they always did.
type Family uint8

// IP families.
const (
	IPv4 Family = iota
	IPv6
)

// String is "IPv4" or "IPv6" (the API's IPFamily values).
func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// FamilyOf returns the family of a (IPv4-mapped IPv6 counts as IPv4).
func FamilyOf(a netip.Addr) Family {
	if a.Is6() && !a.Is4In6() {
		return IPv6
	}
	return IPv4
}

// PortName identifies one port of one Service in one IP family:
// namespace/name:port. A dual-stack Service port is two ports, one per
// family, as kube-proxy runs one proxier per family (its metaproxier): each
// has its own listener, endpoints (EndpointSlices of its addressType only)
// and portal rules, so IPv4 portal traffic never reaches an IPv6 pod and
// the other way round.
type PortName struct {
	Namespace string
	Name      string
	Port      string // the Service port's name; "" for a single unnamed port
	Family    Family // the family of its portal addresses and endpoints
	// External names the second listener of a Split port: the one that
	// serves external traffic (see Traffic).
	External bool
}

// ExternalSuffix ends the String of an External port name. Port names are
// DNS labels, so no Service port name contains it.
const ExternalSuffix = "/external"

// String renders the name as kube-proxy does: "ns/name:port", or "ns/name"
// for an unnamed port; an External name is "ns/name:port/external" (or
// "ns/name:/external"); an IPv6 port has " (IPv6)" appended so logs, metrics
// and status tell the two families of a dual-stack port apart.
func (n PortName) String() string {
	s := n.KubeString()
	if n.Family == IPv6 {
		s += " (IPv6)"
	}
	return s
}

// KubeString is kube-proxy's rendering without the family: "ns/name:port",
// or "ns/name" for an unnamed port. Portal rule comments use it (the family
// is the rule's table's: iptables or ip6tables).
func (n PortName) KubeString() string {
	s := n.Namespace + "/" + n.Name
	if n.Port != "" || n.External {
		s += ":" + n.Port
	}
	if n.External {
		s += ExternalSuffix
	}
	return s
}

// Affinity is a service port's session affinity.
type Affinity struct {
	ClientIP bool          // sessionAffinity: ClientIP
	Timeout  time.Duration // how long an idle client stays pinned; 0 means DefaultAffinityTimeout
}

// Port is the desired state of one service port on this node.
type Port struct {
	Name     PortName
	Protocol Protocol
	// ClusterIPs are the portal addresses, all of family Name.Family (watch/
	// splits a dual-stack Service port into one Port per family).
	ClusterIPs []netip.Addr
	Port       uint16 // the service port on the portal addresses
	NodePort   uint16 // 0 when the service has none

	ExternalIPs     []netip.Addr
	LoadBalancerIPs []netip.Addr // status.loadBalancer.ingress[].ip
	// LoadBalancerSourceRanges is spec.loadBalancerSourceRanges (every IP
	// family): when not empty, traffic to LoadBalancerIPs is portalled only
	// from these sources and dropped from others (as kube-proxy's
	// firewall chain). An invalid (zero) Prefix admits nobody: watch/ puts
	// one there when the service lists ranges but none of them parses, so
	// the restriction fails closed.
	LoadBalancerSourceRanges []netip.Prefix

	Affinity Affinity
	// InternalLocal is internalTrafficPolicy: Local; watch/ has already
	// filtered the endpoints, the flag is carried for display.
	InternalLocal bool

	// Traffic policies beyond internalTrafficPolicy (traffic.go).
	Traffic Traffic
}

// Equal reports whether two ports describe the same desired state.
func (p Port) Equal(o Port) bool {
	return p.Name == o.Name && p.Protocol == o.Protocol && p.Port == o.Port &&
		p.NodePort == o.NodePort && p.Affinity == o.Affinity && p.InternalLocal == o.InternalLocal && p.Traffic == o.Traffic &&
		slices.Equal(p.ClusterIPs, o.ClusterIPs) && slices.Equal(p.ExternalIPs, o.ExternalIPs) &&
		slices.Equal(p.LoadBalancerIPs, o.LoadBalancerIPs) &&
		slices.Equal(p.LoadBalancerSourceRanges, o.LoadBalancerSourceRanges)
}

// PortalAddrs returns every address the port is reachable on through a
// portal rule: cluster IPs, external IPs and load-balancer IPs, in that order.
func (p Port) PortalAddrs() []netip.Addr {
	out := make([]netip.Addr, 0, len(p.ClusterIPs)+len(p.ExternalIPs)+len(p.LoadBalancerIPs))
	out = append(out, p.ClusterIPs...)
	out = append(out, p.ExternalIPs...)
	return append(out, p.LoadBalancerIPs...)
}

// Endpoint is one backend of a service port, with its EndpointSlice
// conditions (KEP-1669).
type Endpoint struct {
	Addr        netip.AddrPort
	Ready       bool
	Serving     bool
	Terminating bool
	NodeName    string
	Zone        string
	PodName     string // targetRef name when it is a Pod; for display only
}

// String is "ip:port".
func (e Endpoint) String() string { return e.Addr.String() }
