package watch

import (
	"net/netip"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/uproxy/uproxy/svc"
)

// This file holds the traffic policies as kube-proxy applies them
// (pkg/proxy/topology.go CategorizeEndpoints, pkg/proxy/serviceport.go):
// internalTrafficPolicy for cluster traffic, externalTrafficPolicy for
// external traffic, topology hints (trafficDistribution PreferClose, the
// topology-mode annotation) for Cluster-policy traffic only.

// trafficOf reads a Service's external traffic policy and health check
// node port. As kube-proxy, eTP Local counts only for a Service reachable
// from outside (NodePort, LoadBalancer, or externalIPs), and a health check
// port only for a LoadBalancer with eTP Local.
func trafficOf(s *v1.Service, bad badField) svc.Traffic {
	var t svc.Traffic
	external := s.Spec.Type == v1.ServiceTypeNodePort || s.Spec.Type == v1.ServiceTypeLoadBalancer || len(s.Spec.ExternalIPs) > 0
	t.ExternalLocal = external && s.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	if t.ExternalLocal && s.Spec.Type == v1.ServiceTypeLoadBalancer {
		switch p := s.Spec.HealthCheckNodePort; {
		case p == 0:
			bad.report("spec.healthCheckNodePort", "0", "no health check port for a LoadBalancer with externalTrafficPolicy Local")
		case p < 1 || p > 65535:
			bad.report("spec.healthCheckNodePort", strconv.Itoa(int(p)), "health check port ignored")
		default:
			t.HealthCheckNodePort = uint16(p)
		}
	}
	return t
}

// hasExternal reports whether p has a destination external traffic uses.
func hasExternal(p svc.Port) bool {
	return p.NodePort != 0 || len(p.ExternalIPs) > 0 || len(p.LoadBalancerIPs) > 0
}

// splitTraffic returns ports with every port whose cluster and external
// traffic need different endpoint sets (iTP and eTP differ, and it has an
// external destination) marked Split and followed by its External twin
// (see svc.Traffic). ports is not modified.
func splitTraffic(ports []svc.Port) []svc.Port {
	n := 0
	for _, p := range ports {
		if p.InternalLocal != p.Traffic.ExternalLocal && hasExternal(p) {
			n++
		}
	}
	if n == 0 {
		return ports
	}
	out := make([]svc.Port, 0, len(ports)+n)
	for _, p := range ports {
		if p.InternalLocal == p.Traffic.ExternalLocal || !hasExternal(p) {
			out = append(out, p)
			continue
		}
		p.Traffic.Split = true
		ext := p
		ext.Name.External = true
		out = append(out, p, ext)
	}
	return out
}

// usesLocal reports whether the endpoint set of p (a port as splitTraffic
// returns it) is the Local policy's.
func usesLocal(p svc.Port) bool {
	if p.Name.External {
		return p.Traffic.ExternalLocal
	}
	return p.InternalLocal
}

// trafficEnv is this node as the policies see it.
type trafficEnv struct {
	node string // Options.NodeName
	zone string // the Node's topology.kubernetes.io/zone label
}

// hints are an endpoint's topology hints, comma-joined (zone names are
// label values and node names DNS subdomains: neither has a comma) so that
// sliceEndpoint stays comparable. "" means no hint.
type hints struct{ zones, nodes string }

func hintsOf(h *discovery.EndpointHints) hints {
	if h == nil {
		return hints{}
	}
	var z, n []string
	for _, f := range h.ForZones {
		z = append(z, f.Name)
	}
	for _, f := range h.ForNodes {
		n = append(n, f.Name)
	}
	return hints{zones: strings.Join(z, ","), nodes: strings.Join(n, ",")}
}

// hasItem reports whether the comma-joined list holds x.
func hasItem(list, x string) bool {
	for list != "" {
		var item string
		item, list, _ = strings.Cut(list, ",")
		if item == x {
			return true
		}
	}
	return false
}

// Topology modes (kube-proxy's topologyModeFromHints).
const (
	topologyNone = iota
	topologySameZone
	topologySameNode
)

// topologyMode is kube-proxy's topologyModeFromHints: same-node when every
// ready endpoint has a node hint and one names this node; else same-zone
// when every ready endpoint has a zone hint and one names this node's zone;
// else none. The EndpointSlice controller sets zone hints for
// trafficDistribution PreferClose (PreferSameZone) and the topology-mode
// Auto annotation, node hints for PreferSameNode.
func topologyMode(eps []svc.Endpoint, hs map[netip.AddrPort]hints, env trafficEnv) int {
	ready, allNode, forNode, allZone, forZone := false, true, false, true, false
	for _, e := range eps {
		if !e.Ready {
			continue
		}
		ready = true
		h := hs[e.Addr]
		if h.nodes == "" {
			allNode = false
		} else if hasItem(h.nodes, env.node) {
			forNode = true
		}
		if h.zones == "" {
			allZone = false
		} else if hasItem(h.zones, env.zone) {
			forZone = true
		}
	}
	switch {
	case !ready:
		return topologyNone
	case allNode && forNode:
		return topologySameNode
	case allZone && forZone:
		return topologySameZone
	}
	return topologyNone
}

// categorize returns the endpoints of one port's set from eps (sorted by
// address; hs holds their hints, nil when none has any). The Local set is
// every endpoint on this node; the Cluster set is every endpoint, or with
// topology in effect only the ready ones hinted for this node or zone
// (kube-proxy falls back to serving-terminating endpoints only when none is
// ready anywhere, and then uses no topology). Both keep ready and
// serving-terminating endpoints: the balancer prefers ready ones, as
// kube-proxy's fallback does. The Cluster set without topology is eps
// itself, not a copy (nobody modifies the lists handed to the sink).
func categorize(eps []svc.Endpoint, hs map[netip.AddrPort]hints, local bool, env trafficEnv) []svc.Endpoint {
	mode := topologyNone
	if !local && hs != nil {
		mode = topologyMode(eps, hs, env)
	}
	if !local && mode == topologyNone {
		return eps
	}
	out := make([]svc.Endpoint, 0, len(eps))
	for _, e := range eps {
		switch {
		case local && e.NodeName != env.node:
			continue
		case mode == topologySameNode && !(e.Ready && hasItem(hs[e.Addr].nodes, env.node)):
			continue
		case mode == topologySameZone && !(e.Ready && hasItem(hs[e.Addr].zones, env.zone)):
			continue
		}
		out = append(out, e)
	}
	return out
}
