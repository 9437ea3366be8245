package reliability

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/uproxy/uproxy/integration/bed"
)

// tcpBackend is a TCP server in a namespace of its own on the node bridge
// (a bed client namespace playing a pod), port 7070. Modes:
//   - "count-reset": reads one request line, counts it (the work is done),
//     then resets the connection (SO_LINGER 0), as a server that crashes
//     after processing, or that closes without answering by design;
//   - "reset-at-once": resets every connection 10 ms after accept, before
//     reading (a connect-level failure: nothing of the request was taken).
//     The 10 ms make uproxy see the reset after its connect returned (an
//     early reset): a reset at once sometimes beat the connect's return and
//     was handled as a failed dial, retried whatever the replay setting;
//   - "answer": reads one line, counts it, answers "ok:<line>".
type tcpBackend struct {
	ip       string
	accepted atomic.Int64
	requests atomic.Int64
}

const tcpBackendPort = 7070

func (w *world) startTCPBackend(mode string) *tcpBackend {
	w.t.Helper()
	ns := w.b.NewClient(w.t)
	var ln *net.TCPListener
	if err := ns.NS.Do(func() (err error) {
		ln, err = net.ListenTCP("tcp4", &net.TCPAddr{IP: net.ParseIP(ns.IP), Port: tcpBackendPort})
		return err
	}); err != nil {
		w.t.Fatal(err)
	}
	be := &tcpBackend{ip: ns.IP}
	done := make(chan struct{})
	w.t.Cleanup(func() { _ = ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			be.accepted.Add(1)
			go be.serve(c, mode)
		}
	}()
	return be
}

func (be *tcpBackend) serve(c *net.TCPConn, mode string) {
	defer c.Close()
	if mode == "reset-at-once" {
		time.Sleep(10 * time.Millisecond)
		_ = c.SetLinger(0)
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	be.requests.Add(1)
	if mode == "answer" {
		_, _ = c.Write([]byte("ok:" + line))
		return
	}
	_ = c.SetLinger(0)
}

// request sends one line on a new connection to addr from the client
// namespace, waiting wait after connect first, and reads the answer to
// the end.
func (w *world) request(addr, line string, wait time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
	defer cancel()
	c, err := w.client.NS.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	time.Sleep(wait)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	_ = c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}

// waitPortal waits until the service's portal rule is in the node's nat
// table and uproxy lists n endpoints for it, without sending a request
// (a probe connection would itself reach the counting backends).
func (w *world) waitPortal(ip, label string, n int) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, 30*time.Second)
	defer cancel()
	if err := bed.Poll(ctx, 100*time.Millisecond, func() (bool, error) {
		rules, err := w.b.NATRules(ctx)
		if err != nil || !strings.Contains(rules, ip) {
			return false, nil
		}
		eps := 0
		for _, l := range strings.Split(w.metrics(), "\n") {
			if strings.HasPrefix(l, "uproxy_endpoint_connections_total{") && strings.Contains(l, label) {
				eps++
			}
		}
		return eps == n, nil
	}); err != nil {
		w.t.Fatalf("portal %s with %d endpoints never programmed: %v", ip, n, err)
	}
}

// TestEarlyResetReplayRule: an endpoint that read a request and then reset
// within the early-reset window (100 ms) is not replayed to: each request
// runs once, the client sees the reset; 3 such resets in a row eject it. Before issue 15
// item 7 the request was replayed to the other endpoint (which ran it
// too). An endpoint that resets before taking any byte still has the
// connection moved (and is ejected), unless --early-reset-replay=false.
func TestEarlyResetReplayRule(t *testing.T) {
	w := newWorld(t, "rel-early", 4*time.Minute)
	counting := []*tcpBackend{w.startTCPBackend("count-reset"), w.startTCPBackend("count-reset")}
	atOnce, answer := w.startTCPBackend("reset-at-once"), w.startTCPBackend("answer")
	workIP := w.manualService("work", corev1.ProtocolTCP, 80, tcpBackendPort, counting[0].ip, counting[1].ip)
	moveIP := w.manualService("move", corev1.ProtocolTCP, 80, tcpBackendPort, atOnce.ip, answer.ip)
	workLabel := fmt.Sprintf(`service_port="%s/work:p"`, w.ns)
	moveLabel := fmt.Sprintf(`service_port="%s/move:p"`, w.ns)
	port := strconv.Itoa(80)

	run := func(t *testing.T, name string, args []string, check func(t *testing.T)) {
		t.Run(name, func(t *testing.T) {
			parent := w.t
			w.t = t
			defer func() { w.t = parent }()
			w.b.StartUproxy(t, bed.UproxyOptions{Args: args})
			w.waitPortal(workIP, workLabel, 2)
			w.waitPortal(moveIP, moveLabel, 2)
			check(t)
		})
	}

	// workCase: the endpoints read and count every request, then reset. No
	// request is replayed (each runs once, the client sees every reset);
	// with --eject-after-resets (3 by default) each endpoint is ejected
	// after 3 such resets in a row (while both are ejected, panic mode
	// picks among them, so every request still reaches one).
	workCase := func(ejectAfter int) func(t *testing.T) {
		return func(t *testing.T) {
			const n = 20
			before0, before1 := counting[0].requests.Load(), counting[1].requests.Load()
			resets, answered := 0, 0
			for i := range n {
				got, err := w.request(net.JoinHostPort(workIP, port), fmt.Sprintf("req-%d", i), 0)
				switch {
				case errors.Is(err, syscall.ECONNRESET):
					resets++
				case got != "":
					answered++
				}
			}
			ran0, ran1 := counting[0].requests.Load()-before0, counting[1].requests.Load()-before1
			ran := ran0 + ran1
			m := w.metrics()
			moved, _ := metric(m, "uproxy_early_resets_total", workLabel, `outcome="moved"`)
			cut, _ := metric(m, "uproxy_resets_before_reply_total", workLabel)
			ejections, _ := metric(m, "uproxy_endpoint_ejections_total", workLabel)
			summary("early-reset-work", "--eject-after-resets=%d: %d requests to 2 endpoints that read, count, reset: ran %d times (%d + %d), client saw %d resets, %d answers; moved %.0f, resets before reply %.0f, ejections %.0f",
				ejectAfter, n, ran, ran0, ran1, resets, answered, moved, cut, ejections)
			if ran != n {
				t.Errorf("%d requests ran %d times on the endpoints, want once each", n, ran)
			}
			if moved != 0 {
				t.Errorf("moved %.0f connections; want none", moved)
			}
			if resets != n || cut != n {
				t.Errorf("the client saw %d of %d resets, uproxy counted %.0f", resets, n, cut)
			}
			switch {
			case ejectAfter > 0 && ejections < 2:
				t.Errorf("%.0f ejections with --eject-after-resets=%d; want both endpoints ejected (>= 2)", ejections, ejectAfter)
			case ejectAfter == 0 && ejections != 0:
				t.Errorf("%.0f ejections with --eject-after-resets=0; want none", ejections)
			}
		}
	}
	run(t, "request read, then reset: runs once, not replayed; 3 in a row eject", nil, workCase(3))
	run(t, "request read, then reset, --eject-after-resets=0: nothing ejected", []string{"--eject-after-resets=0"}, workCase(0))

	moveCase := func(replay bool) func(t *testing.T) {
		return func(t *testing.T) {
			const n = 10
			failed, wrong := 0, 0
			var firstErr error
			for i := range n {
				line := fmt.Sprintf("req-%d", i)
				// The endpoint's reset (10 ms after accept) arrives while
				// the client waits; the request goes out after it, within
				// the 100 ms window.
				got, err := w.request(net.JoinHostPort(moveIP, port), line, 40*time.Millisecond)
				switch {
				case err != nil:
					failed++
					if firstErr == nil {
						firstErr = err
					}
				case got != "ok:"+line+"\n":
					wrong++
				}
			}
			m := w.metrics()
			moved, _ := metric(m, "uproxy_early_resets_total", moveLabel, `outcome="moved"`)
			early, _ := metric(m, "uproxy_early_resets_total", moveLabel, `outcome="all"`)
			ejections, _ := metric(m, "uproxy_endpoint_ejections_total", moveLabel)
			retries, _ := metric(m, "uproxy_dial_retries_total", moveLabel)
			summary("early-reset-move", "replay %v: %d requests, reset-at-once endpoint accepted %d in all: failed %d (first %v), wrong %d; early resets %.0f, moved %.0f, dial retries %.0f, ejections %.0f",
				replay, n, atOnce.accepted.Load(), failed, firstErr, wrong, early, moved, retries, ejections)
			if early < 1 || ejections < 1 {
				t.Errorf("the reset-at-once endpoint was never seen failing after connect (early resets %.0f, dial retries %.0f, ejections %.0f)", early, retries, ejections)
			}
			if wrong != 0 {
				t.Errorf("%d wrong answers", wrong)
			}
			if replay && (failed != 0 || moved != early) {
				t.Errorf("with replay: %d failed (first %v), moved %.0f of %.0f early resets; want all moved", failed, firstErr, moved, early)
			}
			if !replay && (failed == 0 || moved != 0) {
				t.Errorf("with --early-reset-replay=false: %d failed, moved %.0f; want the reset at the client, none moved", failed, moved)
			}
		}
	}
	run(t, "reset before taking any byte: moved", nil, moveCase(true))
	run(t, "reset before taking any byte, --early-reset-replay=false: reaches the client", []string{"--early-reset-replay=false"}, moveCase(false))
}
