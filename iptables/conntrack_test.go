package iptables

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/uproxy/uproxy/svc"
)

func TestUDPConntrackCleanup(t *testing.T) {
	ctx := context.Background()
	p, _, ct := newTestProgrammer(t, baseConfig())
	dns := web(30053, func(p *svc.Port) {
		p.Name.Name, p.Protocol, p.Port, p.NodePort = "dns", svc.UDP, 53, 30054
	})
	tcp := web(30001)
	steps := []struct {
		name    string
		portals []svc.Portal
		want    []string // flows deleted at this step
	}{
		{"first sync deletes nothing", []svc.Portal{dns, tcp}, nil},
		{"same again deletes nothing", []svc.Portal{dns, tcp}, nil},
		{"UDP proxy port changes", []svc.Portal{withProxyPort(dns, 30055), tcp}, []string{"*:30054/udp", "10.96.0.10:53/udp"}},
		{"TCP service goes: nothing", []svc.Portal{withProxyPort(dns, 30055)}, nil},
		{"UDP service goes", nil, []string{"*:30054/udp", "10.96.0.10:53/udp"}},
	}
	for _, s := range steps {
		n := len(ct.calls)
		if err := p.SyncPortals(ctx, s.portals); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		var got []string
		for _, c := range ct.calls[n:] {
			for _, f := range c {
				got = append(got, f.String())
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, s.want) {
			t.Errorf("%s: deleted %v, want %v", s.name, got, s.want)
		}
	}
}

// TestUDPConntrackDualStackNodePort: a dual-stack UDP service has one proxy
// port per family behind the same node port; a change of the IPv6 port's
// proxy port flushes the IPv6 node port flows only ("[*]:"), and an
// unchanged dual-stack service flushes nothing (the two families' node port
// flows are not one key that each sync would see change).
func TestUDPConntrackDualStackNodePort(t *testing.T) {
	ctx := context.Background()
	p, _, ct := newTestProgrammer(t, baseConfig())
	dns4 := web(30053, func(p *svc.Port) {
		p.Name.Name, p.Protocol, p.Port, p.NodePort = "dns", svc.UDP, 53, 30054
	})
	dns6 := web(30063, func(p *svc.Port) {
		p.Name.Name, p.Protocol, p.Port, p.NodePort = "dns", svc.UDP, 53, 30054
		p.Name.Family, p.ClusterIPs = svc.IPv6, addrs("fd00:96::53")
	})
	steps := []struct {
		name    string
		portals []svc.Portal
		want    []string
	}{
		{"first sync deletes nothing", []svc.Portal{dns4, dns6}, nil},
		{"same again deletes nothing", []svc.Portal{dns4, dns6}, nil},
		{"IPv6 proxy port changes", []svc.Portal{dns4, withProxyPort(dns6, 30064)}, []string{"[*]:30054/udp", "[fd00:96::53]:53/udp"}},
		{"IPv4 proxy port changes", []svc.Portal{withProxyPort(dns4, 30055), withProxyPort(dns6, 30064)}, []string{"*:30054/udp", "10.96.0.10:53/udp"}},
	}
	for _, s := range steps {
		n := len(ct.calls)
		if err := p.SyncPortals(ctx, s.portals); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		var got []string
		for _, c := range ct.calls[n:] {
			for _, f := range c {
				got = append(got, f.String())
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, s.want) {
			t.Errorf("%s: deleted %v, want %v", s.name, got, s.want)
		}
	}
}

func TestUDPConntrackFailureIsRetried(t *testing.T) {
	ctx := context.Background()
	p, _, ct := newTestProgrammer(t, baseConfig())
	dns := web(30053, func(p *svc.Port) { p.Protocol, p.Port = svc.UDP, 53 })
	if err := p.SyncPortals(ctx, []svc.Portal{dns}); err != nil {
		t.Fatal(err)
	}
	ct.err = errors.New("netlink: operation not permitted")
	if err := p.SyncPortals(ctx, nil); err != nil {
		t.Fatalf("a conntrack failure must not fail the sync: %v", err)
	}
	ct.err = nil
	if err := p.SyncPortals(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if len(ct.calls) != 2 || len(ct.calls[1]) != 1 {
		t.Errorf("conntrack calls = %v, want the failed deletion retried once", ct.calls)
	}
	if got := testutil.ToFloat64(p.m.ctFailures); got != 1 {
		t.Errorf("conntrack failures = %v, want 1", got)
	}
}

func withProxyPort(p svc.Portal, port uint16) svc.Portal {
	p.ProxyPort = port
	return p
}

func TestUDPConntrackAfterRestart(t *testing.T) {
	ctx := context.Background()
	p, r, _ := newTestProgrammer(t, baseConfig())
	dns := web(30053, func(p *svc.Port) {
		p.Name.Name, p.Protocol, p.Port, p.NodePort = "dns", svc.UDP, 53, 30054
	})
	if err := p.SyncPortals(ctx, []svc.Portal{dns}); err != nil {
		t.Fatal(err)
	}
	// A restarted uproxy gets another proxy port for the service: the
	// entries that followed the old rules must go at its first sync.
	ct := &fakeConntrack{}
	p2, err := newProgrammer(baseConfig(), testLog(t), r, ct, nowFunc())
	if err != nil {
		t.Fatal(err)
	}
	if err := p2.SyncPortals(ctx, []svc.Portal{withProxyPort(dns, 30099)}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range ct.calls {
		for _, f := range c {
			got = append(got, f.String())
		}
	}
	slices.Sort(got)
	if want := []string{"*:30054/udp", "10.96.0.10:53/udp"}; !slices.Equal(got, want) {
		t.Errorf("deleted %v, want %v", got, want)
	}
}
