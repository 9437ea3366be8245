package proxy

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/uproxy/uproxy/svc"
)

const bulkSize = 16 << 20

var bulkData = make([]byte, bulkSize)

// benchTargets returns the "direct" and "proxy" addresses of one backend in
// the given mode.
func benchTargets(b *testing.B, mode string) map[string]string {
	b.Helper()
	be := newBackend(b, "b", mode)
	p, _ := newProxier(b, Config{})
	n := pn("bench", "")
	mustSync(b, p, tcpPort(n, 80))
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(be.addr())})
	return map[string]string{"direct": be.addr(), "proxy": addrOf(p, n)}
}

// BenchmarkAcceptDialFirstByte: connect, send a byte, get a byte back,
// reset (no TIME_WAIT pile-up); through the proxy versus directly.
func BenchmarkAcceptDialFirstByte(b *testing.B) {
	targets := benchTargets(b, "echo")
	for _, name := range []string{"direct", "proxy"} {
		b.Run(name, func(b *testing.B) {
			one := []byte{'x'}
			for b.Loop() {
				c, err := net.Dial("tcp", targets[name])
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Write(one); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, one); err != nil {
					b.Fatal(err)
				}
				_ = c.(*net.TCPConn).SetLinger(0)
				_ = c.Close()
			}
		})
	}
}

// BenchmarkBulkCopy: 16 MiB from the endpoint per connection; MB/s through
// the proxy (splice once the flow is bulk) versus directly.
func BenchmarkBulkCopy(b *testing.B) {
	targets := benchTargets(b, "bulk")
	for _, name := range []string{"direct", "proxy"} {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(bulkSize)
			buf := make([]byte, 256<<10)
			for b.Loop() {
				c, err := net.Dial("tcp", targets[name])
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Write([]byte{'x'}); err != nil {
					b.Fatal(err)
				}
				n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{c}, buf)
				if err != nil || n != bulkSize {
					b.Fatalf("read %d: %v", n, err)
				}
				_ = c.Close()
			}
		})
	}
}

// BenchmarkKeepAliveRoundTrip: one connection, 64-byte request and reply
// per op (a keep-alive request/response); through the proxy versus
// directly. Allocations per op should be zero through the proxy too.
func BenchmarkKeepAliveRoundTrip(b *testing.B) {
	targets := benchTargets(b, "echo")
	for _, name := range []string{"direct", "proxy"} {
		b.Run(name, func(b *testing.B) {
			c, err := net.Dial("tcp", targets[name])
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg, buf := make([]byte, 64), make([]byte, 64)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkUDPRoundTrip: one client socket, a burst of 8 64-byte datagrams
// and their 8 replies per op (DNS-like, several queries in flight); through
// the proxy (recvmmsg/sendmmsg batches, one session) versus directly.
// The proxy should add no allocations to direct's (the test backend's).
func BenchmarkUDPRoundTrip(b *testing.B) {
	be := newUDPBackend(b, "u")
	p, _ := newProxier(b, Config{})
	n := pn("dns", "")
	mustSync(b, p, udpPort(n, 53))
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(be.addr())})
	targets := map[string]string{"direct": be.addr(), "proxy": addrOf(p, n)}
	const burst = 8
	for _, name := range []string{"direct", "proxy"} {
		b.Run(name, func(b *testing.B) {
			c := dialUDP(b, targets[name])
			msg, buf := make([]byte, 64), make([]byte, 256)
			if _, err := udpAsk(c, msg); err != nil { // the session exists before timing
				b.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Minute)) // a lost datagram fails, not hangs
			b.ReportAllocs()
			for b.Loop() {
				for range burst {
					if _, err := c.Write(msg); err != nil {
						b.Fatal(err)
					}
				}
				for range burst {
					if _, err := c.Read(buf); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
