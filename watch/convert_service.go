package watch

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/uproxy/uproxy/svc"
)

// serviceInfo is a Service reduced to what uproxy proxies, with the addresses
// of every IP family (the node's families are applied later, by the runner).
// It holds no reference to the API object.
type serviceInfo struct {
	ports []svc.Port
}

func (s *serviceInfo) equal(o *serviceInfo) bool {
	if s == nil || o == nil {
		return s == o
	}
	return slices.EqualFunc(s.ports, o.ports, svc.Port.Equal)
}

// forFamilies returns the service's ports for the node's families f: each
// port once per family in f that the service has a cluster IP of (IPv4
// first), holding only that family's cluster, external and load-balancer
// IPs, with Name.Family set. This keeps families apart as kube-proxy's
// metaproxier does: an IPv4 portal's endpoints (endpointsFor) are IPv4 pods
// only, and an IPv6 external IP of an IPv4-only service is not portalled
// (nothing of its family could serve it). nil when the service has no
// cluster IP in f. The result is freshly allocated.
func (s *serviceInfo) forFamilies(f families) []svc.Port {
	if s == nil {
		return nil
	}
	var out []svc.Port
	for _, p := range s.ports {
		for _, fam := range []svc.Family{svc.IPv4, svc.IPv6} {
			if !f.has(fam) {
				continue
			}
			q := p
			q.Name.Family = fam
			q.ClusterIPs = filterAddrs(p.ClusterIPs, fam)
			if len(q.ClusterIPs) == 0 {
				continue
			}
			q.ExternalIPs = filterAddrs(p.ExternalIPs, fam)
			q.LoadBalancerIPs = filterAddrs(p.LoadBalancerIPs, fam)
			out = append(out, q)
		}
	}
	return out
}

// filterAddrs returns the addresses of family fam (nil when none).
func filterAddrs(in []netip.Addr, fam svc.Family) []netip.Addr {
	var out []netip.Addr
	for _, a := range in {
		if svc.FamilyOf(a) == fam {
			out = append(out, a)
		}
	}
	return out
}

// wantedByLabels applies the informer label selector (kube-proxy's): no
// headless label, and the service-proxy-name label absent (proxyName "") or
// equal to proxyName.
func wantedByLabels(labels map[string]string, proxyName string) bool {
	if _, ok := labels[LabelHeadless]; ok {
		return false
	}
	v, ok := labels[LabelServiceProxyName]
	if proxyName == "" {
		return !ok
	}
	return ok && v == proxyName
}

// convertService converts a Service, or returns nil when uproxy does not
// proxy it. Bad fields are skipped with one warning each; the rest converts.
// s is never modified.
func convertService(s *v1.Service, proxyName string, log zerolog.Logger) *serviceInfo {
	if s == nil {
		return nil
	}
	nn := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
	skip := func(why string) *serviceInfo {
		log.Debug().Stringer("service", nn).Str("reason", why).Msg("service not proxied")
		return nil
	}
	switch {
	case !wantedByLabels(s.Labels, proxyName):
		return skip("labels select another proxy or headless")
	case s.Spec.Type == v1.ServiceTypeExternalName:
		return skip("ExternalName")
	case s.Spec.ClusterIP == v1.ClusterIPNone:
		return skip("headless")
	case s.Spec.ClusterIP == "" && len(s.Spec.ClusterIPs) == 0:
		return skip("no cluster IP")
	}
	bad := badField{log: log, kind: "service", nn: nn}

	ipStrs, ipField := s.Spec.ClusterIPs, "spec.clusterIPs"
	if len(ipStrs) == 0 {
		ipStrs, ipField = []string{s.Spec.ClusterIP}, "spec.clusterIP"
	}
	clusterIPs := bad.addrs(ipField, ipStrs)
	if len(clusterIPs) == 0 {
		return skip("no valid cluster IP")
	}
	externalIPs := bad.addrs("spec.externalIPs", s.Spec.ExternalIPs)
	var lbStrs []string
	for i, ing := range s.Status.LoadBalancer.Ingress {
		if ing.IP == "" {
			continue // hostname-only ingress: nothing to portal
		}
		if ing.IPMode != nil && *ing.IPMode == v1.LoadBalancerIPModeProxy {
			log.Debug().Stringer("service", nn).Int("ingress", i).Msg("load-balancer IP in Proxy mode not portalled")
			continue
		}
		lbStrs = append(lbStrs, ing.IP)
	}
	lbIPs := bad.addrs("status.loadBalancer.ingress[].ip", lbStrs)
	lbRanges := bad.sourceRanges(s.Spec.LoadBalancerSourceRanges)

	var aff svc.Affinity
	if s.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		aff = svc.Affinity{ClientIP: true, Timeout: svc.DefaultAffinityTimeout}
		if c := s.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			if t := *c.ClientIP.TimeoutSeconds; t > 0 {
				aff.Timeout = time.Duration(t) * time.Second
			} else {
				bad.report("spec.sessionAffinityConfig.clientIP.timeoutSeconds", strconv.Itoa(int(t)), "using the default 10800")
			}
		}
	}
	internalLocal := s.Spec.InternalTrafficPolicy != nil && *s.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	traffic := trafficOf(s, bad)

	info := &serviceInfo{ports: make([]svc.Port, 0, len(s.Spec.Ports))}
	seen := make(map[string]bool, len(s.Spec.Ports))
	for i := range s.Spec.Ports {
		sp := &s.Spec.Ports[i]
		field := fmt.Sprintf("spec.ports[%d]", i)
		proto, ok := protocol(sp.Protocol)
		if !ok {
			bad.report(field+".protocol", string(sp.Protocol), "port skipped, only TCP and UDP are proxied")
			continue
		}
		if sp.Port < 1 || sp.Port > 65535 {
			bad.report(field+".port", strconv.Itoa(int(sp.Port)), "port skipped")
			continue
		}
		if seen[sp.Name] {
			bad.report(field+".name", sp.Name, "duplicate port name skipped")
			continue
		}
		seen[sp.Name] = true
		nodePort := uint16(0)
		if sp.NodePort < 0 || sp.NodePort > 65535 {
			bad.report(field+".nodePort", strconv.Itoa(int(sp.NodePort)), "node port ignored")
		} else {
			nodePort = uint16(sp.NodePort)
		}
		info.ports = append(info.ports, svc.Port{
			Name:            svc.PortName{Namespace: s.Namespace, Name: s.Name, Port: sp.Name},
			Protocol:        proto,
			ClusterIPs:      clusterIPs,
			Port:            uint16(sp.Port),
			NodePort:        nodePort,
			ExternalIPs:     externalIPs,
			LoadBalancerIPs: lbIPs,
			Affinity:        aff,
			InternalLocal:   internalLocal,
			Traffic:         traffic,

			LoadBalancerSourceRanges: lbRanges,
		})
	}
	return info
}

// protocol maps an API protocol ("" is TCP, the API default) to svc's.
func protocol(p v1.Protocol) (svc.Protocol, bool) {
	switch p {
	case v1.ProtocolTCP, "":
		return svc.TCP, true
	case v1.ProtocolUDP:
		return svc.UDP, true
	}
	return "", false
}

// badField logs skipped bad input: one warning naming the object, the field
// and the value.
type badField struct {
	log  zerolog.Logger
	kind string // "service" or "endpointslice"
	nn   types.NamespacedName
}

func (b badField) report(field, value, what string) {
	const maxValue = 128 // hostile input must not flood the log
	if len(value) > maxValue {
		value = value[:maxValue] + "..."
	}
	b.log.Warn().Str(b.kind, b.nn.String()).Str("field", field).Str("value", value).Msg("invalid value: " + what)
}

// addrs parses IP addresses, skipping (with a warning) invalid and duplicate
// ones. It never returns zoned or IPv4-mapped IPv6 addresses.
func (b badField) addrs(field string, in []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range in {
		a, err := parseIP(s)
		if err != nil {
			b.report(field, s, err.Error())
			continue
		}
		if slices.Contains(out, a) {
			b.report(field, s, "duplicate address skipped")
			continue
		}
		out = append(out, a)
	}
	return out
}

// sourceRanges parses spec.loadBalancerSourceRanges (CIDRs, surrounding
// spaces allowed), skipping invalid and duplicate ones with a warning each.
// When ranges are listed but none parses, it returns one invalid Prefix,
// which admits nobody (svc.Port.LoadBalancerSourceRanges): a restriction
// the service asked for fails closed instead of opening the LB IPs to every
// source.
func (b badField) sourceRanges(in []string) []netip.Prefix {
	const field = "spec.loadBalancerSourceRanges"
	var out []netip.Prefix
	for _, s := range in {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil || p.Addr().Zone() != "" {
			b.report(field, s, "not a CIDR, skipped")
			continue
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 { // ::ffff:10.0.0.0/104 is 10.0.0.0/8
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		p = p.Masked()
		if slices.Contains(out, p) {
			b.report(field, s, "duplicate range skipped")
			continue
		}
		out = append(out, p)
	}
	if len(in) > 0 && len(out) == 0 {
		b.report(field, strings.Join(in, ","), "no valid range: load-balancer IPs admit no source")
		return []netip.Prefix{{}}
	}
	return out
}

// parseIP parses a unicast IP address as the proxy can use it: no zone,
// IPv4-mapped IPv6 unmapped, not unspecified or multicast.
func parseIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("not an IP address, skipped")
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("zoned address skipped")
	}
	a = a.Unmap()
	if a.IsUnspecified() || a.IsMulticast() {
		return netip.Addr{}, fmt.Errorf("unspecified or multicast address skipped")
	}
	return a, nil
}
