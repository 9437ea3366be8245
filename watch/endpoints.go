package watch

import (
	"net/netip"
	"slices"

	"github.com/uproxy/uproxy/svc"
)

// portKey matches slice ports to service ports: by name and protocol.
type portKey struct {
	name  string
	proto svc.Protocol
}

// endpointsFor merges the slices of one service into the endpoint list of
// each of its ports (already filtered to the node's families). Slices of a
// family not in f are ignored; an address found in several slices appears
// once, the non-terminating copy preferred (as kube-proxy's
// EndpointSliceCache). internalTrafficPolicy Local keeps only endpoints on
// nodeName. Lists are sorted by address; ports without endpoints are absent.
// slices must be sorted by name so the result is deterministic.
func endpointsFor(ports []svc.Port, sl []*sliceInfo, f families, nodeName string) map[svc.PortName][]svc.Endpoint {
	if len(ports) == 0 || len(sl) == 0 {
		return nil
	}
	byKey := make(map[portKey]int, len(ports))
	for i, p := range ports {
		byKey[portKey{p.Name.Port, p.Protocol}] = i
	}
	lists := make([][]svc.Endpoint, len(ports))
	index := make([]map[netip.AddrPort]int, len(ports))
	for _, s := range sl {
		if (s.v6 && !f.v6) || (!s.v6 && !f.v4) {
			continue
		}
		for _, sp := range s.ports {
			i, ok := byKey[portKey{sp.name, sp.proto}]
			if !ok {
				continue
			}
			if index[i] == nil {
				index[i] = make(map[netip.AddrPort]int, len(s.eps))
			}
			local := ports[i].InternalLocal
			for _, e := range s.eps {
				if local && e.nodeName != nodeName {
					continue
				}
				ep := svc.Endpoint{
					Addr:  netip.AddrPortFrom(e.addr, sp.port),
					Ready: e.ready, Serving: e.serving, Terminating: e.terminating,
					NodeName: e.nodeName, Zone: e.zone, PodName: e.podName,
				}
				if j, dup := index[i][ep.Addr]; dup {
					if !e.terminating {
						lists[i][j] = ep
					}
					continue
				}
				index[i][ep.Addr] = len(lists[i])
				lists[i] = append(lists[i], ep)
			}
		}
	}
	out := make(map[svc.PortName][]svc.Endpoint, len(ports))
	for i, l := range lists {
		if len(l) == 0 {
			continue
		}
		slices.SortFunc(l, func(a, b svc.Endpoint) int { return a.Addr.Compare(b.Addr) })
		out[ports[i].Name] = l
	}
	return out
}
