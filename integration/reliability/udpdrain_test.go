package reliability

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
)

// udpDrainDelay is how long the backend of TestUDPRepliesAcrossShutdown
// takes to answer: queries uproxy forwarded are in flight when it stops.
const udpDrainDelay = 300 * time.Millisecond

// TestUDPRepliesAcrossShutdown: a query every 20 ms, each from a new socket
// (a new session, as a resolver's queries are), to a UDP service whose
// backend answers after 300 ms, while uproxy stops: (i) SIGTERM with the fd
// holder staying (a handoff) and the next instance started after the first
// exited; (ii) two surges in a row: a second instance shares the proxy
// port, then the first gets SIGTERM; 2 s later a third joins and the second
// (which joined the group after the first) gets SIGTERM. Every query is
// answered: the stopping instance keeps
// its listen socket for the replies it awaits (and in the surge steers new
// datagrams to the other instance). With UPROXY_TEST_DISABLE=udp-reply-drain
// the queries in flight at the signal lose their replies.
func TestUDPRepliesAcrossShutdown(t *testing.T) {
	i := 0
	for _, surge := range []bool{false, true} {
		for _, off := range []bool{false, true} {
			name := map[bool]string{false: "handoff", true: "surge"}[surge]
			if off {
				name += ", udp-reply-drain off"
			}
			i++
			ns := fmt.Sprintf("rel-udpdrain-%d", i) // a namespace per case: the manual service is not deleted
			t.Run(name, func(t *testing.T) { testUDPRepliesAcrossShutdown(t, ns, surge, off) })
		}
	}
}

func testUDPRepliesAcrossShutdown(t *testing.T, ns string, surge, off bool) {
	w := newWorld(t, ns, 3*time.Minute)
	be := w.startUDPBackend(udpDrainDelay)
	ip := w.udpService("slowdns", be)
	addr := net.JoinHostPort(ip, strconv.Itoa(portUDP))
	var env []string
	if off {
		env = []string{"UPROXY_TEST_DISABLE=udp-reply-drain"}
	}
	var args []string
	if !surge {
		args = w.startFDHolder(t)
	}
	u1 := startRestartUproxy(t, w, env, args...)
	w.waitUDPServed(addr)
	port, err := w.udpProxyPort("slowdns")
	if err != nil {
		t.Fatal(err)
	}

	probes := w.startSlowProbes(addr)
	w.sleep(2 * time.Second)
	var termAt, exitAt time.Time
	stopped := []*bed.Proc{u1}
	var exits []string
	if surge {
		// Two surges in a row, as two rollouts: the instance that joined
		// the group in the first is the one that stops in the second.
		old := u1
		for round := range 2 {
			next, _ := startUproxyProc(t, w, false, env)
			waitUDPShared(t, w, port, old, next)
			w.sleep(500 * time.Millisecond) // both serve
			at := time.Now()
			if round == 0 {
				termAt = at
			}
			if err, killed := old.Stop(10 * time.Second); err != nil || killed {
				t.Errorf("uproxy of surge %d on SIGTERM: err=%v killed=%v", round+1, err, killed)
			}
			exitAt = time.Now()
			exits = append(exits, fmt.Sprintf("TERM at %+.3fs, exit after %v", at.Sub(termAt).Seconds(), exitAt.Sub(at).Round(time.Millisecond)))
			if round == 0 {
				stopped = append(stopped, next)
				w.sleep(2 * time.Second) // the next instance alone, as between rollouts
			}
			old = next
		}
	} else {
		termAt = time.Now()
		if err, killed := u1.Stop(10 * time.Second); err != nil || killed {
			t.Errorf("uproxy on SIGTERM: err=%v killed=%v", err, killed)
		}
		exitAt = time.Now()
		startRestartUproxy(t, w, env, args...)
	}
	w.sleep(3 * time.Second)
	all := probes.stop()

	var lost []string
	var slowest time.Duration
	for _, p := range all {
		if p.answered {
			slowest = max(slowest, p.took)
			continue
		}
		lost = append(lost, fmt.Sprintf("%+.3fs", p.sent.Sub(termAt).Seconds()))
	}
	var tail string
	for _, u := range stopped {
		tail += u.Tail(400) + "\n"
	}
	steerFailed := countLines(tail, "cannot steer new UDP datagrams")
	if len(exits) == 0 {
		exits = []string{fmt.Sprintf("TERM→exit %v", exitAt.Sub(termAt).Round(time.Millisecond))}
	}
	summary("udp-reply-drain", "%s: backend delay %v, %s; %d queries, %d lost (sent at %v relative to the first SIGTERM), slowest answer %v; steering failures logged %d",
		t.Name(), udpDrainDelay, strings.Join(exits, "; "), len(all), len(lost), lost, slowest.Round(time.Millisecond), steerFailed)
	if steerFailed > 0 {
		t.Errorf("the stopping instance could not steer:\n%s", tail)
	}
	if off {
		if len(lost) == 0 {
			t.Errorf("with udp-reply-drain off no reply was lost: the test no longer shows what the drain does")
		}
		return
	}
	if len(lost) > 0 {
		t.Errorf("%d of %d queries lost their replies across the shutdown (sent at %v relative to SIGTERM)", len(lost), len(all), lost)
	}
}

// startFDHolder starts `uproxy fd-holder` in the node namespace (stopped at
// cleanup) and returns uproxy's argument for it.
func (w *world) startFDHolder(t *testing.T) []string {
	dir, err := os.MkdirTemp("", "uph") // short: a unix socket path has 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "fds.sock")
	bin, _ := bed.UproxyBinary()
	h, err := bed.StartProc(w.b.Node, "fd-holder", filepath.Join(w.b.Dir, "fd-holder.log"), nil, bin, "fd-holder", "--socket", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, killed := h.Stop(5 * time.Second); killed {
			t.Errorf("the fd holder did not stop on SIGTERM")
		}
	})
	return []string{"--fd-holder-socket", sock}
}

// udpProxyPort is the proxy port of the manual UDP service name.
func (w *world) udpProxyPort(name string) (uint16, error) {
	all, err := w.services()
	if err != nil {
		return 0, err
	}
	want := fmt.Sprintf("%s/%s:p", w.ns, name)
	for _, p := range all {
		if p.Name == want {
			return p.ProxyPort, nil
		}
	}
	return 0, fmt.Errorf("%s not in /debug/services", want)
}

// waitUDPShared waits until both instances have a UDP socket on port.
func waitUDPShared(t *testing.T, w *world, port uint16, u1, u2 *bed.Proc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, 30*time.Second)
	defer cancel()
	var out string
	if err := bed.Poll(ctx, 50*time.Millisecond, func() (bool, error) {
		out, _ = w.b.Node.Output(ctx, "ss", "-Hulnp", fmt.Sprintf("sport = :%d", port))
		return strings.Contains(out, fmt.Sprintf("pid=%d,", u1.Pid())) && strings.Contains(out, fmt.Sprintf("pid=%d,", u2.Pid())), nil
	}); err != nil {
		t.Fatalf("both instances never had a UDP socket on %d: %v\n%s", port, err, out)
	}
}

// slowProbes sends a query every 20 ms, each on a new socket, and waits up
// to 6 s for its answer (a resolver's first retry comes after 5 s).
type slowProbes struct {
	mu     sync.Mutex // guards probes
	probes []*udpProbe
	wg     sync.WaitGroup
	quit   chan struct{}
	done   chan struct{}
}

func (w *world) startSlowProbes(addr string) *slowProbes {
	s := &slowProbes{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-s.quit:
				return
			case <-tick.C:
			}
			p := &udpProbe{sent: time.Now()}
			s.mu.Lock()
			s.probes = append(s.probes, p)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				w.probeSlowUDP(addr, p)
			}()
		}
	}()
	return s
}

// stop ends the probes and waits for the answers still due.
func (s *slowProbes) stop() []*udpProbe {
	close(s.quit)
	<-s.done
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.probes
}

func (w *world) probeSlowUDP(addr string, p *udpProbe) {
	c, err := w.client.NS.DialContext(w.ctx, "udp", addr)
	if err != nil {
		return
	}
	defer c.Close()
	_ = c.SetDeadline(p.sent.Add(6 * time.Second))
	msg := fmt.Sprintf("q-%d", p.sent.UnixNano())
	if _, err := c.Write([]byte(msg)); err != nil {
		return
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err == nil && string(buf[:n]) == "re:"+msg {
		p.answered, p.took = true, time.Since(p.sent)
	}
}
