package reliability

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
)

// TestSlowClientsDoNotDelayOthers: 500 clients connect to the service and
// send nothing (slowloris) while a curl loop runs: accept never waits on
// them, so the loop sees no failure and no delay beyond a generous bound.
func TestSlowClientsDoNotDelayOthers(t *testing.T) {
	w := newWorld(t, "rel-slow", 4*time.Minute)
	e := w.deployEcho("echo", 2)
	w.b.StartUproxy(t, bed.UproxyOptions{})
	w.waitServed(e)

	base := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: e.url(), Workers: 4, Requests: 80}).Wait()

	const idle = 500
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	for i := range idle {
		c, err := w.dialTCP(fmt.Sprintf("%s:%d", e.ip, portHTTP), 3*time.Second)
		if err != nil {
			t.Fatalf("idle client %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	// Every idle client reached uproxy and holds a relay.
	label := w.portLabel(e, "http")
	var active float64
	ctx, cancel := context.WithTimeout(w.ctx, 30*time.Second)
	defer cancel()
	if err := bed.Poll(ctx, 100*time.Millisecond, func() (bool, error) {
		active, _ = metric(w.metrics(), "uproxy_connections_active", label)
		return active >= idle, nil
	}); err != nil {
		t.Fatalf("only %.0f of %d idle clients are relayed: %v", active, idle, err)
	}
	loaded := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: e.url(), Workers: 4, Requests: 200}).Wait()
	summary("slowloris", "idle=%d relayed=%.0f baseline %v; with idle clients %v", idle, active, base, loaded)
	if loaded.Failures != 0 {
		t.Errorf("curl loop failed %d times next to %d idle clients:\n%s", loaded.Failures, idle, loaded.FailureDetail())
	}
	// Generous: a proxy that serves connections one at a time hangs the
	// loop until curl's 5s --max-time.
	if bound := max(2*time.Second, 4*base.P99); loaded.P99 > bound {
		t.Errorf("p99 %v with idle clients (baseline %v, bound %v)", loaded.P99, base.P99, bound)
	}
}

// udpCap is --udp-max-sessions in TestUDPFloodStaysWithinCap.
const udpCap = 200

// TestUDPFloodStaysWithinCap sends one datagram from each of 3,000 source
// ports: sessions stay at the cap, the rest are dropped and counted, uproxy's
// fds and RSS stay bounded, and once the sessions idle out a new client is
// served again.
func TestUDPFloodStaysWithinCap(t *testing.T) {
	w := newWorld(t, "rel-udp", 4*time.Minute)
	e := w.deployEcho("echo", 2)
	u := w.b.StartUproxy(t, bed.UproxyOptions{Args: []string{"--udp-max-sessions", fmt.Sprint(udpCap), "--udp-timeout", "5s"}})
	w.waitServed(e)
	if err := w.udpEcho(e, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	pid := u.Proc.Pid()
	before, err := readProc(pid)
	if err != nil {
		t.Fatal(err)
	}

	const flood = 3000
	sent, err := w.udpFlood(e.udpAddr(), flood, 8)
	if err != nil {
		t.Fatalf("flood: sent %d: %v", sent, err)
	}
	during, _ := readProc(pid)
	m := w.metrics()
	label := w.portLabel(e, "udp")
	active, _ := metric(m, "uproxy_udp_sessions_active", label)
	created, _ := metric(m, "uproxy_udp_sessions_total", label)
	drops, _ := metric(m, "uproxy_udp_session_cap_drops_total", label)

	// The sessions idle out (5s) and a new client is served again.
	var drained float64
	if err := bed.Poll(w.ctx, 250*time.Millisecond, func() (bool, error) {
		drained, _ = metric(w.metrics(), "uproxy_udp_sessions_active", label)
		return drained == 0, nil
	}); err != nil {
		t.Errorf("UDP sessions did not idle out: %.0f active", drained)
	}
	recoverErr := w.udpEcho(e, 10*time.Second)
	after, _ := readProc(pid)
	summary("udp-flood", "cap=%d sent=%d from distinct ports: active=%.0f created=%.0f cap_drops=%.0f; uproxy before %s, during %s, after idle-out %s",
		udpCap, sent, active, created, drops, before, during, after)
	if active > udpCap {
		t.Errorf("uproxy_udp_sessions_active %.0f > cap %d", active, udpCap)
	}
	if drops == 0 {
		t.Errorf("no datagram dropped at the cap (sessions created %.0f)", created)
	}
	if during.FDs > before.FDs+udpCap+20 {
		t.Errorf("fds %d during the flood: more than the cap (%d) above %d", during.FDs, udpCap, before.FDs)
	}
	if rssMax := before.RSSKiB + 64<<10; during.RSSKiB > rssMax {
		t.Errorf("RSS %d KiB during the flood, bound %d KiB (start + 64 MiB)", during.RSSKiB, rssMax)
	}
	if recoverErr != nil {
		t.Errorf("after the flood: %v", recoverErr)
	}
}

// udpEcho waits until one datagram comes back through the service.
func (w *world) udpEcho(e echoService, timeout time.Duration) error {
	var last error
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		c, err := w.client.NS.DialContext(w.ctx, "udp", e.udpAddr())
		if err != nil {
			return err
		}
		_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
		buf := make([]byte, 64)
		if _, err = c.Write([]byte("hello-udp")); err == nil {
			var n int
			n, err = c.Read(buf)
			if err == nil && string(buf[:n]) != "hello-udp" {
				err = fmt.Errorf("echo: got %q", buf[:n])
			}
		}
		_ = c.Close()
		if err == nil {
			return nil
		}
		last = err
	}
	return fmt.Errorf("UDP echo through %s never answered: %w", e.udpAddr(), last)
}

// udpFlood sends one datagram from each of n fresh sockets (so n source
// ports) in the client namespace, with workers in parallel.
func (w *world) udpFlood(addr string, n, workers int) (int, error) {
	var mu sync.Mutex // guards sent, ferr
	sent := 0
	var ferr error
	var wg sync.WaitGroup
	for i := range workers {
		count := n / workers
		if i < n%workers {
			count++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := w.client.NS.Do(func() error {
				for range count {
					c, err := net.Dial("udp", addr)
					if err != nil {
						return err
					}
					_, err = c.Write([]byte("flood"))
					_ = c.Close()
					if err != nil {
						return err
					}
					mu.Lock()
					sent++
					mu.Unlock()
				}
				return nil
			})
			if err != nil {
				mu.Lock()
				ferr = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return sent, ferr
}
