package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/uproxy/uproxy/svc"
)

// shuttingDown reports whether Shutdown has decided how every listener
// closes: it sets closing and stops or steers the UDP listeners under p.mu.
func shuttingDown(p *Proxier) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closing
}

// shutdownAsync runs p.Shutdown and reports how long it took.
func shutdownAsync(t *testing.T, p *Proxier) <-chan time.Duration {
	done := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		done <- time.Since(start)
	}()
	return done
}

// readOne reads one datagram from c within d.
func readOne(c *net.UDPConn, d time.Duration) (string, error) {
	_ = c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

// awaitingReply starts a Proxier with cfg serving UDP service n from a
// backend that answers after 300 ms, sends query q1 through it from a new
// client socket and waits until the backend has it: a reply is awaited.
func awaitingReply(t *testing.T, n svc.PortName, cfg Config) (*Proxier, *fakePortals, *udpBackend, *net.UDPConn) {
	t.Helper()
	be := newSlowUDPBackend(t, "slow", 300*time.Millisecond)
	p, fp := newProxier(t, cfg)
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(be.addr())})
	mustSync(t, p, udpPort(n, 53))
	c := dialUDP(t, addrOf(p, n))
	if _, err := c.Write([]byte("q1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "q1 at the endpoint", func() bool { return be.hits.Load() == 1 })
	return p, fp, be, c
}

// TestUDPReplyOutlivesHandoff: a query uproxy forwarded to a slow endpoint
// (300ms) just before a handoff shutdown (the fd holder keeps the socket)
// still gets its reply: the listen socket stays open, unread, until no
// session awaits one. A query sent after the shutdown began stays queued
// in the held socket and the next run answers it. With the drain off the
// first reply is lost (the socket closed at once), the queued one is not.
func TestUDPReplyOutlivesHandoff(t *testing.T) {
	for name, tc := range map[string]struct {
		off       bool
		wantReply bool
	}{
		"drain":               {wantReply: true},
		"udp-reply-drain off": {off: true},
	} {
		t.Run(name, func(t *testing.T) {
			n := pn("dns", "dns")
			k := newFakeKeeper()
			defer k.close()
			cfg := Config{ReusePort: true, Sockets: k, UDPIdleTimeout: time.Minute, NoUDPReplyDrain: tc.off}
			p1, fp1, be, c := awaitingReply(t, n, cfg)

			done := shutdownAsync(t, p1)
			eventually(t, "shutdown started", func() bool { return shuttingDown(p1) })
			if _, err := c.Write([]byte("q2")); err != nil { // queued for the next run
				t.Fatal(err)
			}
			got, err := readOne(c, time.Second)
			switch {
			case tc.wantReply && (err != nil || got != "slow:q1"):
				t.Errorf("reply to the query forwarded before the handoff: %q, %v; want slow:q1", got, err)
			case !tc.wantReply && err == nil:
				t.Errorf("with the drain off the reply still came: %q", got)
			}
			took := <-done
			if tc.wantReply && took >= DefaultHandoffDrain {
				t.Errorf("shutdown took %v: it should end once the reply was relayed", took)
			}
			if be.hits.Load() != 1 {
				t.Errorf("the endpoint got %d queries before the next run, want 1 (q2 waits in the held socket)", be.hits.Load())
			}
			if _, _, dropped := k.keys(); len(dropped) != 0 {
				t.Errorf("the holder was told to drop %v at a handoff", dropped)
			}

			cfg.PreferredPorts = map[svc.PortName]uint16{n: fp1.last()[0].ProxyPort}
			p2, _ := newProxier(t, cfg)
			p2.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(be.addr())})
			mustSync(t, p2, udpPort(n, 53))
			if got, err := readOne(c, 2*time.Second); err != nil || got != "slow:q2" {
				t.Errorf("query queued at the handoff: %q, %v; want slow:q2 from the next run", got, err)
			}
		})
	}
}

// TestUDPShutdownSteersToTheOtherInstance: a second socket joins the
// proxy port's reuseport group (a surging instance); at shutdown the first
// steers every new datagram to it, keeps reading its own, and closes once
// the reply its session awaits (300ms) was relayed. Without the drain the
// first socket closes at once: the reply is lost (new datagrams reach the
// second socket either way).
func TestUDPShutdownSteersToTheOtherInstance(t *testing.T) {
	const clients = 50
	for name, tc := range map[string]struct {
		off       bool
		wantReply bool
	}{
		"steered":             {wantReply: true},
		"udp-reply-drain off": {off: true},
	} {
		t.Run(name, func(t *testing.T) {
			n := pn("dns", "dns")
			p1, _, be, c := awaitingReply(t, n, Config{ReusePort: true, UDPIdleTimeout: time.Minute, NoUDPReplyDrain: tc.off})
			addr := addrOf(p1, n)

			other, err := listenUDP(t.Context(), true, addr) // the surging instance's socket
			if err != nil {
				t.Fatal(err)
			}
			counts, err := udpSocketCounts()
			if err != nil {
				t.Fatal(err)
			}
			if got := counts[netip.MustParseAddrPort(addr)]; got != 2 {
				t.Fatalf("sock_diag counts %d sockets on %s, want 2", got, addr)
			}
			var atOther atomic.Int64
			otherDone := make(chan struct{})
			go func() {
				defer close(otherDone)
				buf := make([]byte, 2048)
				for {
					if _, _, err := other.ReadFromUDPAddrPort(buf); err != nil {
						return
					}
					atOther.Add(1)
				}
			}()
			t.Cleanup(func() {
				_ = other.Close()
				<-otherDone
			})

			done := shutdownAsync(t, p1)
			eventually(t, "shutdown started", func() bool { return shuttingDown(p1) })
			for i := range clients { // new clients: their hashes spread over the group
				nc := dialUDP(t, addr)
				if _, err := nc.Write([]byte{byte(i)}); err != nil {
					t.Fatal(err)
				}
			}
			got, err := readOne(c, time.Second)
			switch {
			case tc.wantReply && (err != nil || got != "slow:q1"):
				t.Errorf("reply awaited at shutdown: %q, %v; want slow:q1", got, err)
			case !tc.wantReply && err == nil:
				t.Errorf("with the drain off the reply still came: %q", got)
			}
			<-done
			eventually(t, "new datagrams at the other socket", func() bool { return atOther.Load() == clients })
			if h := be.hits.Load(); h != 1 {
				t.Errorf("the stopping instance forwarded %d new datagrams; want all %d at the other socket", h-1, clients)
			}
		})
	}
}

// TestUDPSocketCounts: sock_diag sees a lone UDP socket once, two sockets
// sharing an address twice, and no session (connected) socket.
func TestUDPSocketCounts(t *testing.T) {
	lone, err := listenUDP(t.Context(), false, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lone.Close()
	a, err := listenUDP(t.Context(), true, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := listenUDP(t.Context(), true, a.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	conn, err := net.DialUDP("udp", nil, lone.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	counts, err := udpSocketCounts()
	if err != nil {
		t.Fatal(err)
	}
	key := func(c *net.UDPConn) netip.AddrPort { return netipUnmap(c.LocalAddr().(*net.UDPAddr).AddrPort()) }
	for what, tc := range map[string]struct {
		c    *net.UDPConn
		want int
	}{
		"lone socket":      {lone, 1},
		"shared address":   {a, 2},
		"connected socket": {conn, 0},
	} {
		t.Run(what, func(t *testing.T) {
			if got := counts[key(tc.c)]; got != tc.want {
				t.Errorf("%s counted %d times, want %d", key(tc.c), got, tc.want)
			}
		})
	}
}

// TestUDPJoinGroup: a listener that joins a port another socket holds is
// not first (it never steers: its index is unknown) and removes the
// steering program a previous instance's shutdown left on the group; one on
// a port of its own is first.
func TestUDPJoinGroup(t *testing.T) {
	for name, tc := range map[string]struct {
		shared, wantFirst bool
	}{
		"alone":                {wantFirst: true},
		"joins another socket": {shared: true},
	} {
		t.Run(name, func(t *testing.T) {
			n := pn("dns", "dns")
			cfg := Config{ReusePort: true}
			var old *net.UDPConn
			if tc.shared {
				var err error
				if old, err = listenUDP(t.Context(), true, "127.0.0.1:0"); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = old.Close() })
				s := &udpServer{}
				s.first.Store(true)
				if s.rc, err = old.SyscallConn(); err != nil {
					t.Fatal(err)
				}
				if err := s.steerAway(); err != nil { // as a previous shutdown left it
					t.Fatal(err)
				}
				cfg.PreferredPorts = map[svc.PortName]uint16{n: uint16(old.LocalAddr().(*net.UDPAddr).Port)}
			}
			p, _ := newProxier(t, cfg)
			mustSync(t, p, udpPort(n, 53))
			p.mu.Lock()
			srv := p.ports[n].lst.udp[0]
			p.mu.Unlock()
			if srv.first.Load() != tc.wantFirst {
				t.Errorf("first = %v, want %v", srv.first.Load(), tc.wantFirst)
			}
			if tc.shared {
				if srv.local != netipUnmap(old.LocalAddr().(*net.UDPAddr).AddrPort()) {
					t.Fatalf("listener on %v, want the other socket's %v", srv.local, old.LocalAddr())
				}
				if err := srv.steerAway(); err == nil {
					t.Error("the newer socket of a group steered")
				}
				rc, _ := old.SyscallConn()
				var derr error
				_ = rc.Control(func(fd uintptr) {
					derr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DETACH_REUSEPORT_BPF, 0)
				})
				if !errors.Is(derr, unix.ENOENT) {
					t.Errorf("detaching the left-over program again: %v, want ENOENT (joinGroup removed it)", derr)
				}
			}
		})
	}
}

// TestUDPReplyOutlivesPlainShutdown: no fd holder, no other instance (the
// pod goes away): the listener stops reading but stays open for the reply
// a session awaits, at most udpDrainMax; with the drain off it closes at
// once and the reply is lost.
func TestUDPReplyOutlivesPlainShutdown(t *testing.T) {
	for name, tc := range map[string]struct {
		off       bool
		wantReply bool
	}{
		"drain":               {wantReply: true},
		"udp-reply-drain off": {off: true},
	} {
		t.Run(name, func(t *testing.T) {
			n := pn("dns", "dns")
			p, _, _, c := awaitingReply(t, n, Config{ReusePort: true, UDPIdleTimeout: time.Minute, NoUDPReplyDrain: tc.off})
			done := shutdownAsync(t, p)
			got, err := readOne(c, time.Second)
			switch {
			case tc.wantReply && (err != nil || got != "slow:q1"):
				t.Errorf("reply awaited at shutdown: %q, %v; want slow:q1", got, err)
			case !tc.wantReply && err == nil:
				t.Errorf("with the drain off the reply still came: %q", got)
			}
			if took := <-done; took >= udpDrainMax {
				t.Errorf("shutdown took %v, want less than udpDrainMax (%v)", took, udpDrainMax)
			}
		})
	}
}
