package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/uproxy/uproxy/svc"
)

// manyPortals returns n TCP services with one ClusterIP each (and a
// NodePort when nodePorts is set), proxy ports 20000+.
func manyPortals(n int, nodePorts bool) []svc.Portal {
	out := make([]svc.Portal, n)
	for i := range out {
		p := svc.Port{
			Name:       svc.PortName{Namespace: "bench", Name: fmt.Sprintf("svc-%05d", i), Port: "http"},
			Protocol:   svc.TCP,
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96 + byte(i>>16), byte(i >> 8), byte(i)})},
			Port:       80,
		}
		if nodePorts {
			// NodePorts are unique per node; 10,000 of them need a
			// --service-node-port-range wider than the default.
			p.NodePort = uint16(30000 + i)
		}
		out[i] = svc.Portal{Port: p, ProxyPort: uint16(20000 + i)}
	}
	return out
}

func benchSizes() []struct {
	name      string
	nodePorts bool
} {
	return []struct {
		name      string
		nodePorts bool
	}{{"clusterIP", false}, {"clusterIP+nodePort", true}}
}

// BenchmarkFakeFullSync10k measures the rule logic alone (render, diff,
// restore text) against the fake kernel.
func BenchmarkFakeFullSync10k(b *testing.B) {
	portals := manyPortals(10000, true)
	for b.Loop() {
		b.StopTimer()
		p, _, _ := newTestProgrammer(b, Config{BindAddr: netip.IPv4Unspecified(), NodeIPs: []netip.Addr{nodeV4}})
		b.StartTimer()
		if err := p.SyncPortals(context.Background(), portals); err != nil {
			b.Fatal(err)
		}
	}
}

func benchProgrammer(b *testing.B, backend string) (*Programmer, Config) {
	b.Helper()
	tb := newTestbed(b)
	cfg := Config{BindAddr: netip.IPv4Unspecified(), NodeIPs: []netip.Addr{tb.nodeIP}, NetNS: tb.node, Backend: backend}
	p, err := New(cfg, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	return p, cfg
}

// BenchmarkRealFullSync10k: one sync that installs 10,000 services into
// empty chains, real iptables inside a test namespace.
func BenchmarkRealFullSync10k(b *testing.B) {
	for _, sz := range benchSizes() {
		for _, backend := range []string{"nft", "legacy"} {
			b.Run(sz.name+"/"+backend, func(b *testing.B) {
				benchFullSync(b, sz.nodePorts, backend)
			})
		}
	}
}

func benchFullSync(b *testing.B, nodePorts bool, backend string) {
	{
		{
			p, cfg := benchProgrammer(b, backend)
			ctx := context.Background()
			portals := manyPortals(10000, nodePorts)
			restore := 0.0
			for b.Loop() {
				b.StopTimer()
				if err := Cleanup(ctx, cfg, zerolog.Nop()); err != nil {
					b.Fatal(err)
				}
				var err error
				if p, err = New(cfg, zerolog.Nop()); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if err := p.SyncPortals(ctx, portals); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				restore += restoreSeconds(b, p)
				b.StartTimer()
			}
			b.ReportMetric(restore/float64(b.N), "restore-s/op")
		}
	}
}

// BenchmarkRealAddOneAt10k: one sync that adds 1 service when 10,000 are
// installed (the case that took legacy userspace 9-24 s at 1,000).
func BenchmarkRealAddOneAt10k(b *testing.B) {
	for _, sz := range benchSizes() {
		b.Run(sz.name, func(b *testing.B) {
			p, _ := benchProgrammer(b, "nft")
			ctx := context.Background()
			base := manyPortals(10001, sz.nodePorts)
			with, without := base, base[:10000]
			if err := p.SyncPortals(ctx, without); err != nil {
				b.Fatal(err)
			}
			restore := 0.0
			for b.Loop() {
				b.StopTimer()
				before := restoreSeconds(b, p)
				b.StartTimer()
				if err := p.SyncPortals(ctx, with); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				restore += restoreSeconds(b, p) - before
				if err := p.SyncPortals(ctx, without); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(restore/float64(b.N), "restore-s/op")
		})
	}
}

// BenchmarkRealNoOpSync10k: the periodic sync with nothing to change, at
// 10,000 services (with NodePorts): no write, one read-only iptables-save
// check (CheckPeriod is tiny here so that every sync checks).
func BenchmarkRealNoOpSync10k(b *testing.B) {
	tb := newTestbed(b)
	p, err := New(Config{BindAddr: netip.IPv4Unspecified(), NodeIPs: []netip.Addr{tb.nodeIP}, NetNS: tb.node, CheckPeriod: time.Nanosecond}, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	portals := manyPortals(10000, true)
	if err := p.SyncPortals(ctx, portals); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := p.SyncPortals(ctx, portals); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFakeNoOpSync10k measures the CPU side of a sync with nothing to
// change (render, compare, parse the read-back) against the fake kernel.
func BenchmarkFakeNoOpSync10k(b *testing.B) {
	p, _, _ := newTestProgrammer(b, Config{BindAddr: netip.IPv4Unspecified(), NodeIPs: []netip.Addr{nodeV4}})
	portals := manyPortals(10000, true)
	if err := p.SyncPortals(context.Background(), portals); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := p.SyncPortals(context.Background(), portals); err != nil {
			b.Fatal(err)
		}
	}
}

// restoreSeconds is the total time spent in iptables-restore (IPv4) so far.
func restoreSeconds(b *testing.B, p *Programmer) float64 {
	b.Helper()
	var m dto.Metric
	if err := p.m.restoreTime.WithLabelValues("ipv4").(prometheus.Histogram).Write(&m); err != nil {
		b.Fatal(err)
	}
	return m.GetHistogram().GetSampleSum()
}
