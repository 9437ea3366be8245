package iptables

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/uproxy/uproxy/svc"
)

const (
	jumpPortalsPre  = `-A PREROUTING -m comment --comment "handle ClusterIPs; NOTE: this must be before the NodePort rules" -j KUBE-PORTALS-CONTAINER`
	jumpPortalsOut  = `-A OUTPUT -m comment --comment "handle ClusterIPs; NOTE: this must be before the NodePort rules" -j KUBE-PORTALS-HOST`
	jumpNodePortPre = `-A PREROUTING -m addrtype --dst-type LOCAL -m comment --comment "handle service NodePorts; NOTE: this must be the last rule in the chain" -j KUBE-NODEPORT-CONTAINER`
	jumpNodePortOut = `-A OUTPUT -m addrtype --dst-type LOCAL -m comment --comment "handle service NodePorts; NOTE: this must be the last rule in the chain" -j KUBE-NODEPORT-HOST`
	jumpNonLocal    = `-A INPUT -m conntrack --ctstate NEW -m comment --comment "uproxy: proxy ports take only portal traffic (DNAT) or the node itself" -j KUBE-NODEPORT-NON-LOCAL`
	jumpFirewallIn  = `-A INPUT -m conntrack --ctstate NEW -m comment --comment "uproxy: load balancer source ranges" -j UPROXY-LB-FIREWALL`
	jumpFirewallFwd = `-A FORWARD -m conntrack --ctstate NEW -m comment --comment "uproxy: load balancer source ranges" -j UPROXY-LB-FIREWALL`
	jumpFirewallOut = `-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "uproxy: load balancer source ranges" -j UPROXY-LB-FIREWALL`
	jumpPortWait    = `-A INPUT -m comment --comment "uproxy: drop new connections to proxy ports nothing listens on (restart), the client retries" -j UPROXY-PORT-WAIT`
)

// ourLines returns the -A lines of our chains and jumps in a save dump.
func ourLines(save string) []string {
	var out []string
	for _, l := range strings.Split(save, "\n") {
		if !strings.HasPrefix(l, "-A ") {
			continue
		}
		chain, spec, _ := strings.Cut(l[3:], " ")
		if t, _ := jumpTarget(spec); isOurChain(chain) || isOurChain(t) {
			out = append(out, l)
		}
	}
	slices.Sort(out)
	return out
}

// allJumps are the jumps into our chains, as iptables-save prints them.
var allJumps = []string{jumpPortalsPre, jumpPortalsOut, jumpNodePortPre, jumpNodePortOut, jumpNonLocal,
	jumpFirewallIn, jumpFirewallFwd, jumpFirewallOut, jumpPortWait}

func TestRuleKinds(t *testing.T) {
	lb := func(ranges ...string) func(*svc.Port) {
		return func(p *svc.Port) {
			p.ClusterIPs = nil
			p.LoadBalancerIPs = addrs("203.0.113.9")
			for _, r := range ranges {
				if r == "" {
					p.LoadBalancerSourceRanges = append(p.LoadBalancerSourceRanges, netip.Prefix{})
					continue
				}
				p.LoadBalancerSourceRanges = append(p.LoadBalancerSourceRanges, netip.MustParsePrefix(r))
			}
		}
	}
	const (
		lbMatch  = `-d 203.0.113.9/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80`
		lbDrop   = `-A UPROXY-LB-FIREWALL ` + lbMatch + ` -j DROP`
		redirect = ` -j REDIRECT --to-ports 30001`
		toNode   = ` -j DNAT --to-destination 10.0.0.1:30001`
	)
	tests := map[string]struct {
		cfg     func(*Config)
		portals []svc.Portal
		fam     family
		want    []string // our rule lines besides the jumps, any order
	}{
		"ClusterIP, bound to 0.0.0.0: REDIRECT for pods, DNAT to the node IP for the host": {
			portals: []svc.Portal{web(30001)},
			want: []string{
				`-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j REDIRECT --to-ports 30001`,
				`-A KUBE-PORTALS-HOST -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:30001`,
			},
		},
		"ClusterIP, bound to a node IP: DNAT to it from pods and host": {
			cfg:     func(c *Config) { c.BindAddr = netip.MustParseAddr("10.0.0.5") },
			portals: []svc.Portal{web(30001)},
			want: []string{
				`-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j DNAT --to-destination 10.0.0.5:30001`,
				`-A KUBE-PORTALS-HOST -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j DNAT --to-destination 10.0.0.5:30001`,
			},
		},
		"NodePort: container and host rules (the proxy port's guard as for every portal)": {
			portals: []svc.Portal{web(30001, func(p *svc.Port) { p.NodePort = 30080 })},
			want: []string{
				`-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j REDIRECT --to-ports 30001`,
				`-A KUBE-PORTALS-HOST -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:30001`,
				`-A KUBE-NODEPORT-CONTAINER -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j REDIRECT --to-ports 30001`,
				`-A KUBE-NODEPORT-HOST -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j DNAT --to-destination 10.0.0.1:30001`,
			},
		},
		"NodePort restricted by --nodeport-addresses": {
			cfg:     func(c *Config) { c.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("10.0.0.7/24")} },
			portals: []svc.Portal{web(30001, func(p *svc.Port) { p.ClusterIPs = nil; p.NodePort = 30080 })},
			want: []string{
				`-A KUBE-NODEPORT-CONTAINER -d 10.0.0.0/24 -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j REDIRECT --to-ports 30001`,
				`-A KUBE-NODEPORT-HOST -d 10.0.0.0/24 -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j DNAT --to-destination 10.0.0.1:30001`,
			},
		},
		"ExternalIP": {
			portals: []svc.Portal{web(30001, func(p *svc.Port) { p.ClusterIPs = nil; p.ExternalIPs = addrs("192.0.2.7") })},
			want: []string{
				`-A KUBE-PORTALS-CONTAINER -d 192.0.2.7/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j REDIRECT --to-ports 30001`,
				`-A KUBE-PORTALS-HOST -d 192.0.2.7/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:30001`,
			},
		},
		"LoadBalancer ingress IP, UDP": {
			portals: []svc.Portal{web(30002, func(p *svc.Port) {
				p.ClusterIPs, p.Protocol, p.Port = nil, svc.UDP, 53
				p.LoadBalancerIPs = addrs("203.0.113.9")
			})},
			want: []string{
				`-A KUBE-PORTALS-CONTAINER -d 203.0.113.9/32 -p udp -m comment --comment "default/web:http" -m udp --dport 53 -j REDIRECT --to-ports 30002`,
				`-A KUBE-PORTALS-HOST -d 203.0.113.9/32 -p udp -m comment --comment "default/web:http" -m udp --dport 53 -j DNAT --to-destination 10.0.0.1:30002`,
			},
		},
		"IPv6 ClusterIP with ip6tables, host DNAT to [nodeIP]:port": {
			portals: []svc.Portal{web(30001, func(p *svc.Port) { p.ClusterIPs = addrs("fd00:96::10"); p.NodePort = 30080 })},
			fam:     v6,
			want: []string{
				`-A KUBE-PORTALS-CONTAINER -d fd00:96::10/128 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j REDIRECT --to-ports 30001`,
				`-A KUBE-PORTALS-HOST -d fd00:96::10/128 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j DNAT --to-destination [fd00::1]:30001`,
				`-A KUBE-NODEPORT-CONTAINER -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j REDIRECT --to-ports 30001`,
				`-A KUBE-NODEPORT-HOST -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j DNAT --to-destination [fd00::1]:30001`,
			},
		},
		"dual-stack service, IPv4: each family's rules go to its own port's proxy port": {
			portals: dualStackWeb(),
			fam:     v4,
			want: []string{
				`-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j REDIRECT --to-ports 30001`,
				`-A KUBE-PORTALS-HOST -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:30001`,
				`-A KUBE-NODEPORT-CONTAINER -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j REDIRECT --to-ports 30001`,
				`-A KUBE-NODEPORT-HOST -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j DNAT --to-destination 10.0.0.1:30001`,
			},
		},
		"dual-stack service, IPv6: each family's rules go to its own port's proxy port": {
			portals: dualStackWeb(),
			fam:     v6,
			want: []string{
				`-A KUBE-PORTALS-CONTAINER -d fd00:96::10/128 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j REDIRECT --to-ports 30002`,
				`-A KUBE-PORTALS-HOST -d fd00:96::10/128 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j DNAT --to-destination [fd00::1]:30002`,
				`-A KUBE-NODEPORT-CONTAINER -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j REDIRECT --to-ports 30002`,
				`-A KUBE-NODEPORT-HOST -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j DNAT --to-destination [fd00::1]:30002`,
			},
		},
		"IPv6 portal with an IPv4 bind address: left out": {
			cfg:     func(c *Config) { c.BindAddr = netip.MustParseAddr("10.0.0.5") },
			portals: []svc.Portal{web(30001, func(p *svc.Port) { p.ClusterIPs = addrs("fd00:96::10") })},
			fam:     v6,
		},
		"IPv4 portal on an IPv6-only node: pods REDIRECTed, no host rule": {
			cfg:     func(c *Config) { c.NodeIPs = []netip.Addr{nodeV6} },
			portals: []svc.Portal{web(30001)},
			want: []string{
				`-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j REDIRECT --to-ports 30001`,
			},
		},
		"LoadBalancer IP with source ranges: portalled from the ranges only, others dropped in filter": {
			portals: []svc.Portal{web(30001, lb("192.0.2.0/24", "198.51.100.7/32", "2001:db8::/32"))},
			want: []string{
				`-A KUBE-PORTALS-CONTAINER -s 192.0.2.0/24 ` + lbMatch + redirect,
				`-A KUBE-PORTALS-CONTAINER -s 198.51.100.7/32 ` + lbMatch + redirect,
				`-A KUBE-PORTALS-HOST -s 192.0.2.0/24 ` + lbMatch + toNode,
				`-A KUBE-PORTALS-HOST -s 198.51.100.7/32 ` + lbMatch + toNode,
				lbDrop,
			},
		},
		"source range holding the node IP also admits the LB IP as source (kube-proxy's allowFromNode)": {
			portals: []svc.Portal{web(30001, lb("10.0.0.0/8"))},
			want: []string{
				`-A KUBE-PORTALS-CONTAINER -s 10.0.0.0/8 ` + lbMatch + redirect,
				`-A KUBE-PORTALS-CONTAINER -s 203.0.113.9/32 ` + lbMatch + redirect,
				`-A KUBE-PORTALS-HOST -s 10.0.0.0/8 ` + lbMatch + toNode,
				`-A KUBE-PORTALS-HOST -s 203.0.113.9/32 ` + lbMatch + toNode,
				lbDrop,
			},
		},
		"source range 0.0.0.0/0: every source, no firewall rule": {
			portals: []svc.Portal{web(30001, lb("192.0.2.0/24", "0.0.0.0/0"))},
			want: []string{
				`-A KUBE-PORTALS-CONTAINER ` + lbMatch + redirect,
				`-A KUBE-PORTALS-HOST ` + lbMatch + toNode,
			},
		},
		"source ranges of the other family only: nobody of this family is admitted": {
			portals: []svc.Portal{web(30001, lb("2001:db8::/32"))},
			want:    []string{lbDrop},
		},
		"no valid source range (watch/'s zero Prefix): nobody is admitted": {
			portals: []svc.Portal{web(30001, lb(""))},
			want:    []string{lbDrop},
		},
		"source ranges leave ClusterIPs and ExternalIPs alone": {
			portals: []svc.Portal{web(30001, lb("192.0.2.0/24"), func(p *svc.Port) {
				p.ClusterIPs, p.ExternalIPs = addrs("10.96.0.10"), addrs("192.0.2.7")
			})},
			want: []string{
				`-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80` + redirect,
				`-A KUBE-PORTALS-HOST -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80` + toNode,
				`-A KUBE-PORTALS-CONTAINER -d 192.0.2.7/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80` + redirect,
				`-A KUBE-PORTALS-HOST -d 192.0.2.7/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80` + toNode,
				`-A KUBE-PORTALS-CONTAINER -s 192.0.2.0/24 ` + lbMatch + redirect,
				`-A KUBE-PORTALS-HOST -s 192.0.2.0/24 ` + lbMatch + toNode,
				lbDrop,
			},
		},
		"unnamed port: comment is ns/name": {
			portals: []svc.Portal{web(30001, func(p *svc.Port) { p.Name.Port = "" })},
			want: []string{
				`-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp -m comment --comment "default/web" -m tcp --dport 80 -j REDIRECT --to-ports 30001`,
				`-A KUBE-PORTALS-HOST -d 10.96.0.10/32 -p tcp -m comment --comment "default/web" -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:30001`,
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg := baseConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			p, r, _ := newTestProgrammer(t, cfg)
			if err := p.SyncPortals(context.Background(), tc.portals); err != nil {
				t.Fatalf("SyncPortals: %v", err)
			}
			// Every portal's proxy port gets its guard, in every family.
			want := append(slices.Clone(allJumps), tc.want...)
			for _, p := range tc.portals {
				want = append(want, guard(strings.ToLower(string(p.Port.Protocol)), p.Port.Name.KubeString(), int(p.ProxyPort))...)
			}
			slices.Sort(want)
			if got := ourLines(r.state[tc.fam].save()); !slices.Equal(got, want) {
				t.Errorf("installed rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// TestPortWaitRules: with WaitPorts set, UPROXY-PORT-WAIT holds its four
// rules in order (the RETURN for "a socket listens" before each DROP), and a
// chain whose order someone changed is rewritten whole, never patched by
// appending the missing RETURN after the DROP.
func TestPortWaitRules(t *testing.T) {
	cfg := baseConfig()
	cfg.WaitPorts = PortSpan{First: 30000, Last: 32767}
	p, r, _ := newTestProgrammer(t, cfg)
	ctx := context.Background()
	if err := p.SyncPortals(ctx, []svc.Portal{web(30001)}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`-p tcp -m tcp --dport 30000:32767 --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate DNAT -m socket --nowildcard -j RETURN`,
		`-p tcp -m tcp --dport 30000:32767 --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate DNAT -m comment --comment "uproxy: drop new connections to proxy ports nothing listens on (restart), the client retries" -j DROP`,
		`-p udp -m udp --dport 30000:32767 -m conntrack --ctstate DNAT -m socket --nowildcard -j RETURN`,
		`-p udp -m udp --dport 30000:32767 -m conntrack --ctstate DNAT -m comment --comment "uproxy: drop new connections to proxy ports nothing listens on (restart), the client retries" -j DROP`,
	}
	for _, f := range families {
		if got := r.state[f].chains[tableMangle][chainPortWait]; !slices.Equal(got, want) {
			t.Errorf("%s UPROXY-PORT-WAIT:\n%s\nwant:\n%s", f, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if got := r.state[f].chains[tableMangle]["INPUT"]; len(got) != 1 || "-A INPUT "+got[0] != jumpPortWait {
			t.Errorf("%s mangle INPUT = %q", f, got)
		}
	}
	// Someone deletes the first RETURN: the repair must not append it
	// behind the DROP.
	r.mu.Lock()
	c := r.state[v4].chains[tableMangle]
	c[chainPortWait] = slices.Delete(slices.Clone(c[chainPortWait]), 0, 1)
	r.mu.Unlock()
	tick(p, DefaultCheckPeriod)
	if err := p.SyncPortals(ctx, []svc.Portal{web(30001)}); err != nil {
		t.Fatal(err)
	}
	if got := r.state[v4].chains[tableMangle][chainPortWait]; !slices.Equal(got, want) {
		t.Errorf("after repair:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestPortWaitRefused: a kernel that refuses -m socket gets the portal rules
// without UPROXY-PORT-WAIT, instead of no rules at all.
func TestPortWaitRefused(t *testing.T) {
	cfg := baseConfig()
	cfg.WaitPorts = PortSpan{First: 30000, Last: 32767}
	p, r, _ := newTestProgrammer(t, cfg)
	r.refuse = "-m socket"
	if err := p.SyncPortals(context.Background(), []svc.Portal{web(30001)}); err != nil {
		t.Fatalf("SyncPortals: %v", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if got := r.state[v4].chains[tableNAT][chainPortalsContainer]; len(got) != 1 {
		t.Errorf("portal rules: %q", got)
	}
	if got := r.state[v4].chains[tableMangle][chainPortWait]; len(got) != 0 {
		t.Errorf("UPROXY-PORT-WAIT: %q", got)
	}
}

// dualStackWeb is a dual-stack service with a node port as watch/ hands it
// over: one port per family, each with its own proxy port (30001 IPv4,
// 30002 IPv6).
func dualStackWeb() []svc.Portal {
	return []svc.Portal{
		web(30001, func(p *svc.Port) { p.NodePort = 30080 }),
		web(30002, func(p *svc.Port) {
			p.Name.Family, p.ClusterIPs, p.NodePort = svc.IPv6, addrs("fd00:96::10"), 30080
		}),
	}
}
