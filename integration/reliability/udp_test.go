package reliability

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/uproxy/uproxy/integration/bed"
)

// udpBackend is a UDP server in a namespace of its own on the node bridge
// (a bed client namespace playing a pod): it answers each datagram with
// "re:<datagram>" after delay (readyProbe at once), like CoreDNS forwarding to a slow upstream.
type udpBackend struct {
	ip   string
	port int
}

func (w *world) startUDPBackend(delay time.Duration) udpBackend {
	w.t.Helper()
	ns := w.b.NewClient(w.t)
	var conn *net.UDPConn
	// The socket is made inside the namespace and stays there.
	if err := ns.NS.Do(func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ns.IP), Port: 5353})
		return err
	}); err != nil {
		w.t.Fatal(err)
	}
	done := make(chan struct{})
	w.t.Cleanup(func() { _ = conn.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			reply := append([]byte("re:"), buf[:n]...)
			if string(buf[:n]) == readyProbe {
				_, _ = conn.WriteToUDPAddrPort(reply, from)
				continue
			}
			time.AfterFunc(delay, func() { _, _ = conn.WriteToUDPAddrPort(reply, from) })
		}
	}()
	return udpBackend{ip: ns.IP, port: 5353}
}

// udpService creates a Service without selector with one UDP port 53 whose
// EndpointSlice points at be; it returns the ClusterIP.
func (w *world) udpService(name string, be udpBackend) string {
	w.t.Helper()
	return w.manualService(name, corev1.ProtocolUDP, portUDP, int32(be.port), be.ip)
}

// udpExchange sends one datagram from an unconnected socket in the client
// namespace to addr and waits up to wait for a reply; it returns the reply,
// its source address (any source is delivered, so a wrong one is seen) and
// how long it took.
func (w *world) udpExchange(addr string, msg string, wait time.Duration) (reply string, from netip.AddrPort, took time.Duration, err error) {
	dst, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return "", from, 0, err
	}
	err = w.client.NS.Do(func() error {
		c, err := net.ListenUDP("udp4", nil)
		if err != nil {
			return err
		}
		defer c.Close()
		start := time.Now()
		if _, err := c.WriteToUDP([]byte(msg), dst); err != nil {
			return err
		}
		_ = c.SetReadDeadline(start.Add(wait))
		buf := make([]byte, 2048)
		n, src, err := c.ReadFromUDPAddrPort(buf)
		took = time.Since(start)
		if err != nil {
			return err
		}
		reply, from = string(buf[:n]), netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		return nil
	})
	return reply, from, took, err
}

// readyProbe is answered at once by a udpBackend.
const readyProbe = "ready?"

// waitUDPServed waits until a datagram to addr is answered (any source).
func (w *world) waitUDPServed(addr string) {
	w.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, _, _, err := w.udpExchange(addr, readyProbe, 3*time.Second)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("UDP %s never answered: %v", addr, err)
		}
	}
}

// TestUDPSlowReply: a backend that answers 1.5 s after the query (CoreDNS
// forwarding to a slow upstream). With the default --udp-timeout the reply
// reaches the client, from the ClusterIP; with legacy's 250ms the session
// and its reply path are gone when the reply comes, and the client gets
// nothing (the case shows the test can fail).
func TestUDPSlowReply(t *testing.T) {
	const delay = 1500 * time.Millisecond
	tests := map[string]struct {
		args      []string
		wantReply bool
	}{
		"default --udp-timeout":          {wantReply: true},
		"legacy --udp-timeout 250ms":     {args: []string{"--udp-timeout", "250ms"}},
		"--udp-timeout 2s (above delay)": {args: []string{"--udp-timeout", "2s"}, wantReply: true},
	}
	w := newWorld(t, "rel-udp-slow", 3*time.Minute)
	be := w.startUDPBackend(delay)
	ip := w.udpService("slowdns", be)
	addr := net.JoinHostPort(ip, strconv.Itoa(portUDP))
	for _, name := range []string{"default --udp-timeout", "legacy --udp-timeout 250ms", "--udp-timeout 2s (above delay)"} {
		tt := tests[name]
		t.Run(name, func(t *testing.T) {
			parent := w.t
			w.t = t
			defer func() { w.t = parent }()
			w.b.StartUproxy(t, bed.UproxyOptions{Args: tt.args})
			w.waitUDPServed(addr)
			reply, from, took, err := w.udpExchange(addr, "slow", delay+3*time.Second)
			summary("udp-slow-reply", "%s: backend delay %v: reply %q from %v after %v, err %v", name, delay, reply, from, took.Round(time.Millisecond), err)
			switch {
			case tt.wantReply && err != nil:
				t.Fatalf("no reply within %v: %v", delay+3*time.Second, err)
			case tt.wantReply && (reply != "re:slow" || from.String() != addr):
				t.Fatalf("reply %q from %v, want %q from %s", reply, from, "re:slow", addr)
			case !tt.wantReply && err == nil:
				t.Fatalf("reply %q from %v after %v: the session outlived --udp-timeout", reply, from, took)
			case !tt.wantReply && !errors.Is(err, os.ErrDeadlineExceeded):
				t.Fatalf("want a timeout, got %v", err)
			}
		})
	}
}

// TestUDPReplySourceOtherRouteSrc: the node's route back to the client has
// another source address (a second address on the bridge, `ip route ... src`),
// so a reply whose source the kernel picks leaves from 10.244.0.252, which
// conntrack does not un-NAT: the client would see node-address:proxy-port.
// uproxy sends replies from the address the REDIRECTed datagram arrived on
// (IP_PKTINFO), so conntrack rewrites them to ClusterIP:53.
func TestUDPReplySourceOtherRouteSrc(t *testing.T) {
	w := newWorld(t, "rel-udp-src", 2*time.Minute)
	be := w.startUDPBackend(0)
	ip := w.udpService("srcdns", be)
	addr := net.JoinHostPort(ip, strconv.Itoa(portUDP))
	w.b.StartUproxy(t, bed.UproxyOptions{})
	w.waitUDPServed(addr)

	const other = "10.244.0.252"
	if err := w.b.Node.IP("addr", "add", other+"/24", "dev", bed.BridgeName); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.b.Node.IP("addr", "del", other+"/24", "dev", bed.BridgeName) })
	if err := w.b.Node.IP("route", "add", w.client.IP+"/32", "dev", bed.BridgeName, "src", other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.b.Node.IP("route", "del", w.client.IP+"/32", "dev", bed.BridgeName) })
	route, _ := w.b.Node.Output(w.ctx, "ip", "route", "get", w.client.IP)

	var bad []string
	const n = 20
	for i := range n { // each from a new client port: a new session each time
		msg := fmt.Sprintf("q%d", i)
		reply, from, took, err := w.udpExchange(addr, msg, 3*time.Second)
		if err != nil || reply != "re:"+msg || from.String() != addr {
			bad = append(bad, fmt.Sprintf("%s: reply %q from %v after %v, err %v", msg, reply, from, took.Round(time.Millisecond), err))
		}
	}
	summary("udp-reply-source", "route to client: %q; %d/%d replies from %s", route, n-len(bad), n, addr)
	if len(bad) > 0 {
		t.Fatalf("%d of %d replies wrong (want from %s):\n%v", len(bad), n, addr, bad)
	}
}
