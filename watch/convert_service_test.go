package watch

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	v1 "k8s.io/api/core/v1"
)

// TestLoadBalancerSourceRanges: spec.loadBalancerSourceRanges reach every
// port of the service as masked prefixes of both families; bad entries are
// skipped with a warning, and a list with no valid entry fails closed (one
// zero Prefix, which iptables/ renders as "no source admitted").
func TestLoadBalancerSourceRanges(t *testing.T) {
	tests := map[string]struct {
		ranges []string
		want   []netip.Prefix // nil: no restriction
		warns  int
	}{
		"none: no restriction": {},
		"both families, masked": {
			ranges: []string{"10.1.2.3/8", " 192.0.2.7/32 ", "2001:db8::1/32"},
			want:   prefixes("10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"),
		},
		"IPv4-mapped IPv6 range is IPv4": {
			ranges: []string{"::ffff:10.0.0.0/104"},
			want:   prefixes("10.0.0.0/8"),
		},
		"bad and duplicate entries skipped": {
			ranges: []string{"10.0.0.0/8", "bogus", "10.0.0.1", "10.0.0.0/8", "300.0.0.0/8"},
			want:   prefixes("10.0.0.0/8"),
			warns:  4,
		},
		"no valid entry: fails closed": {
			ranges: []string{"bogus", "10.0.0.1"},
			want:   []netip.Prefix{{}},
			warns:  3,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var buf syncBuffer
			s := service("ns", "lb", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.LoadBalancerSourceRanges = tc.ranges
				s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53})
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "198.51.100.1"}}
			})
			info := convertService(s, "", zerolog.New(&buf))
			if info == nil || len(info.ports) != 2 {
				t.Fatalf("converted: %+v", info)
			}
			for _, p := range info.ports {
				if !slices.Equal(p.LoadBalancerSourceRanges, tc.want) {
					t.Errorf("%s: ranges %v, want %v", p.Name, p.LoadBalancerSourceRanges, tc.want)
				}
			}
			if n := strings.Count(buf.String(), "spec.loadBalancerSourceRanges"); n != tc.warns {
				t.Errorf("%d warnings, want %d:\n%s", n, tc.warns, buf.String())
			}
			if len(s.Spec.LoadBalancerSourceRanges) != len(tc.ranges) {
				t.Error("the Service object was modified")
			}
		})
	}
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}
