package iptables

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/uproxy/uproxy/svc"
)

// TestSplitPortRules: a service port split by its traffic policies has two
// portals. Cluster IPs go to the cluster listener (30001) from everywhere;
// the ExternalIP and the NodePort go to the external listener (30002) from
// pods and other hosts, and to the cluster listener from the node itself.
func TestSplitPortRules(t *testing.T) {
	split := func(p *svc.Port) {
		p.NodePort = 30080
		p.ExternalIPs = addrs("192.0.2.7")
		p.LoadBalancerIPs = addrs("203.0.113.9")
		p.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
		p.Traffic = svc.Traffic{ExternalLocal: true, Split: true}
	}
	external := func(p *svc.Port) { p.Name.External = true }
	p, r, _ := newTestProgrammer(t, baseConfig())
	if err := p.SyncPortals(context.Background(), []svc.Portal{web(30001, split), web(30002, split, external)}); err != nil {
		t.Fatal(err)
	}
	want := append(slices.Clone(allJumps),
		`-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j REDIRECT --to-ports 30001`,
		`-A KUBE-PORTALS-HOST -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:30001`,
		`-A KUBE-PORTALS-HOST -d 192.0.2.7/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:30001`,
		`-A KUBE-NODEPORT-HOST -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j DNAT --to-destination 10.0.0.1:30001`,
		`-A KUBE-PORTALS-HOST -s 198.51.100.0/24 -d 203.0.113.9/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:30001`,
		// One DROP for the LB IP, although both portals carry it.
		`-A UPROXY-LB-FIREWALL -d 203.0.113.9/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j DROP`,
		`-A KUBE-PORTALS-CONTAINER -d 192.0.2.7/32 -p tcp -m comment --comment "default/web:http/external" -m tcp --dport 80 -j REDIRECT --to-ports 30002`,
		`-A KUBE-NODEPORT-CONTAINER -p tcp -m comment --comment "default/web:http/external" -m tcp --dport 30080 -j REDIRECT --to-ports 30002`,
		`-A KUBE-PORTALS-CONTAINER -s 198.51.100.0/24 -d 203.0.113.9/32 -p tcp -m comment --comment "default/web:http/external" -m tcp --dport 80 -j REDIRECT --to-ports 30002`,
	)
	want = append(want, guard("tcp", "default/web:http", 30001)...)
	want = append(want, guard("tcp", "default/web:http/external", 30002)...)
	slices.Sort(want)
	if got := ourLines(r.state[v4].save()); !slices.Equal(got, want) {
		t.Errorf("installed rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if c := p.conflicts[v4]; c != "" {
		t.Errorf("conflicts: %s", c)
	}
	// A restart takes both proxy ports back from the comments.
	ports, err := p.InstalledProxyPorts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	name := svc.PortName{Namespace: "default", Name: "web", Port: "http"}
	extName := name
	extName.External = true
	if ports[name] != 30001 || ports[extName] != 30002 {
		t.Errorf("installed proxy ports %v, want %v:30001 and %v:30002", ports, name, extName)
	}
}

func TestParseExternalPortName(t *testing.T) {
	for _, n := range []svc.PortName{
		{Namespace: "ns", Name: "web", Port: "http", External: true},
		{Namespace: "ns", Name: "web", External: true},
		{Namespace: "ns", Name: "web"},
	} {
		t.Run(n.String(), func(t *testing.T) {
			if got, ok := parsePortName(sanitizeComment(n.String())); !ok || got != n {
				t.Errorf("parsePortName(%q) = %v, %v; want %v", n.String(), got, ok, n)
			}
		})
	}
}
