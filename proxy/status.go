package proxy

import (
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/uproxy/uproxy/svc"
)

// PortStatus is one service port as /debug/services shows it.
type PortStatus struct {
	Name            string        `json:"name"` // ns/name:port
	Namespace       string        `json:"namespace"`
	Service         string        `json:"service"`
	Port            string        `json:"port"` // the Service port's name
	Protocol        string        `json:"protocol"`
	Portals         []string      `json:"portals"` // ip:port of cluster, external and load-balancer IPs
	NodePort        uint16        `json:"nodePort,omitempty"`
	ProxyPort       uint16        `json:"proxyPort,omitempty"` // iptables mode; direct mode: the service port
	Listen          []string      `json:"listen"`              // sockets actually open
	Affinity        string        `json:"sessionAffinity"`     // "None" or "ClientIP"
	AffinityTimeout time.Duration `json:"sessionAffinityTimeout,omitempty"`
	InternalLocal   bool          `json:"internalTrafficPolicyLocal,omitempty"`
	ExternalLocal   bool          `json:"externalTrafficPolicyLocal,omitempty"`
	// Serves is "cluster" or "external" for the two listeners of a port
	// split by its traffic policies (svc.Traffic), "" for a port serving both.
	Serves              string           `json:"serves,omitempty"`
	HealthCheckNodePort uint16           `json:"healthCheckNodePort,omitempty"`
	Synced              bool             `json:"synced"` // false: endpoints known, service port not (yet) synced
	Endpoints           []EndpointStatus `json:"endpoints"`

	ActiveConnections int64         `json:"activeConnections"`
	TotalConnections  uint64        `json:"totalConnections"`
	BytesToEndpoints  uint64        `json:"bytesToEndpoints"`
	BytesToClients    uint64        `json:"bytesToClients"`
	NoEndpointResets  uint64        `json:"noEndpointResets"`
	DialFailureResets uint64        `json:"dialFailureResets"`
	Retries           uint64        `json:"retries"`
	EarlyResets       uint64        `json:"earlyResets"`
	Replays           uint64        `json:"replays"`
	ResetsBeforeReply uint64        `json:"resetsBeforeReply"` // passed to the client, not replayed
	UDPSessions       int64         `json:"udpSessions"`
	UDPSessionsTotal  uint64        `json:"udpSessionsTotal"`
	UDPCapDrops       uint64        `json:"udpCapDrops"`
	DialTimeout       time.Duration `json:"dialTimeout"` // the current adaptive first-try timeout
}

// EndpointStatus is one endpoint of a PortStatus.
type EndpointStatus struct {
	Addr              string     `json:"addr"`
	State             string     `json:"state"` // "ready", "terminating" or "ejected"
	Ready             bool       `json:"ready"`
	Serving           bool       `json:"serving"`
	Terminating       bool       `json:"terminating"`
	NodeName          string     `json:"nodeName,omitempty"`
	Zone              string     `json:"zone,omitempty"`
	Pod               string     `json:"pod,omitempty"`
	Local             bool       `json:"local,omitempty"` // on this node
	EjectedUntil      *time.Time `json:"ejectedUntil,omitempty"`
	Failures          uint64     `json:"failures"`
	Ejections         uint64     `json:"ejections"`
	ActiveConnections int64      `json:"activeConnections"`
	TotalConnections  uint64     `json:"totalConnections"`
}

// Snapshot returns every known service port, sorted by name.
func (p *Proxier) Snapshot() []PortStatus {
	p.mu.Lock()
	out := make([]PortStatus, 0, len(p.ports))
	for _, ps := range p.ports {
		st := p.portStatusLocked(ps)
		out = append(out, st)
	}
	p.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (p *Proxier) portStatusLocked(ps *portState) PortStatus {
	st := PortStatus{
		Name: ps.label, Namespace: ps.name.Namespace, Service: ps.name.Name, Port: ps.name.Port,
		Affinity:          "None",
		ActiveConnections: ps.stats.active.Load(), TotalConnections: ps.stats.total.Load(),
		BytesToEndpoints: ps.stats.bytesUp.Load(), BytesToClients: ps.stats.bytesDown.Load(),
		NoEndpointResets: ps.stats.noEndpoint.Load(), DialFailureResets: ps.stats.dialFailed.Load(),
		Retries: ps.stats.retries.Load(), EarlyResets: ps.stats.earlyResets.Load(), Replays: ps.stats.replays.Load(),
		ResetsBeforeReply: ps.stats.resetsCut.Load(),
		UDPSessions:       ps.stats.udpActive.Load(), UDPSessionsTotal: ps.stats.udpTotal.Load(),
		UDPCapDrops: ps.stats.udpCapDrops.Load(), DialTimeout: p.firstTimeout(ps),
		Endpoints: []EndpointStatus{},
	}
	if sp := ps.spec.Load(); sp != nil {
		st.Synced = true
		st.Protocol = string(sp.Protocol)
		for _, ip := range sp.PortalAddrs() {
			st.Portals = append(st.Portals, netip.AddrPortFrom(ip, sp.Port).String())
		}
		st.NodePort = sp.NodePort
		st.InternalLocal = sp.InternalLocal
		st.ExternalLocal, st.HealthCheckNodePort, st.Serves = sp.Traffic.ExternalLocal, sp.Traffic.HealthCheckNodePort, serves(*sp)
		if sp.Affinity.ClientIP {
			st.Affinity = "ClientIP"
			st.AffinityTimeout = time.Duration(ps.bal.affTimeout.Load())
		}
	}
	if ps.lst != nil {
		st.ProxyPort = ps.lst.proxyPort
		st.Listen = append([]string(nil), ps.lst.addrs...)
	}
	now := mono()
	if s := ps.bal.set.Load(); s != nil {
		for i, be := range s.all {
			ep := s.info[i]
			es := EndpointStatus{
				Addr: be.addr.String(), State: "ready", Ready: ep.Ready, Serving: ep.Serving, Terminating: ep.Terminating,
				NodeName: ep.NodeName, Zone: ep.Zone, Pod: ep.PodName,
				Local:    p.cfg.NodeName != "" && ep.NodeName == p.cfg.NodeName,
				Failures: be.health.failures.Load(), Ejections: be.health.ejections.Load(),
				ActiveConnections: be.active.Load(), TotalConnections: be.total.Load(),
			}
			if !ep.Ready {
				es.State = "terminating"
			}
			if be.health.ejected.Load() {
				es.State = "ejected"
				u := be.health.until.Load()
				if u < now {
					u = now // awaiting its probe or UDP trial
				}
				t := monoTime(u).Round(time.Millisecond)
				es.EjectedUntil = &t
			}
			st.Endpoints = append(st.Endpoints, es)
		}
	}
	return st
}

// Describe writes a plain-text table, like `kubectl describe svc`, for every
// service port.
func (p *Proxier) Describe(w io.Writer) {
	snap := p.Snapshot()
	if len(snap) == 0 {
		fmt.Fprintln(w, "No service ports.")
		return
	}
	for i, st := range snap {
		if i > 0 {
			fmt.Fprintln(w)
		}
		describePort(w, st)
	}
}

func describePort(w io.Writer, st PortStatus) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	field := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	field("Name", st.Name)
	if !st.Synced {
		field("State", "endpoints known, service port not synced")
	}
	field("Protocol", st.Protocol)
	field("Portals", orNone(strings.Join(st.Portals, ", ")))
	if st.NodePort != 0 {
		field("NodePort", fmt.Sprint(st.NodePort))
	}
	field("Proxy port", fmt.Sprintf("%d (listening on %s)", st.ProxyPort, orNone(strings.Join(st.Listen, ", "))))
	aff := st.Affinity
	if st.Affinity == "ClientIP" {
		aff += fmt.Sprintf(" (timeout %s)", st.AffinityTimeout)
	}
	field("Session Affinity", aff)
	if st.InternalLocal {
		field("Internal Traffic Policy", "Local")
	}
	describeTraffic(field, st)
	field("Connections", fmt.Sprintf("active %d, total %d, bytes in %d, out %d", st.ActiveConnections,
		st.TotalConnections, st.BytesToEndpoints, st.BytesToClients))
	field("Failures", fmt.Sprintf("no endpoint %d, all tries failed %d, retries %d, early resets %d (moved %d)",
		st.NoEndpointResets, st.DialFailureResets, st.Retries, st.EarlyResets, st.Replays))
	if st.Protocol == string(svc.UDP) {
		field("UDP sessions", fmt.Sprintf("active %d, total %d, dropped at cap %d", st.UDPSessions,
			st.UDPSessionsTotal, st.UDPCapDrops))
	}
	field("Dial timeout", st.DialTimeout.String())
	_ = tw.Flush()
	if len(st.Endpoints) == 0 {
		fmt.Fprintln(w, "Endpoints:         <none>")
		return
	}
	fmt.Fprintln(w, "Endpoints:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  ADDRESS\tSTATE\tACTIVE\tTOTAL\tFAILURES\tEJECTED UNTIL\tNODE\tPOD")
	for _, e := range st.Endpoints {
		until := "-"
		if e.EjectedUntil != nil {
			until = e.EjectedUntil.Format(time.TimeOnly + ".000")
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\n", e.Addr, e.State, e.ActiveConnections,
			e.TotalConnections, e.Failures, until, orDash(e.NodeName), orDash(e.Pod))
	}
	_ = tw.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
