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
	// The UDP probes' first local ports (warm-up, run): each probe binds its
	// own port, below the client namespace's ephemeral range (32768-60999),
	// so no two probes share one (see udpSessions).
	udpWarmPort = 20000
	udpRunPort  = 21000
	// minAnswered is the share of UDP probes that must be answered for the
	// run to exercise enough sessions; the loss itself is no leak.
	minAnswered = 0.90
)

// TestNoLeaksAfter100kConnections relays 100,000 TCP connections (HTTP/1.0,
// the server closes, so no TIME_WAIT piles up on the client) and 10,000 UDP
// sessions (one per source port) through uproxy, then checks that its
// goroutines (go_goroutines), fds (/proc/PID/fd) and RSS (VmRSS) return to
// the warm baseline within tolGoroutine, tolFDs and tolRSSMiB, and that no
// connection or session stays open. uproxy's counters must agree with what
// the client saw: at least one relayed connection per answered request, and
// between one UDP session per answered probe and one per probe sent (a
// datagram lost before uproxy read it makes no session, one lost after
// does).
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
	if _, _, err := w.udpSessions(e.udpAddr(), udpWarmPort, 500, 8); err != nil {
		t.Fatalf("warm-up UDP: %v", err)
	}
	base := w.idleStats(e, pid)
	conns0 := w.mustMetric("uproxy_connections_total", w.portLabel(e, "http"))
	sessions0 := w.mustMetric("uproxy_udp_sessions_total", w.portLabel(e, "udp"))

	start := time.Now()
	okConns, cerr := w.httpConns(httpAddr, leakConns, 16)
	tcpTook := time.Since(start)
	afterTCP, _ := readProc(pid) // as the last connections close
	start = time.Now()
	okSess, sent, uerr := w.udpSessions(e.udpAddr(), udpRunPort, leakSessions, 8)
	udpTook := time.Since(start)
	if cerr != nil {
		t.Errorf("TCP: %d of %d connections answered: %v", okConns, leakConns, cerr)
	}
	if uerr != nil {
		t.Errorf("UDP: %d probes sent, %d answered: %v", sent, okSess, uerr)
	}
	total := w.mustMetric("uproxy_connections_total", w.portLabel(e, "http")) - conns0
	sessions := w.mustMetric("uproxy_udp_sessions_total", w.portLabel(e, "udp")) - sessions0

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
	summary("leaks", "tcp %d/%d in %v (%.0f/s), udp probes answered %d/%d sent in %v; during the run uproxy counted "+
		"connections_total +%.0f udp_sessions_total +%.0f; baseline %s; right after the TCP run fds=%d rss=%.1fMiB; settled %s; "+
		"tolerance goroutines +%d fds +%d rss +%dMiB",
		okConns, leakConns, tcpTook.Round(time.Second), float64(okConns)/tcpTook.Seconds(), okSess, sent,
		udpTook.Round(time.Millisecond), total, sessions, base, afterTCP.FDs, float64(afterTCP.RSSKiB)/1024, after,
		tolGoroutine, tolFDs, tolRSSMiB)
	if total < float64(okConns) {
		t.Errorf("uproxy counted %.0f relayed connections during the run, the client got %d answers", total, okConns)
	}
	// Every probe has its own source port, so each answered probe is a
	// session of its own. UDP delivers nothing for sure: the sessions
	// created lie between the probes answered and the probes sent.
	if sessions < float64(okSess) || sessions > float64(sent) {
		t.Errorf("uproxy created %.0f UDP sessions during the run, want between %d (probes answered) and %d (probes sent)",
			sessions, okSess, sent)
	}
	if float64(okSess) < minAnswered*leakSessions {
		t.Errorf("only %d of %d UDP probes answered (want >= %.0f%%): too few sessions to prove much about leaks",
			okSess, leakSessions, 100*minAnswered)
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

// udpSessions sends one datagram from each of n sockets, bound to the local
// ports firstPort .. firstPort+n-1, and waits up to 2 s for each echo, workers
// at a time; it returns how many echoes came back and how many probes went
// out. Each probe has a port of its own because uproxy keys a session by
// the client's ip:port: a kernel-chosen port handed out again within
// --udp-timeout (250 ms) joins the earlier session, which made the session
// count of a busy run fall short of the probes (9611 of 10,000) with no
// datagram lost. A lost probe is not retried. The error reports probes that
// could not be sent (a harness fault).
func (w *world) udpSessions(addr string, firstPort, n, workers int) (answered, sent int, err error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return 0, 0, err
	}
	var ok, next, out atomic.Int64
	var mu sync.Mutex // guards firstErr, errs
	var firstErr error
	errs := 0
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = w.client.NS.Do(func() error {
				buf := make([]byte, 64)
				for i := next.Add(1); i <= int64(n) && w.ctx.Err() == nil; i = next.Add(1) {
					laddr := &net.UDPAddr{Port: firstPort + int(i) - 1}
					c, err := net.DialUDP("udp", laddr, raddr)
					if err == nil {
						_ = c.SetDeadline(time.Now().Add(2 * time.Second))
						_, err = c.Write([]byte("session"))
					}
					if err != nil {
						mu.Lock()
						errs++
						if firstErr == nil {
							firstErr = fmt.Errorf("probe from port %d: %w", laddr.Port, err)
						}
						mu.Unlock()
						if c != nil {
							_ = c.Close()
						}
						continue
					}
					out.Add(1)
					if k, err := c.Read(buf); err == nil && string(buf[:k]) == "session" {
						ok.Add(1)
					}
					_ = c.Close()
				}
				return nil
			})
		}()
	}
	wg.Wait()
	if errs > 0 {
		return int(ok.Load()), int(out.Load()), fmt.Errorf("%d probes not sent, first: %w", errs, firstErr)
	}
	return int(ok.Load()), int(out.Load()), w.ctx.Err()
}
