package reliability

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
)

// Leak run sizes and the tolerances after it, against a baseline taken after
// a warm-up (pools and lazily started goroutines exist by then).
const (
	leakConns    = 100_000
	leakSessions = 10_000
	tolGoroutine = 5
	tolFDs       = 5
	tolRSSMiB    = 32
)

// TestNoLeaksAfter100kConnections relays 100,000 TCP connections (HTTP/1.0,
// the server closes, so no TIME_WAIT piles up on the client) and 10,000 UDP
// sessions (one per source port) through uproxy, then checks that its
// goroutines (go_goroutines), fds (/proc/PID/fd) and RSS (VmRSS) return to
// the warm baseline within tolGoroutine, tolFDs and tolRSSMiB.
func TestNoLeaksAfter100kConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("long: 100,000 connections (runs without -short, as in make test)")
	}
	w := newWorld(t, "rel-leak", 6*time.Minute)
	e := w.deployEcho("echo", 3)
	u := w.b.StartUproxy(t, bed.UproxyOptions{Args: []string{"--profiling"}})
	w.waitServed(e)
	pid := u.Proc.Pid()
	httpAddr := fmt.Sprintf("%s:%d", e.ip, portHTTP)

	// Warm-up, then the baseline once everything is idle.
	if n, err := w.httpConns(httpAddr, 1000, 8); err != nil {
		t.Fatalf("warm-up: %d ok: %v", n, err)
	}
	if _, err := w.udpSessions(e.udpAddr(), 500, 8); err != nil {
		t.Fatalf("warm-up UDP: %v", err)
	}
	base := w.idleStats(e, pid)

	start := time.Now()
	okConns, cerr := w.httpConns(httpAddr, leakConns, 16)
	tcpTook := time.Since(start)
	afterTCP, _ := readProc(pid) // as the last connections close
	start = time.Now()
	okSess, uerr := w.udpSessions(e.udpAddr(), leakSessions, 8)
	udpTook := time.Since(start)
	if cerr != nil {
		t.Errorf("TCP: %d of %d connections answered: %v", okConns, leakConns, cerr)
	}
	if uerr != nil {
		t.Errorf("UDP: %d of %d sessions answered: %v", okSess, leakSessions, uerr)
	}
	total := w.mustMetric("uproxy_connections_total", w.portLabel(e, "http"))
	sessions := w.mustMetric("uproxy_udp_sessions_total", w.portLabel(e, "udp"))

	// Let it settle: give the runtime up to 30s to return to baseline
	// (GC and the scavenger return memory lazily).
	var after leakStats
	deadline := time.Now().Add(30 * time.Second)
	for {
		after = w.idleStats(e, pid)
		if after.within(base) || time.Now().After(deadline) {
			break
		}
		w.sleep(2 * time.Second)
	}
	summary("leaks", "tcp %d/%d in %v (%.0f/s), udp sessions %d/%d in %v; uproxy connections_total=%.0f udp_sessions_total=%.0f; "+
		"baseline %s; right after the TCP run fds=%d rss=%.1fMiB; settled %s; tolerance goroutines +%d fds +%d rss +%dMiB",
		okConns, leakConns, tcpTook.Round(time.Second), float64(okConns)/tcpTook.Seconds(), okSess, leakSessions,
		udpTook.Round(time.Millisecond), total, sessions, base, afterTCP.FDs, float64(afterTCP.RSSKiB)/1024, after,
		tolGoroutine, tolFDs, tolRSSMiB)
	if total < leakConns {
		t.Errorf("uproxy relayed %.0f connections, want at least %d", total, leakConns)
	}
	// UDP has no delivery guarantee: on a loaded 2-core box a few of the
	// first datagrams are dropped by the kernel before uproxy reads them
	// (9,993 of 10,000 seen). Require 99%; the count is in the summary.
	if sessions < leakSessions*99/100 {
		t.Errorf("uproxy created %.0f UDP sessions, want at least %d (99%% of %d)", sessions, leakSessions*99/100, leakSessions)
	}
	if !after.within(base) {
		_, dump, _ := w.b.HTTPGet(w.ctx, "http://"+bed.MetricsAddr+"/debug/pprof/goroutine?debug=1")
		t.Errorf("uproxy did not return to its baseline: %s vs %s\ngoroutines:\n%s", after, base, dump)
	}
}

// leakStats is an idle uproxy's footprint.
type leakStats struct {
	goroutines int
	proc       procStats
}

func (s leakStats) String() string {
	return fmt.Sprintf("goroutines=%d %s", s.goroutines, s.proc)
}

func (s leakStats) within(base leakStats) bool {
	return s.goroutines <= base.goroutines+tolGoroutine && s.proc.FDs <= base.proc.FDs+tolFDs &&
		s.proc.RSSKiB <= base.proc.RSSKiB+tolRSSMiB<<10
}

// idleStats waits until no connection or session is open, then reads the
// footprint.
func (w *world) idleStats(e echoService, pid int) leakStats {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, time.Minute)
	defer cancel()
	if err := bed.Poll(ctx, 200*time.Millisecond, func() (bool, error) {
		m := w.metrics()
		tcp, _ := metric(m, "uproxy_connections_active")
		udp, _ := metric(m, "uproxy_udp_sessions_active")
		return tcp == 0 && udp == 0, nil
	}); err != nil {
		m := w.metrics()
		tcp, _ := metric(m, "uproxy_connections_active")
		udp, _ := metric(m, "uproxy_udp_sessions_active")
		w.t.Fatalf("uproxy not idle after a minute: %.0f TCP connections, %.0f UDP sessions open: %v", tcp, udp, err)
	}
	w.sleep(time.Second)
	g := w.mustMetric("go_goroutines")
	p, err := readProc(pid)
	if err != nil {
		w.t.Fatal(err)
	}
	return leakStats{goroutines: int(g), proc: p}
}

// httpConns makes n HTTP/1.0 requests, one connection each, from the client
// namespace with workers in parallel; it returns how many got a pod's hello.
func (w *world) httpConns(addr string, n, workers int) (int, error) {
	var ok, next atomic.Int64
	var mu sync.Mutex // guards firstErr, errs
	var firstErr error
	errs := 0
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = w.client.NS.Do(func() error {
				buf := make([]byte, 4096)
				for next.Add(1) <= int64(n) && w.ctx.Err() == nil {
					err := httpOnce(addr, buf)
					if err == nil {
						ok.Add(1)
						continue
					}
					mu.Lock()
					errs++
					if firstErr == nil {
						firstErr = err
					}
					stop := errs > 50
					mu.Unlock()
					if stop {
						return nil
					}
				}
				return nil
			})
		}()
	}
	wg.Wait()
	if errs > 0 {
		return int(ok.Load()), fmt.Errorf("%d failed, first: %w", errs, firstErr)
	}
	return int(ok.Load()), w.ctx.Err()
}

var hello = []byte("Hello! I am Pod: ")

func httpOnce(addr string, buf []byte) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return err
	}
	var got []byte
	for {
		k, err := c.Read(buf)
		got = append(got, buf[:k]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if !bytes.HasPrefix(got, []byte("HTTP/1.0 200")) || !bytes.Contains(got, hello) {
		return fmt.Errorf("unexpected answer %q", strings.TrimSpace(string(got)))
	}
	return nil
}

// udpSessions sends one datagram from each of n fresh sockets (n sessions)
// and waits for each echo; it returns how many came back.
func (w *world) udpSessions(addr string, n, workers int) (int, error) {
	var ok, next, failed atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = w.client.NS.Do(func() error {
				buf := make([]byte, 64)
				for next.Add(1) <= int64(n) && w.ctx.Err() == nil {
					c, err := net.Dial("udp", addr)
					if err != nil {
						failed.Add(1)
						continue
					}
					_ = c.SetDeadline(time.Now().Add(2 * time.Second))
					if _, err = c.Write([]byte("session")); err == nil {
						var k int
						if k, err = c.Read(buf); err == nil && string(buf[:k]) == "session" {
							ok.Add(1)
						}
					}
					if err != nil {
						failed.Add(1)
					}
					_ = c.Close()
				}
				return nil
			})
		}()
	}
	wg.Wait()
	// UDP may lose a datagram; more than 1% lost is a failure.
	if f := failed.Load(); f*100 > int64(n) {
		return int(ok.Load()), fmt.Errorf("%d of %d UDP sessions got no echo", f, n)
	}
	return int(ok.Load()), nil
}
