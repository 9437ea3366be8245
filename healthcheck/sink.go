package healthcheck

import (
	"context"

	"github.com/uproxy/uproxy/svc"
)

// Wrap returns a svc.Sink that forwards to next and keeps s in step with
// what next is told: the health check node ports from SyncPorts, the local
// ready endpoints from UpdateEndpoints. Like every Sink it is called from
// one goroutine.
func (s *Server) Wrap(next svc.Sink) svc.Sink {
	return &sink{next: next, s: s, local: map[svc.PortName]int{}}
}

type sink struct {
	next svc.Sink
	s    *Server

	// Owned by the caller's goroutine.
	hc    []svc.Port           // the last SyncPorts' ports that count for a health check
	local map[svc.PortName]int // ready endpoints on this node, per port
}

var _ svc.Sink = (*sink)(nil)

func (k *sink) SyncPorts(ctx context.Context, ports []svc.Port) error {
	err := k.next.SyncPorts(ctx, ports)
	k.hc = k.hc[:0]
	for _, p := range ports {
		if p.Traffic.HealthCheckNodePort != 0 && p.ServesExternal() {
			k.hc = append(k.hc, p)
		}
	}
	k.publish()
	return err
}

func (k *sink) UpdateEndpoints(eps map[svc.PortName][]svc.Endpoint) {
	k.next.UpdateEndpoints(eps)
	for name, list := range eps {
		n := 0
		for _, e := range list {
			if e.Ready && e.NodeName == k.s.cfg.NodeName {
				n++
			}
		}
		if n == 0 {
			delete(k.local, name)
		} else {
			k.local[name] = n
		}
	}
	k.publish()
}

// publish hands the server the Services needing a health check and their
// local ready endpoint counts: as kube-proxy's LocalReadyEndpoints, summed
// over the Service's ports, counted on the ports that carry external
// traffic (the External twin of a split port holds all local endpoints;
// its cluster twin may be narrowed by topology). A dual-stack Service
// counts the family with more (kube-proxy's two family proxiers each
// report theirs to one shared server, the last one wins).
func (k *sink) publish() {
	ports := map[Service]uint16{}
	perFamily := map[Service]map[svc.Family]int{}
	for _, p := range k.hc {
		name := Service{p.Name.Namespace, p.Name.Name}
		ports[name] = p.Traffic.HealthCheckNodePort
		if perFamily[name] == nil {
			perFamily[name] = map[svc.Family]int{}
		}
		perFamily[name][p.Name.Family] += k.local[p.Name]
	}
	counts := make(map[Service]int, len(ports))
	for name, fams := range perFamily {
		for _, n := range fams {
			counts[name] = max(counts[name], n)
		}
	}
	k.s.Sync(ports, counts)
}
