package proxy

import (
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/uproxy/uproxy/svc"
)

// otherInstance is a surging instance's listener on addr (SO_REUSEPORT): it
// answers every connection with "other" and counts them.
type otherInstance struct {
	ln   *net.TCPListener
	mu   sync.Mutex // guards n
	n    int
	done chan struct{}
}

func newOtherInstance(t *testing.T, addr string) *otherInstance {
	t.Helper()
	ln, err := listenTCP(t.Context(), true, addr)
	if err != nil {
		t.Fatal(err)
	}
	o := &otherInstance{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			o.mu.Lock()
			o.n++
			o.mu.Unlock()
			_, _ = c.Write([]byte("other"))
			_ = c.Close()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-o.done
	})
	return o
}

func (o *otherInstance) accepted() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n
}

// dialResult is one client's connect time and what it read.
type dialResult struct {
	connect time.Duration
	got     string
	err     error
}

// TestTCPShutdownSteersToTheOtherInstance: two listeners share a port (a
// surge rollout without tcp_migrate_req), the first one's Proxier shuts
// down, and new clients connect during its settle time. Steered, every one
// lands on the other listener at once (no SYN retransmission: connect
// < 500ms) and none is reset; with tcp-steer off the SYN filter drops those
// the reuseport hash sends to the stopping listener, and they connect a
// second later (still none reset).
func TestTCPShutdownSteersToTheOtherInstance(t *testing.T) {
	if migrateReqOn() {
		t.Skip("net.ipv4.tcp_migrate_req is 1 here: the kernel migrates the queue instead")
	}
	const clients = 40
	for name, tc := range map[string]struct {
		off      bool
		wantSlow bool
	}{
		"steered":       {},
		"tcp-steer off": {off: true, wantSlow: true},
	} {
		t.Run(name, func(t *testing.T) {
			n := pn("web", "http")
			be := newBackend(t, "e", "who")
			t.Cleanup(be.close)
			p1, _ := newProxier(t, Config{ReusePort: true, NoTCPSteer: tc.off})
			p1.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(be.addr())})
			mustSync(t, p1, tcpPort(n, 80))
			addr := addrOf(p1, n)
			other := newOtherInstance(t, addr)
			counts, err := tcpListenerCounts()
			if err != nil {
				t.Fatal(err)
			}
			if got := counts[other.ln.Addr().(*net.TCPAddr).AddrPort().Port()]; got != 2 {
				t.Fatalf("sock_diag counts %d listeners on %s, want 2", got, addr)
			}

			done := shutdownAsync(t, p1)
			eventually(t, "shutdown started", func() bool { return shuttingDown(p1) })
			results := make(chan dialResult, clients)
			for range clients { // new clients: their hashes spread over the group
				go func() {
					start := time.Now()
					c, err := net.DialTimeout("tcp", addr, 5*time.Second)
					if err != nil {
						results <- dialResult{err: err}
						return
					}
					defer c.Close()
					r := dialResult{connect: time.Since(start)}
					_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
					b, err := io.ReadAll(c)
					r.got, r.err = string(b), err
					results <- r
				}()
			}
			var connects []time.Duration
			for range clients {
				r := <-results
				if r.err != nil {
					t.Errorf("client: %v (connect %v)", r.err, r.connect)
					continue
				}
				if r.got != "other" {
					t.Errorf("client read %q, want the other instance's answer", r.got)
				}
				connects = append(connects, r.connect)
			}
			<-done
			slices.Sort(connects)
			slow := 0
			for _, d := range connects {
				if d >= 500*time.Millisecond {
					slow++
				}
			}
			t.Logf("%d clients: %d connected after >= 500ms; fastest %v, slowest %v", len(connects), slow, connects[0], connects[len(connects)-1])
			switch {
			case !tc.wantSlow && slow > 0:
				t.Errorf("%d of %d clients waited for a SYN retransmission; want all steered at once", slow, clients)
			case tc.wantSlow && (slow == 0 || connects[len(connects)-1] < time.Second):
				t.Errorf("with tcp-steer off no client waited >= 1s for its SYN retransmission (slowest %v): the test does not show the steering", connects[len(connects)-1])
			}
			if got := other.accepted(); got != clients {
				t.Errorf("the other instance accepted %d connections, want all %d", got, clients)
			}
		})
	}
}

// TestTCPJoinGroup: a TCP listener that joins a port another listener holds
// is not first (it never steers: its index is unknown) and removes the
// steering program a previous instance's shutdown left on the group, until
// the other one leaves (markAlone: then it is at index 0); one on a port of
// its own is first.
func TestTCPJoinGroup(t *testing.T) {
	for name, tc := range map[string]struct {
		shared, wantFirst bool
	}{
		"alone":                  {wantFirst: true},
		"joins another listener": {shared: true},
	} {
		t.Run(name, func(t *testing.T) {
			n := pn("web", "http")
			cfg := Config{ReusePort: true}
			var old *net.TCPListener
			if tc.shared {
				var err error
				if old, err = listenTCP(t.Context(), true, "127.0.0.1:0"); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = old.Close() })
				if err := steerTCP(old, true, 2); err != nil { // as a previous shutdown left it
					t.Fatal(err)
				}
				cfg.PreferredPorts = map[svc.PortName]uint16{n: uint16(old.Addr().(*net.TCPAddr).Port)}
			}
			p, _ := newProxier(t, cfg)
			mustSync(t, p, tcpPort(n, 80))
			p.mu.Lock()
			l := p.ports[n].lst
			ln := l.tcp[0]
			first := l.tcpFirst[ln]
			p.mu.Unlock()
			if first != tc.wantFirst {
				t.Errorf("first = %v, want %v", first, tc.wantFirst)
			}
			if tc.shared {
				if ln.Addr().String() != old.Addr().String() {
					t.Fatalf("listener on %v, want the other listener's %v", ln.Addr(), old.Addr())
				}
				if err := steerTCP(ln, first, 2); err == nil {
					t.Error("the newer listener of a group steered")
				}
				rc, _ := old.SyscallConn()
				var derr error
				_ = rc.Control(func(fd uintptr) {
					derr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DETACH_REUSEPORT_BPF, 0)
				})
				if !errors.Is(derr, unix.ENOENT) {
					t.Errorf("detaching the left-over program again: %v, want ENOENT (tcpJoinGroup removed it)", derr)
				}
				_ = old.Close() // the previous instance exits
				eventually(t, "the listener left alone is first", func() bool {
					p.mu.Lock()
					defer p.mu.Unlock()
					return p.ports[n].lst.tcpFirst[ln]
				})
			}
		})
	}
}
