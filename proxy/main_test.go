package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/uproxy/uproxy/svc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakePortals records SyncPortals calls.
type fakePortals struct {
	mu    sync.Mutex // guards calls
	calls [][]svc.Portal
}

func (f *fakePortals) SyncPortals(_ context.Context, portals []svc.Portal) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, append([]svc.Portal(nil), portals...))
	return nil
}

func (f *fakePortals) last() []svc.Portal {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		return nil
	}
	return f.calls[len(f.calls)-1]
}

// newProxier starts a Proxier on 127.0.0.1 in iptables mode with a fake
// portal syncer unless cfg says otherwise; it is shut down at cleanup.
func newProxier(t testing.TB, cfg Config) (*Proxier, *fakePortals) {
	t.Helper()
	if !cfg.BindAddr.IsValid() {
		cfg.BindAddr = netip.MustParseAddr("127.0.0.1")
	}
	fp := &fakePortals{}
	var portals svc.PortalSyncer = fp
	if cfg.Mode == ModeDirect {
		portals = nil
	}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	if _, ok := t.(*testing.B); ok {
		log = zerolog.Nop()
	}
	p, err := New(cfg, portals, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return p, fp
}

func pn(name, port string) svc.PortName {
	return svc.PortName{Namespace: "default", Name: name, Port: port}
}

// tcpPort is a service port with a (never contacted) cluster IP.
func tcpPort(name svc.PortName, port uint16) svc.Port {
	return svc.Port{Name: name, Protocol: svc.TCP, Port: port, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}}
}

func udpPort(name svc.PortName, port uint16) svc.Port {
	sp := tcpPort(name, port)
	sp.Protocol = svc.UDP
	return sp
}

func ready(addrs ...string) []svc.Endpoint {
	var out []svc.Endpoint
	for _, a := range addrs {
		out = append(out, svc.Endpoint{Addr: netip.MustParseAddrPort(a), Ready: true, Serving: true})
	}
	return out
}

func mustSync(t testing.TB, p *Proxier, ports ...svc.Port) {
	t.Helper()
	if err := p.SyncPorts(context.Background(), ports); err != nil {
		t.Fatal(err)
	}
}

// addrOf returns the first listen address of a port ("" when none).
func addrOf(p *Proxier, name svc.PortName) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	ps := p.ports[name]
	if ps == nil || ps.lst == nil || len(ps.lst.addrs) == 0 {
		return ""
	}
	return ps.lst.addrs[0]
}

// backendServer is a TCP endpoint on 127.0.0.1. Mode "who" reads until EOF
// and answers "<id>:<data>"; "hold" does the same but never closes; "echo"
// copies back and half-closes; "reset" resets every connection at once.
type backendServer struct {
	id   string
	ln   *net.TCPListener
	hits atomic.Int64
	wg   sync.WaitGroup
	stop chan struct{} // closed by close: "hold" handlers return
	once sync.Once
}

func newBackend(t testing.TB, id, mode string) *backendServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backendServer{id: id, ln: ln.(*net.TCPListener), stop: make(chan struct{})}
	b.wg.Add(1)
	go b.serve(mode)
	t.Cleanup(b.close)
	return b
}

func (b *backendServer) addr() string { return b.ln.Addr().String() }

func (b *backendServer) close() {
	b.once.Do(func() { close(b.stop) })
	_ = b.ln.Close()
	b.wg.Wait()
}

func (b *backendServer) serve(mode string) {
	defer b.wg.Done()
	for {
		c, err := b.ln.AcceptTCP()
		if err != nil {
			return
		}
		b.hits.Add(1)
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer c.Close()
			switch mode {
			case "reset":
				_ = c.SetLinger(0)
			case "echo":
				_, _ = io.Copy(c, c)
				_ = c.CloseWrite()
			case "who":
				data, _ := io.ReadAll(c)
				_, _ = c.Write([]byte(b.id + ":" + string(data)))
			case "bulk": // one byte in, bulkSize bytes out
				one := make([]byte, 1)
				if _, err := io.ReadFull(c, one); err == nil {
					_, _ = c.Write(bulkData)
				}
			case "greet-close": // answers at once and closes: data and FIN together
				_, _ = c.Write([]byte(b.id + ":hello"))
			case "greet-reset": // answers at once and resets: data and RST together
				_, _ = c.Write([]byte(b.id + ":hello"))
				_ = c.SetLinger(0)
			case "hold": // like who, but keeps its write side open
				data, _ := io.ReadAll(c)
				_, _ = c.Write([]byte(b.id + ":" + string(data)))
				<-b.stop
			}
		}()
	}
}

// roundTrip sends msg, half-closes and reads the whole answer.
func roundTrip(addr, msg string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	_ = c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}

// who returns the id of the endpoint that answered.
func who(t testing.TB, addr string) string {
	t.Helper()
	out, err := roundTrip(addr, "ping")
	if err != nil {
		t.Fatalf("round trip via %s: %v", addr, err)
	}
	id, rest, ok := strings.Cut(out, ":")
	if !ok || rest != "ping" {
		t.Fatalf("answer %q", out)
	}
	return id
}

// udpBackend answers every datagram with "<id>:<data>", at once or, made
// by newSlowUDPBackend, after a delay (a DNS server that asks upstream).
type udpBackend struct {
	id      string
	conn    *net.UDPConn
	delay   time.Duration
	hits    atomic.Int64
	done    chan struct{}
	answers sync.WaitGroup // delayed answers scheduled
}

func newUDPBackend(t testing.TB, id string) *udpBackend { return newSlowUDPBackend(t, id, 0) }

func newSlowUDPBackend(t testing.TB, id string, delay time.Duration) *udpBackend {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	u := &udpBackend{id: id, conn: c, delay: delay, done: make(chan struct{})}
	go func() {
		defer close(u.done)
		buf := make([]byte, 70000)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			u.hits.Add(1)
			reply := append([]byte(id+":"), buf[:n]...)
			if delay == 0 {
				_, _ = c.WriteToUDPAddrPort(reply, from)
				continue
			}
			u.answers.Add(1)
			time.AfterFunc(delay, func() {
				defer u.answers.Done()
				_, _ = c.WriteToUDPAddrPort(reply, from)
			})
		}
	}()
	t.Cleanup(u.close)
	return u
}

func (u *udpBackend) addr() string { return u.conn.LocalAddr().String() }

// close stops the backend; delayed answers still pending fail on the
// closed socket.
func (u *udpBackend) close() {
	_ = u.conn.Close()
	<-u.done // no answer is scheduled after this
	u.answers.Wait()
}

// udpAsk sends msg from c and waits for one answer.
func udpAsk(c *net.UDPConn, msg []byte) (string, error) {
	if _, err := c.Write(msg); err != nil {
		return "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 70000)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

func dialUDP(t testing.TB, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c.(*net.UDPConn)
}

// openFDs counts this process's open file descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// eventually polls cond for up to 5s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// freePort returns a 127.0.0.1 address nothing listens on.
func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	_ = ln.Close()
	return a
}
