package proxy

import (
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/uproxy/uproxy/svc"
)

// fakeKeeper holds duplicates of the kept sockets in this process, as the
// fd holder does in another one.
type fakeKeeper struct {
	mu       sync.Mutex // guards the rest
	held     map[string]*os.File
	taken    []string
	dropped  []string
	settles  int
	dupFails int
}

func newFakeKeeper() *fakeKeeper { return &fakeKeeper{held: map[string]*os.File{}} }

func (k *fakeKeeper) Take(key string) *os.File {
	k.mu.Lock()
	defer k.mu.Unlock()
	f := k.held[key]
	if f == nil {
		return nil
	}
	k.taken = append(k.taken, key)
	nfd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		return nil
	}
	return os.NewFile(uintptr(nfd), key)
}

func (k *fakeKeeper) Keep(key string, c syscall.Conn) {
	rc, err := c.SyscallConn()
	var nfd int
	if err == nil {
		err = rc.Control(func(fd uintptr) { nfd, err = unix.Dup(int(fd)) })
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err != nil {
		k.dupFails++
		return
	}
	if old := k.held[key]; old != nil {
		_ = old.Close()
	}
	k.held[key] = os.NewFile(uintptr(nfd), key)
}

func (k *fakeKeeper) Drop(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.dropped = append(k.dropped, key)
	if f := k.held[key]; f != nil {
		_ = f.Close()
		delete(k.held, key)
	}
}

func (k *fakeKeeper) Settle() {
	k.mu.Lock()
	k.settles++
	k.mu.Unlock()
}

func (k *fakeKeeper) HolderStays(time.Duration) bool { return true }

func (k *fakeKeeper) close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for key, f := range k.held {
		_ = f.Close()
		delete(k.held, key)
	}
}

func (k *fakeKeeper) keys() (held int, taken, dropped []string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.held), append([]string(nil), k.taken...), append([]string(nil), k.dropped...)
}

// deadOnce forwards to a keeper until its process "dies": from then on it
// records nothing, as a SIGKILLed uproxy sends nothing to the fd holder.
type deadOnce struct {
	k    *fakeKeeper
	dead atomic.Bool
}

func (d *deadOnce) Take(key string) *os.File { return d.k.Take(key) }
func (d *deadOnce) Keep(key string, c syscall.Conn) {
	if !d.dead.Load() {
		d.k.Keep(key, c)
	}
}
func (d *deadOnce) Drop(key string) {
	if !d.dead.Load() {
		d.k.Drop(key)
	}
}
func (d *deadOnce) Settle()                          {}
func (d *deadOnce) HolderStays(w time.Duration) bool { return d.k.HolderStays(w) }

// TestKeptSocketsOutliveTheProcess: a TCP connection and a datagram sent
// while no proxier runs are served by the next proxier, which takes the
// kept sockets back: when the first one died without its shutdown (killed:
// its listeners closed at once; killed while closing gracefully: the SYN
// filter stays on the kept listener and the next run removes it) and when
// it shut down (SIGTERM: the pod may stay, as after a failed liveness
// probe; the fd holder closes its copies when the pod goes away). Without a
// keeper the ports close: the connection is refused.
func TestKeptSocketsOutliveTheProcess(t *testing.T) {
	for name, tc := range map[string]struct {
		keeper, killed, graceful, served bool
	}{
		"killed":               {keeper: true, killed: true, served: true},
		"killed while closing": {keeper: true, killed: true, graceful: true, served: true},
		"shut down":            {keeper: true, graceful: true, served: true},
		"no keeper":            {killed: true},
	} {
		t.Run(name, func(t *testing.T) {
			tn, un := pn("web", "http"), pn("dns", "dns")
			tb := newBackend(t, "b1", "who")
			ub := newUDPBackend(t, "u1")
			k := newFakeKeeper()
			defer k.close()
			d := &deadOnce{k: k}
			cfg := Config{ReusePort: true, NoGracefulClose: !tc.graceful}
			if tc.keeper {
				cfg.Sockets = d
			}
			p1, fp1 := newProxier(t, cfg)
			mustSync(t, p1, tcpPort(tn, 80), udpPort(un, 53))
			pref := map[svc.PortName]uint16{}
			for _, pt := range fp1.last() {
				pref[pt.Port.Name] = pt.ProxyPort
			}
			taddr, uaddr := addrOf(p1, tn), addrOf(p1, un)
			d.dead.Store(tc.killed)
			if err := p1.Shutdown(t.Context()); err != nil {
				t.Fatal(err)
			}
			held, _, _ := k.keys()
			if want := map[bool]int{true: 2, false: 0}[tc.keeper]; held != want {
				t.Fatalf("after the first proxier the keeper holds %d sockets, want %d", held, want)
			}

			// Sent while no proxier runs.
			type result struct {
				got string
				err error
			}
			res := make(chan result, 1)
			go func() {
				got, err := roundTrip(taddr, "hello")
				res <- result{got, err}
			}()
			u, err := net.Dial("udp", uaddr)
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			if _, err := u.Write([]byte("q1")); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond)

			cfg.PreferredPorts = pref
			cfg.Sockets = nil
			if tc.keeper {
				cfg.Sockets = k
			}
			p2, _ := newProxier(t, cfg)
			// As the sync loop does: endpoints first, then the ports.
			p2.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{tn: ready(tb.addr()), un: ready(ub.addr())})
			mustSync(t, p2, tcpPort(tn, 80), udpPort(un, 53))

			r := <-res
			_ = u.SetReadDeadline(time.Now().Add(2 * time.Second))
			b := make([]byte, 64)
			n, uerr := u.Read(b)
			if !tc.served {
				if r.err == nil {
					t.Errorf("a connection made while no proxier ran was served (%q)", r.got)
				}
				return
			}
			if r.err != nil || r.got != "b1:hello" {
				t.Errorf("connection made while no proxier ran: %q, %v", r.got, r.err)
			}
			if uerr != nil || string(b[:n]) != "u1:q1" {
				t.Errorf("datagram sent while no proxier ran: %q, %v", b[:n], uerr)
			}
			if _, taken, _ := k.keys(); len(taken) != 2 {
				t.Errorf("the second proxier took %v, want both sockets", taken)
			}
		})
	}
}

// TestKeptSocketDroppedWithItsPort: a port removed by a sync is dropped by
// the keeper; every sync settles it.
func TestKeptSocketDroppedWithItsPort(t *testing.T) {
	k := newFakeKeeper()
	defer k.close()
	p, _ := newProxier(t, Config{ReusePort: true, Sockets: k})
	a, b := pn("a", ""), pn("b", "")
	mustSync(t, p, tcpPort(a, 80), udpPort(b, 53))
	if held, _, _ := k.keys(); held != 2 {
		t.Fatalf("keeper holds %d, want 2", held)
	}
	mustSync(t, p, tcpPort(a, 80))
	held, _, dropped := k.keys()
	if held != 1 || len(dropped) != 1 {
		t.Fatalf("after removing b: held %d, dropped %v", held, dropped)
	}
	k.mu.Lock()
	settles := k.settles
	k.mu.Unlock()
	if settles != 2 {
		t.Errorf("Settle called %d times, want once per sync (2)", settles)
	}
}
