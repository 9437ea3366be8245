package watch

import (
	"net/netip"
	"slices"

	"github.com/uproxy/uproxy/svc"
)

// dedupeMapAt is the list length from which duplicate addresses are found
// with a map instead of a scan (most services have a handful of endpoints).
const dedupeMapAt = 16

// endpointsFor merges the slices of one service into the endpoint list of
// each of its ports (already split by family, forFamilies, and by traffic
// policy, splitTraffic). Slice ports match service ports by name, protocol
// and family: an IPv4 slice feeds only the IPv4 port, an IPv6 slice only the
// IPv6 one (kube-proxy's metaproxier hands each family's proxier the slices
// of its addressType). Slices of a family not in f are ignored; an address
// found in several slices appears once, the non-terminating copy preferred
// (as kube-proxy's EndpointSliceCache). Each port then gets its traffic
// policy's set (traffic.go): the Local policy keeps endpoints on env.node,
// the Cluster policy applies topology hints. Lists are sorted by address;
// ports without endpoints are absent. sl must be sorted by slice name so the
// result is deterministic.
func endpointsFor(ports []svc.Port, sl []*sliceInfo, f families, env trafficEnv) map[svc.PortName][]svc.Endpoint {
	if len(ports) == 0 || len(sl) == 0 {
		return nil
	}
	lists := make([][]candidate, len(ports))            // External twins share their port's list
	index := make([]map[netip.AddrPort]int, len(ports)) // built once a list reaches dedupeMapAt
	for _, s := range sl {
		if (s.v6 && !f.v6) || (!s.v6 && !f.v4) {
			continue
		}
		fam := svc.IPv4
		if s.v6 {
			fam = svc.IPv6
		}
		for _, sp := range s.ports {
			i := slices.IndexFunc(ports, func(p svc.Port) bool {
				return !p.Name.External && p.Name.Port == sp.name && p.Protocol == sp.proto && p.Name.Family == fam
			})
			if i < 0 {
				continue
			}
			for _, e := range s.eps {
				c := candidate{ep: svc.Endpoint{
					Addr:  netip.AddrPortFrom(e.addr, sp.port),
					Ready: e.ready, Serving: e.serving, Terminating: e.terminating,
					NodeName: e.nodeName, Zone: e.zone, PodName: e.podName,
				}, hints: e.hints}
				if j := find(lists[i], index[i], c.ep.Addr); j >= 0 {
					if !e.terminating {
						lists[i][j] = c
					}
					continue
				}
				lists[i] = append(lists[i], c)
				switch n := len(lists[i]); {
				case n == dedupeMapAt:
					index[i] = make(map[netip.AddrPort]int, 2*n)
					for j, x := range lists[i] {
						index[i][x.ep.Addr] = j
					}
				case n > dedupeMapAt:
					index[i][c.ep.Addr] = n - 1
				}
			}
		}
	}
	out := make(map[svc.PortName][]svc.Endpoint, len(ports))
	var last []candidate // the list of the latest non-External port
	for i, p := range ports {
		l := lists[i]
		if p.Name.External {
			l = last
		} else {
			slices.SortFunc(l, func(a, b candidate) int { return a.ep.Addr.Compare(b.ep.Addr) })
			last = l
		}
		if len(l) == 0 {
			continue
		}
		if eps := categorize(l, usesLocal(p), env); len(eps) > 0 {
			out[p.Name] = eps
		}
	}
	return out
}

// find returns the position of a in l (through idx when built), or -1.
func find(l []candidate, idx map[netip.AddrPort]int, a netip.AddrPort) int {
	if idx != nil {
		if j, ok := idx[a]; ok {
			return j
		}
		return -1
	}
	return slices.IndexFunc(l, func(c candidate) bool { return c.ep.Addr == a })
}
