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
	lists := make([][]svc.Endpoint, len(ports))            // External twins share their port's list
	index := make([]map[netip.AddrPort]int, len(ports))    // built once a list reaches dedupeMapAt
	hinted := make([]map[netip.AddrPort]hints, len(ports)) // nil while no endpoint has a hint
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
				ep := svc.Endpoint{
					Addr:  netip.AddrPortFrom(e.addr, sp.port),
					Ready: e.ready, Serving: e.serving, Terminating: e.terminating,
					NodeName: e.nodeName, Zone: e.zone, PodName: e.podName,
				}
				if j := find(lists[i], index[i], ep.Addr); j >= 0 {
					if !e.terminating {
						lists[i][j] = ep
						setHints(&hinted[i], ep.Addr, e.hints)
					}
					continue
				}
				lists[i] = append(lists[i], ep)
				setHints(&hinted[i], ep.Addr, e.hints)
				switch n := len(lists[i]); {
				case n == dedupeMapAt:
					index[i] = make(map[netip.AddrPort]int, 2*n)
					for j, x := range lists[i] {
						index[i][x.Addr] = j
					}
				case n > dedupeMapAt:
					index[i][ep.Addr] = n - 1
				}
			}
		}
	}
	out := make(map[svc.PortName][]svc.Endpoint, len(ports))
	last := -1 // the latest non-External port
	for i, p := range ports {
		if !p.Name.External {
			slices.SortFunc(lists[i], func(a, b svc.Endpoint) int { return a.Addr.Compare(b.Addr) })
			last = i
		}
		if last < 0 || len(lists[last]) == 0 {
			continue
		}
		if eps := categorize(lists[last], hinted[last], usesLocal(p), env); len(eps) > 0 {
			out[p.Name] = eps
		}
	}
	return out
}

// setHints records an endpoint's hints in *m, creating it at the first
// hint, and forgets them when h is empty.
func setHints(m *map[netip.AddrPort]hints, a netip.AddrPort, h hints) {
	switch {
	case h != hints{}:
		if *m == nil {
			*m = make(map[netip.AddrPort]hints)
		}
		(*m)[a] = h
	case *m != nil:
		delete(*m, a)
	}
}

// find returns the position of a in l (through idx when built), or -1.
func find(l []svc.Endpoint, idx map[netip.AddrPort]int, a netip.AddrPort) int {
	if idx != nil {
		if j, ok := idx[a]; ok {
			return j
		}
		return -1
	}
	return slices.IndexFunc(l, func(e svc.Endpoint) bool { return e.Addr == a })
}
