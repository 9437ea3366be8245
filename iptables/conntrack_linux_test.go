package iptables

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/uproxy/uproxy/svc"
)

// udpEchoIn answers every datagram with tag, from inside ns.
func udpEchoIn(t *testing.T, ns, tag string) uint16 {
	t.Helper()
	var pc net.PacketConn
	if err := inNetNS(ns, func() (err error) {
		pc, err = net.ListenPacket("udp", ":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(tag), from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return uint16(pc.LocalAddr().(*net.UDPAddr).Port)
}

// flowsTo counts conntrack entries in ns whose original destination is dst.
func flowsTo(t *testing.T, ns string, dst netip.AddrPort) int {
	t.Helper()
	n := 0
	if err := inNetNS(ns, func() error {
		h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
		if err != nil {
			return err
		}
		defer h.Close()
		flows, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		if err != nil {
			return err
		}
		for _, f := range flows {
			if a, ok := netip.AddrFromSlice(f.Forward.DstIP); ok && a.Unmap() == dst.Addr() && f.Forward.DstPort == dst.Port() && f.Forward.Protocol == unix.IPPROTO_UDP {
				n++
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestRealUDPConntrack: a UDP client keeps sending from the same source
// port while its service moves to another proxy port. Without deleting the
// conntrack entry, its datagrams keep following the old REDIRECT (here:
// answered by the old listener; in life: black-holed once it closes).
func TestRealUDPConntrack(t *testing.T) {
	tb := newTestbed(t)
	ctx := context.Background()
	p, err := New(Config{BindAddr: netip.IPv4Unspecified(), NodeIPs: []netip.Addr{tb.nodeIP}, NetNS: tb.node}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	oldPort, newPort := udpEchoIn(t, tb.node, "old"), udpEchoIn(t, tb.node, "new")
	dns := func(proxyPort uint16) []svc.Portal {
		return []svc.Portal{web(proxyPort, func(p *svc.Port) {
			p.Name = svc.PortName{Namespace: "kube-system", Name: "dns", Port: "dns"}
			p.Protocol, p.ClusterIPs, p.Port = svc.UDP, addrs("10.96.0.53"), 53
		})}
	}
	if err := p.SyncPortals(ctx, dns(oldPort)); err != nil {
		t.Fatal(err)
	}

	var client net.PacketConn
	if err := inNetNS(tb.client, func() (err error) {
		client, err = net.ListenPacket("udp4", ":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	portal := netip.MustParseAddrPort("10.96.0.53:53")
	ask := func() string {
		t.Helper()
		if _, err := client.WriteTo([]byte("q"), net.UDPAddrFromAddrPort(portal)); err != nil {
			t.Fatal(err)
		}
		_ = client.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 16)
		n, from, err := client.ReadFrom(buf)
		if err != nil {
			return err.Error()
		}
		if got := from.(*net.UDPAddr).AddrPort(); got.Addr().Unmap() != portal.Addr() || got.Port() != portal.Port() {
			t.Errorf("answer came from %v, want the portal %v", got, portal)
		}
		return string(buf[:n])
	}
	if got := ask(); got != "old" {
		t.Fatalf("first answer %q, want old", got)
	}
	if n := flowsTo(t, tb.node, portal); n != 1 {
		t.Fatalf("%d conntrack entries to %v, want 1", n, portal)
	}
	if err := p.SyncPortals(ctx, dns(newPort)); err != nil {
		t.Fatal(err)
	}
	if n := flowsTo(t, tb.node, portal); n != 0 {
		t.Errorf("%d conntrack entries to %v after the proxy port changed, want 0", n, portal)
	}
	if got := ask(); got != "new" {
		t.Errorf("answer after the proxy port changed: %q, want new (stale conntrack entry?)", got)
	}
	if got := testutil.ToFloat64(p.m.ctDeleted); got != 1 {
		t.Errorf("conntrack deleted = %v, want 1", got)
	}
	// The service goes away: its entry goes too.
	if err := p.SyncPortals(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if n := flowsTo(t, tb.node, portal); n != 0 {
		t.Errorf("%d conntrack entries to %v after the service went away, want 0", n, portal)
	}
	if err := Cleanup(ctx, Config{NetNS: tb.node}, testLog(t)); err != nil {
		t.Fatal(err)
	}
}
