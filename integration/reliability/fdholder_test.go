package reliability

import (
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
)

// udpProbe is one datagram sent through the service on its own socket (a
// new session, as each DNS query of a resolver is).
type udpProbe struct {
	sent     time.Time
	answered bool
	took     time.Duration
}

// TestRestartWithFDHolder: uproxy SIGKILLed and started again 2 s later
// with an fd holder (`uproxy fd-holder`, --fd-holder-socket), under 4 curl
// loops and a datagram every 20 ms to the UDP port: the datagrams sent
// while no uproxy ran waited on the held socket and were answered, and the
// new instance took the sockets back. Without the holder the datagrams of
// the gap are dropped (UPROXY-PORT-WAIT), as a DNS query then is. Only what
// the killed process was relaying may fail.
func TestRestartWithFDHolder(t *testing.T) {
	for name, holder := range map[string]bool{"holder": true, "no holder": false} {
		t.Run(name, func(t *testing.T) { testRestartWithFDHolder(t, holder) })
	}
}

func testRestartWithFDHolder(t *testing.T, holder bool) {
	w := newWorld(t, "rel-fdhold", 4*time.Minute)
	e := w.deployEcho("echo", 3)
	var args []string
	if holder {
		args = w.startFDHolder(t)
	}
	u1 := startRestartUproxy(t, w, nil, args...)
	w.waitServed(e)
	if err := w.udpEcho(e, 10*time.Second); err != nil {
		t.Fatal(err)
	}

	loop := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: e.url(), Workers: 4, MaxTime: 10 * time.Second})
	var mu sync.Mutex // guards probes
	var probes []*udpProbe
	var wg sync.WaitGroup
	stopProbes := make(chan struct{})
	probing := make(chan struct{}) // closed when the sender stopped: no wg.Add after it
	go func() {
		defer close(probing)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopProbes:
				return
			case <-tick.C:
			}
			p := &udpProbe{sent: time.Now()}
			mu.Lock()
			probes = append(probes, p)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.probeUDP(e, p)
			}()
		}
	}()
	w.sleep(2 * time.Second)
	killAt := time.Now()
	_ = u1.Signal(syscall.SIGKILL)
	<-waitExit(u1)
	exitedAt := time.Now()
	w.sleep(2 * time.Second)
	u2 := startRestartUproxy(t, w, nil, args...)
	readyAt := time.Now()
	w.sleep(3 * time.Second)
	close(stopProbes)
	<-probing
	wg.Wait()
	s := loop.Stop()

	inFlight := func(start, end time.Time) bool { return !start.After(exitedAt) && !end.Before(killAt) }
	var gap, gapLost, lost, tcpFailed int
	var slowest time.Duration
	for _, p := range probes {
		inGap := p.sent.After(exitedAt) && p.sent.Before(readyAt)
		if inGap {
			gap++
		}
		if p.answered {
			slowest = max(slowest, p.took)
			continue
		}
		if inGap {
			gapLost++
		} else if !inFlight(p.sent, p.sent.Add(50*time.Millisecond)) {
			lost++
		}
	}
	for _, x := range s.Samples {
		if !x.OK && !inFlight(x.Start, x.Start.Add(x.Dur)) {
			tcpFailed++
		}
	}
	taken := countLines(u2.Tail(400), "took back the socket a previous run left with the fd holder")
	summary("fd-holder", "%s: kill→exit %v, exit→new instance healthy %v; UDP %d datagrams, %d in the gap, %d of those lost, %d others lost, slowest answer %v; curl %v, %d failed outside the kill's in-flight window; %d sockets taken back",
		t.Name(), exitedAt.Sub(killAt).Round(time.Millisecond), readyAt.Sub(exitedAt).Round(time.Millisecond), len(probes), gap, gapLost, lost,
		slowest.Round(time.Millisecond), s, tcpFailed, taken)
	if gap == 0 {
		t.Fatalf("no datagram was sent while no uproxy ran")
	}
	if !holder {
		if gapLost == 0 {
			t.Errorf("without the fd holder no datagram of the gap was lost: the test no longer shows what the holder does")
		}
		return
	}
	if gapLost+lost > 0 {
		t.Errorf("%d datagrams sent while no uproxy ran and %d others were never answered", gapLost, lost)
	}
	if tcpFailed > 0 {
		t.Errorf("%d curl requests failed outside the kill's in-flight window:\n%s", tcpFailed, s.FailureDetail())
	}
	if taken == 0 {
		t.Errorf("the new instance took no socket back from the fd holder:\n%s", u2.Tail(40))
	}
}

// probeUDP sends one datagram on a new socket and waits up to 6 s for its
// echo (a resolver's first retry comes after 5 s).
func (w *world) probeUDP(e echoService, p *udpProbe) {
	c, err := w.client.NS.DialContext(w.ctx, "udp", e.udpAddr())
	if err != nil {
		return
	}
	defer c.Close()
	_ = c.SetDeadline(p.sent.Add(6 * time.Second))
	msg := fmt.Sprintf("probe-%d", p.sent.UnixNano())
	if _, err := c.Write([]byte(msg)); err != nil {
		return
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err == nil && string(buf[:n]) == msg {
		p.answered, p.took = true, time.Since(p.sent)
	}
}

func countLines(text, sub string) int {
	n := 0
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}
