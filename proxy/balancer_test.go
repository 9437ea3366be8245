package proxy

import (
	"net/netip"
	"testing"
	"time"

	"github.com/uproxy/uproxy/svc"
)

func ep(addr string, ready, terminating bool) svc.Endpoint {
	return svc.Endpoint{Addr: netip.MustParseAddrPort(addr), Ready: ready, Serving: true, Terminating: terminating}
}

// TestPickOrder exercises the balancer alone: tiers, ejection, panic mode,
// retries on a different endpoint.
func TestPickOrder(t *testing.T) {
	a, b, c := "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"
	client := netip.MustParseAddr("192.0.2.9")
	tests := map[string]struct {
		eps     []svc.Endpoint
		ejected []string
		tried   []string
		want    []string // the set picks may come from (over 6 picks)
		fresh   bool
	}{
		"ready only":                  {eps: []svc.Endpoint{ep(a, true, false), ep(b, true, false)}, want: []string{a, b}, fresh: true},
		"terminating skipped":         {eps: []svc.Endpoint{ep(a, true, false), ep(b, false, true)}, want: []string{a}, fresh: true},
		"terminating when none ready": {eps: []svc.Endpoint{ep(b, false, true), ep(c, false, true)}, want: []string{b, c}, fresh: true},
		"ejected skipped":             {eps: []svc.Endpoint{ep(a, true, false), ep(b, true, false)}, ejected: []string{a}, want: []string{b}, fresh: true},
		"terminating before ejected":  {eps: []svc.Endpoint{ep(a, true, false), ep(b, false, true)}, ejected: []string{a}, want: []string{b}, fresh: true},
		"panic: all ejected":          {eps: []svc.Endpoint{ep(a, true, false), ep(b, true, false)}, ejected: []string{a, b}, want: []string{a, b}},
		"retry takes another":         {eps: []svc.Endpoint{ep(a, true, false), ep(b, true, false), ep(c, true, false)}, tried: []string{a, b}, want: []string{c}, fresh: true},
		"all tried: not the last one": {eps: []svc.Endpoint{ep(a, true, false), ep(b, true, false)}, tried: []string{a, b}, want: []string{a}},
		"single endpoint tried again": {eps: []svc.Endpoint{ep(a, true, false)}, tried: []string{a}, want: []string{a}},
		"neither ready nor serving":   {eps: []svc.Endpoint{{Addr: netip.MustParseAddrPort(a)}}, want: nil},
		"duplicate address kept once": {eps: []svc.Endpoint{ep(a, true, false), ep(a, true, false)}, want: []string{a}, fresh: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var bal balancer
			bal.setEndpoints(tc.eps)
			s := bal.set.Load()
			byAddr := map[string]*backend{}
			for _, be := range s.all {
				byAddr[be.addr.String()] = be
			}
			for _, x := range tc.ejected {
				byAddr[x].health.ejected.Store(true)
				byAddr[x].health.until.Store(mono() + int64(time.Hour))
			}
			allowed := map[string]bool{}
			for _, w := range tc.want {
				allowed[w] = true
			}
			for range 6 {
				var tr tried
				for _, x := range tc.tried {
					tr.add(byAddr[x])
				}
				be, fresh := bal.pick(client, &tr, false)
				if tc.want == nil {
					if be != nil {
						t.Fatalf("picked %s from no usable endpoint", be.addr)
					}
					return
				}
				if be == nil || !allowed[be.addr.String()] || fresh != tc.fresh {
					t.Fatalf("picked %v fresh=%v, want one of %v fresh=%v", be, fresh, tc.want, tc.fresh)
				}
			}
		})
	}
}

func TestEndpointUpdateKeepsHealthOfUnchangedEndpoints(t *testing.T) {
	var bal balancer
	bal.setEndpoints([]svc.Endpoint{ep("10.0.0.1:80", true, false), ep("10.0.0.2:80", true, false)})
	a := bal.set.Load().all[0]
	a.health.ejected.Store(true)
	gone, changed := bal.setEndpoints([]svc.Endpoint{ep("10.0.0.1:80", true, false)})
	if bal.set.Load().all[0] != a || len(changed) != 0 || len(gone) != 1 || !gone[0].removed.Load() {
		t.Fatalf("unchanged endpoint replaced or removal missed: changed %d gone %d", len(changed), len(gone))
	}
	_, changed = bal.setEndpoints([]svc.Endpoint{ep("10.0.0.1:80", false, true)})
	if len(changed) != 1 || changed[0] != a || a.tier.Load() != tierTerminating {
		t.Fatalf("condition change not reported: %d", len(changed))
	}
}

// BenchmarkPick measures the hot-path pick; it must report 0 allocs/op.
func BenchmarkPick(b *testing.B) {
	var eps []svc.Endpoint
	for i := range 16 {
		eps = append(eps, ep(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 80).String(), true, false))
	}
	client := netip.MustParseAddr("192.0.2.9")
	for _, mode := range []string{"round-robin", "client-ip", "with-ejected"} {
		b.Run(mode, func(b *testing.B) {
			var bal balancer
			bal.setEndpoints(eps)
			bal.setAffinity(svc.Affinity{ClientIP: mode == "client-ip"})
			if mode == "with-ejected" {
				for _, be := range bal.set.Load().all[:8] {
					be.health.ejected.Store(true)
					be.health.until.Store(mono() + int64(time.Hour))
				}
			}
			var tr tried
			bal.pick(client, &tr, false) // the affinity entry exists
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				var tr tried
				if be, _ := bal.pick(client, &tr, false); be == nil {
					b.Fatal("no pick")
				}
			}
		})
	}
}
