package proxy

import (
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/uproxy/uproxy/svc"
)

// BenchmarkUDPSessionFootprint opens sessions (one client port each, a
// raw socket so the clients cost this process no Go memory) and reports
// what an open, idle session costs uproxy: heap and goroutine stack in use
// per session (bytes/session) and fds. With --udp-timeout 10s a session
// lives 40× longer than with 250ms, so the cap (UDPMaxSessions) times this
// figure is what a UDP port can hold.
func BenchmarkUDPSessionFootprint(b *testing.B) {
	const sessions = 1000
	be := newUDPBackend(b, "u")
	p, _ := newProxier(b, Config{UDPIdleTimeout: time.Hour, UDPMaxSessions: 2 * sessions})
	n := pn("dns", "")
	mustSync(b, p, udpPort(n, 53))
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(be.addr())})
	dst := udpSockaddr(b, addrOf(p, n))
	var perSession, fdsPer float64
	for b.Loop() {
		before := footprint()
		if testing.Verbose() {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			b.Logf("before: heap in use %d, stack in use %d", ms.HeapInuse, ms.StackInuse)
		}
		fds0 := openFDs(b)
		clients := make([]int, 0, sessions)
		for len(clients) < sessions {
			// In steps of 100: a burst of 1000 overflows the listen
			// socket's buffer. A step's datagrams are sent again until each
			// has its session (a resent one joins its session).
			var step []int
			for range min(100, sessions-len(clients)) {
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					b.Fatal(err)
				}
				step = append(step, fd)
			}
			clients = append(clients, step...)
			want := int64(len(clients))
			deadline := time.Now().Add(5 * time.Second)
			for p.Snapshot()[0].UDPSessions != want {
				if time.Now().After(deadline) {
					b.Fatalf("%d sessions, want %d", p.Snapshot()[0].UDPSessions, want)
				}
				for _, fd := range step {
					if err := unix.Sendto(fd, []byte("q"), 0, dst); err != nil {
						b.Fatal(err)
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		perSession = float64(footprint()-before) / sessions
		if testing.Verbose() {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			b.Logf("heap in use %d, stack in use %d", ms.HeapInuse, ms.StackInuse)
		}
		fdsPer = float64(openFDs(b)-fds0-sessions) / sessions // minus the clients' own
		for _, fd := range clients {
			_ = unix.Close(fd)
		}
		b.StopTimer()
		p.mu.Lock()
		for _, u := range p.ports[n].lst.udp {
			u.closeSessions()
		}
		p.mu.Unlock()
		eventually(b, "sessions closed", func() bool { return p.Snapshot()[0].UDPSessions == 0 })
		b.StartTimer()
	}
	b.ReportMetric(perSession, "bytes/session")
	b.ReportMetric(fdsPer, "fds/session")
}

// footprint is the heap and stack memory in use after a GC.
func footprint() int64 {
	runtime.GC()
	runtime.GC() // twice: sync.Pool victims (the 64 KiB datagram buffers) go too
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse + ms.StackInuse)
}

func udpSockaddr(t testing.TB, addr string) *unix.SockaddrInet4 {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
}
