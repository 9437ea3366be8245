package proxy

import (
	"fmt"
	"net/netip"

	"github.com/uproxy/uproxy/svc"
)

// directPortalAddrs are the portal addresses a port's listener binds in
// direct mode: all of them, or for a port split by its traffic policies
// (svc.Traffic) the cluster IPs for the cluster listener and the external
// and load-balancer IPs for the external one. Direct mode has no way to
// tell the node's own connections apart, so unlike iptables mode they get
// the external listener's endpoints too.
func directPortalAddrs(sp svc.Port) []netip.Addr {
	if !sp.Traffic.Split {
		return sp.PortalAddrs()
	}
	if sp.ServesCluster() {
		return sp.ClusterIPs
	}
	return append(append([]netip.Addr(nil), sp.ExternalIPs...), sp.LoadBalancerIPs...)
}

// directNodePort reports whether the port's listener binds its NodePort in
// direct mode (the external listener of a split port, else every port).
func directNodePort(sp svc.Port) bool { return sp.NodePort != 0 && sp.ServesExternal() }

// serves is PortStatus.Serves for sp.
func serves(sp svc.Port) string {
	switch {
	case !sp.Traffic.Split:
		return ""
	case sp.Name.External:
		return "external"
	}
	return "cluster"
}

// describeTraffic adds the traffic policy lines of /debug/services (the
// names kubectl describe service uses).
func describeTraffic(field func(k, v string), st PortStatus) {
	if st.ExternalLocal {
		field("External Traffic Policy", "Local")
	}
	if st.HealthCheckNodePort != 0 {
		field("HealthCheck NodePort", fmt.Sprint(st.HealthCheckNodePort))
	}
	switch st.Serves {
	case "cluster":
		field("Serves", "cluster traffic, and the node's own to external destinations")
	case "external":
		field("Serves", "external traffic from pods and other hosts")
	}
}
