package iptables

import "github.com/uproxy/uproxy/svc"

// trafficChains says which chains get a portal's rule for one destination
// when traffic policies split a service port in two (svc.Traffic): the
// container chains (traffic from pods and other hosts, PREROUTING) and the
// host chains (traffic from the node itself, OUTPUT).
//
// A port that is not split gets both for every destination. Of a split
// port, the cluster listener gets its cluster IPs in both, and its external
// destinations (ExternalIPs, load-balancer IPs, NodePort) in the host
// chains only: as kube-proxy's "route LOCAL traffic for external
// destinations", the node's own connections to them use the cluster
// endpoints. The external listener gets the external destinations in the
// container chains.
func trafficChains(p svc.Port, clusterDst bool) (container, host bool) {
	switch {
	case !p.Traffic.Split:
		return true, true
	case p.Name.External:
		return !clusterDst, false
	case clusterDst:
		return true, true
	}
	return false, true
}
