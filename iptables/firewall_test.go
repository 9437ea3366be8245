package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/uproxy/uproxy/svc"
)

// guard returns a proxy port's two KUBE-NODEPORT-NON-LOCAL rules: portal
// traffic (DNAT) accepted, anything else from outside the node dropped.
func guard(proto, comment string, proxyPort int) []string {
	m := fmt.Sprintf(`-p %s -m comment --comment "%s" -m %s --dport %d`, proto, comment, proto, proxyPort)
	return []string{
		`-A KUBE-NODEPORT-NON-LOCAL ` + m + ` -m conntrack --ctstate DNAT -j ACCEPT`,
		`-A KUBE-NODEPORT-NON-LOCAL ! -i lo ` + m + ` -m conntrack ! --ctstate DNAT -j DROP`,
	}
}

// TestUpgradeReplacesOpenProxyPorts: rules an older uproxy (or legacy
// kube-proxy) left, an unconditional ACCEPT for new connections to a proxy
// port behind the old INPUT jump, are replaced at the first sync by the
// guard, and the old jump is deleted.
func TestUpgradeReplacesOpenProxyPorts(t *testing.T) {
	const (
		oldJump   = `-m comment --comment "Ensure that non-local NodePort traffic can flow" -j KUBE-NODEPORT-NON-LOCAL`
		oldAccept = `-p tcp -m comment --comment "default/web:http" -m tcp --dport 30001 -m conntrack --ctstate NEW -j ACCEPT`
	)
	p, r, _ := newTestProgrammer(t, baseConfig())
	r.edit(v4, func(ft *fakeTables) {
		ft.chains[tableFilter]["INPUT"] = []string{oldJump, "-i lo -j ACCEPT"}
		ft.chains[tableFilter][chainNodePortNonLocal] = []string{oldAccept}
		ft.order[tableFilter] = append(ft.order[tableFilter], chainNodePortNonLocal)
	})
	portal := web(30001, func(p *svc.Port) { p.NodePort = 30080 })
	if err := p.SyncPortals(context.Background(), []svc.Portal{portal}); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	in := r.state[v4].chains[tableFilter]["INPUT"]
	if slices.Contains(in, oldJump) || !slices.Contains(in, strings.TrimPrefix(jumpNonLocal, "-A INPUT ")) || !slices.Contains(in, "-i lo -j ACCEPT") {
		t.Errorf("filter INPUT after the upgrade:\n%s", strings.Join(in, "\n"))
	}
	var want []string
	for _, g := range guard("tcp", "default/web:http", 30001) {
		want = append(want, strings.TrimPrefix(g, "-A KUBE-NODEPORT-NON-LOCAL "))
	}
	got := slices.Sorted(slices.Values(r.state[v4].chains[tableFilter][chainNodePortNonLocal]))
	if slices.Sort(want); !slices.Equal(got, want) {
		t.Errorf("KUBE-NODEPORT-NON-LOCAL after the upgrade:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestIPv6GuardWithoutIPv6Config: the proxy ports listen dual-stack when the
// bind address is unspecified, so an IPv4-only configuration still gets
// the proxy-port guard in ip6tables (a node always has IPv6 link-local
// addresses); with a specific IPv4 bind address it writes no IPv6 rules.
func TestIPv6GuardWithoutIPv6Config(t *testing.T) {
	tests := map[string]struct {
		bind netip.Addr
		want []string
	}{
		"unspecified bind address: guard in IPv6": {
			bind: netip.IPv4Unspecified(),
			want: append(slices.Clone(allJumps), guard("tcp", "default/web:http", 30001)...),
		},
		"IPv4 bind address: no IPv6 rules": {bind: netip.MustParseAddr("10.0.0.5")},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p, r, _ := newTestProgrammer(t, Config{BindAddr: tc.bind, NodeIPs: []netip.Addr{nodeV4}})
			if err := p.SyncPortals(context.Background(), []svc.Portal{web(30001)}); err != nil {
				t.Fatal(err)
			}
			slices.Sort(tc.want)
			if got := ourLines(r.state[v6].save()); !slices.Equal(got, tc.want) {
				t.Errorf("ip6tables rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}
