package watch

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/rs/zerolog"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/uproxy/uproxy/svc"
)

// sliceInfo is an EndpointSlice reduced to what the proxy uses: its service,
// valid ports, and the endpoints that may get connections (ready, or serving
// and terminating). It holds no reference to the API object.
type sliceInfo struct {
	service types.NamespacedName
	v6      bool // addressType IPv6 (else IPv4)
	ports   []slicePort
	eps     []sliceEndpoint
}

type slicePort struct {
	name  string
	proto svc.Protocol
	port  uint16
}

type sliceEndpoint struct {
	addr                        netip.Addr
	ready, serving, terminating bool
	nodeName, zone, podName     string
	// hints are the endpoint's topology hints (hints.go); comparable.
	hints hints
}

func (s *sliceInfo) equal(o *sliceInfo) bool {
	if s == nil || o == nil {
		return s == o
	}
	return s.service == o.service && s.v6 == o.v6 && slices.Equal(s.ports, o.ports) && slices.Equal(s.eps, o.eps)
}

// sliceServiceKey returns the Service an EndpointSlice belongs to (label
// kubernetes.io/service-name).
func sliceServiceKey(es *discovery.EndpointSlice) (types.NamespacedName, bool) {
	name := es.Labels[discovery.LabelServiceName]
	return types.NamespacedName{Namespace: es.Namespace, Name: name}, name != ""
}

// convertSlice converts an EndpointSlice, or returns nil when it is not for
// uproxy (labels, FQDN address type) or has no service label. Bad ports and
// endpoints are skipped with one warning each; the rest converts. es is
// never modified.
func convertSlice(es *discovery.EndpointSlice, proxyName string, log zerolog.Logger) *sliceInfo {
	if es == nil {
		return nil
	}
	nn := types.NamespacedName{Namespace: es.Namespace, Name: es.Name}
	bad := badField{log: log, kind: "endpointslice", nn: nn}
	if !wantedByLabels(es.Labels, proxyName) {
		log.Debug().Stringer("endpointslice", nn).Msg("endpointslice not proxied: labels")
		return nil
	}
	svcKey, ok := sliceServiceKey(es)
	if !ok {
		bad.report("metadata.labels["+discovery.LabelServiceName+"]", "", "endpointslice without service skipped")
		return nil
	}
	info := &sliceInfo{service: svcKey}
	switch es.AddressType {
	case discovery.AddressTypeIPv4:
	case discovery.AddressTypeIPv6:
		info.v6 = true
	case discovery.AddressTypeFQDN:
		log.Debug().Stringer("endpointslice", nn).Msg("FQDN endpointslice not proxied")
		return nil
	default:
		bad.report("addressType", string(es.AddressType), "endpointslice skipped")
		return nil
	}

	for i := range es.Ports {
		p := &es.Ports[i]
		field := fmt.Sprintf("ports[%d]", i)
		sp := slicePort{proto: svc.TCP}
		if p.Name != nil {
			sp.name = *p.Name
		}
		if p.Protocol != nil {
			proto, ok := protocol(*p.Protocol)
			if !ok {
				bad.report(field+".protocol", string(*p.Protocol), "port skipped, only TCP and UDP are proxied")
				continue
			}
			sp.proto = proto
		}
		if p.Port == nil {
			bad.report(field+".port", "<nil>", "port skipped")
			continue
		}
		if *p.Port < 1 || *p.Port > 65535 {
			bad.report(field+".port", strconv.Itoa(int(*p.Port)), "port skipped")
			continue
		}
		sp.port = uint16(*p.Port)
		if slices.ContainsFunc(info.ports, func(o slicePort) bool { return o.name == sp.name && o.proto == sp.proto }) {
			bad.report(field+".name", sp.name, "duplicate port name skipped")
			continue
		}
		info.ports = append(info.ports, sp)
	}

	info.eps = make([]sliceEndpoint, 0, len(es.Endpoints))
	seen := make(map[netip.Addr]struct{}, len(es.Endpoints))
	for i := range es.Endpoints {
		e := &es.Endpoints[i]
		field := fmt.Sprintf("endpoints[%d].addresses", i)
		if len(e.Addresses) == 0 {
			bad.report(field, "[]", "endpoint without address skipped")
			continue
		}
		field += "[0]"
		a, err := parseIP(e.Addresses[0])
		if err != nil {
			bad.report(field, e.Addresses[0], err.Error())
			continue
		}
		if a.Is6() != info.v6 {
			bad.report(field, e.Addresses[0], "address does not match addressType "+string(es.AddressType)+", skipped")
			continue
		}
		if _, dup := seen[a]; dup {
			bad.report(field, e.Addresses[0], "duplicate address in slice skipped")
			continue
		}
		seen[a] = struct{}{}
		// API semantics: nil ready means ready; nil serving means the same
		// as ready; nil terminating means not terminating.
		ready := e.Conditions.Ready == nil || *e.Conditions.Ready
		serving := ready
		if e.Conditions.Serving != nil {
			serving = *e.Conditions.Serving
		}
		terminating := e.Conditions.Terminating != nil && *e.Conditions.Terminating
		if !ready && !(serving && terminating) {
			continue // never gets connections (KEP-1669)
		}
		se := sliceEndpoint{addr: a, ready: ready, serving: serving, terminating: terminating}
		if e.NodeName != nil {
			se.nodeName = *e.NodeName
		}
		if e.Zone != nil {
			se.zone = *e.Zone
		}
		se.hints = hintsOf(e.Hints)
		if r := e.TargetRef; r != nil && (r.Kind == "Pod" || r.Kind == "") && r.Name != "" {
			se.podName = r.Name
		}
		info.eps = append(info.eps, se)
	}
	return info
}

// nodeInfo converts a Node object. n is never modified.
func nodeInfo(n *v1.Node) NodeInfo {
	ni := NodeInfo{Name: n.Name, Zone: n.Labels[v1.LabelTopologyZone], Deleting: n.DeletionTimestamp != nil}
	for _, typ := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, na := range n.Status.Addresses {
			if na.Type != typ {
				continue
			}
			if a, err := parseIP(na.Address); err == nil && !slices.Contains(ni.Addresses, a) {
				ni.Addresses = append(ni.Addresses, a)
			}
		}
	}
	return ni
}
