package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/uproxy/uproxy/svc"
)

// TestEarlyResetReplayRule: a connection is moved to another endpoint (and
// the failed one ejected) only when the endpoint failed before
// any of the client's bytes was sent to it; an endpoint that read the
// request and then reset or closed keeps its place and the client sees
// what it did, so the request runs once.
func TestEarlyResetReplayRule(t *testing.T) {
	tests := map[string]struct {
		script   string // scriptServer script of the first endpoint
		wait     bool   // client waits for the endpoint's reset before sending (connect-time reset)
		noReplay bool   // Config.NoEarlyResetReplay
		// want
		answer      string // "" : the client gets no answer (reset or EOF)
		reset       bool   // the client's read ends with ECONNRESET
		ejected     bool
		replays     uint64
		goodHits    int64
		badRequests int64
	}{
		"connect-time reset: moved, replayed, ejected": {
			script: "Z", wait: true, answer: "good:x", ejected: true, replays: 1, goodHits: 1,
		},
		"connect-time reset, --early-reset-replay=false: client sees it, still ejected": {
			script: "Z", wait: true, noReplay: true, reset: true, ejected: true,
		},
		"reset after reading the request: not replayed, not ejected": {
			script: "R", reset: true, badRequests: 1,
		},
		"close after reading the request (no answer by design): not replayed, not ejected": {
			script: "C", badRequests: 1,
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			// A 1s window: the test's steps take a few ms, far more on a
			// loaded machine; the rule under test is not the window.
			p, _ := newProxier(t, Config{EjectBase: time.Minute, EarlyResetWindow: time.Second, NoEarlyResetReplay: tt.noReplay})
			n := pn("early", "")
			mustSync(t, p, tcpPort(n, 80))
			bad, good := newScriptServer(t, tt.script, true), newBackend(t, "good", "who")
			// Only the bad endpoint at first, so the first pick is it.
			p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(bad.addr())})
			c, err := net.Dial("tcp", addrOf(p, n))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// Connected on both sides: a reset before uproxy's connect
			// returned would be a failed dial, retried on another
			// endpoint whatever the replay setting.
			eventually(t, "dialed the bad endpoint", func() bool {
				return bad.accepted.Load() == 1 && p.Snapshot()[0].Endpoints[0].ActiveConnections == 1
			})
			// The good one is there for a move; the balancer set is
			// swapped, the connection keeps its dialed endpoint.
			p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(bad.addr(), good.addr())})
			close(bad.release)
			if tt.wait {
				time.Sleep(30 * time.Millisecond) // the endpoint's reset arrives first
			}
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			var got []byte
			_, err = c.Write([]byte("x"))
			if err == nil {
				_ = c.(*net.TCPConn).CloseWrite()
				got, err = io.ReadAll(c)
			}
			if string(got) != tt.answer || errors.Is(err, syscall.ECONNRESET) != tt.reset {
				t.Fatalf("client got %q, %v; want %q, reset %v", got, err, tt.answer, tt.reset)
			}
			st := p.Snapshot()[0]
			var badState string
			for _, e := range st.Endpoints {
				if e.Addr == bad.addr() {
					badState = e.State
				}
			}
			if (badState == "ejected") != tt.ejected || st.Replays != tt.replays ||
				good.hits.Load() != tt.goodHits || bad.requests.Load() != tt.badRequests {
				t.Fatalf("bad endpoint %q (ejected want %v), replays %d (want %d), good hits %d (want %d), bad requests %d (want %d)",
					badState, tt.ejected, st.Replays, tt.replays, good.hits.Load(), tt.goodHits, bad.requests.Load(), tt.badRequests)
			}
		})
	}
}

// scriptServer is an endpoint that plays one action per accepted
// connection, in order (the last one repeats): 'Z' resets (SO_LINGER 0) at
// once, before the client's bytes arrive (a connect-level failure); 'R'
// reads (and counts) the request and resets, like a server that did the
// work and then failed; 'C' reads it and closes (FIN) without an answer, as
// some servers do by design; 'A' reads it and answers "bad:<request>".
// A gated server holds every connection until the test closes release.
type scriptServer struct {
	ln       *net.TCPListener
	release  chan struct{}
	accepted atomic.Int64
	requests atomic.Int64 // requests read (work done)
	wg       sync.WaitGroup
}

func newScriptServer(t testing.TB, script string, gated bool) *scriptServer {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptServer{ln: ln, release: make(chan struct{})}
	if !gated {
		close(s.release)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			i := int(s.accepted.Add(1)) - 1
			act := script[min(i, len(script)-1)]
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				<-s.release
				if act == 'Z' {
					_ = c.SetLinger(0)
					return
				}
				buf := make([]byte, 100)
				_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
				n, _ := c.Read(buf)
				if n == 0 {
					return
				}
				s.requests.Add(1)
				switch act {
				case 'R':
					_ = c.SetLinger(0)
				case 'A':
					_, _ = c.Write(append([]byte("bad:"), buf[:n]...))
				}
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		select {
		case <-s.release:
		default:
			close(s.release)
		}
		s.wg.Wait()
	})
	return s
}

func (s *scriptServer) addr() string { return s.ln.Addr().String() }

// TestEjectAfterResetsInARow: an endpoint that resets Config.EjectAfterResets
// connections in a row after reading the request is ejected (none of them
// replayed); an answer in between starts the count over; closes without an
// answer are not counted; negative turns the rule off.
func TestEjectAfterResetsInARow(t *testing.T) {
	tests := map[string]struct {
		script  string
		limit   int
		ejected bool
		// requests the bad endpoint read and the ones that failed, of 12
		// sent one after another to it and a good endpoint
		badRequests, failed int64
	}{
		"3 resets in a row: ejected after the third": {script: "R", ejected: true, badRequests: 3, failed: 3},
		"2 in a row with a limit of 2":               {script: "R", limit: 2, ejected: true, badRequests: 2, failed: 2},
		"an answer between every 2 resets: stays":    {script: "RRARRA", badRequests: 6, failed: 4},
		"closes without an answer: not counted":      {script: "C", badRequests: 6, failed: 6},
		"rule off (negative limit)":                  {script: "R", limit: -1, badRequests: 6, failed: 6},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			// Probes only after a minute: the script sees requests only.
			p, _ := newProxier(t, Config{EjectBase: time.Minute, EjectAfterResets: tt.limit})
			n := pn("resets", "")
			mustSync(t, p, tcpPort(n, 80))
			bad, good := newScriptServer(t, tt.script, false), newBackend(t, "good", "who")
			p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(bad.addr(), good.addr())})
			var failed int64
			for i := range 12 {
				got, err := roundTrip(addrOf(p, n), fmt.Sprintf("r%d", i))
				if err != nil || got == "" {
					failed++
				}
			}
			st := p.Snapshot()[0]
			ejected := false
			for _, e := range st.Endpoints {
				if e.Addr == bad.addr() {
					ejected = e.State == "ejected"
				}
			}
			if ejected != tt.ejected || bad.requests.Load() != tt.badRequests || failed != tt.failed || st.Replays != 0 {
				t.Fatalf("ejected %v (want %v), bad endpoint read %d requests (want %d), %d failed (want %d), replays %d (want 0)",
					ejected, tt.ejected, bad.requests.Load(), tt.badRequests, failed, tt.failed, st.Replays)
			}
			if want := uint64(tt.failed); tt.script != "C" && st.ResetsBeforeReply != want {
				t.Fatalf("resetsBeforeReply %d, want %d", st.ResetsBeforeReply, want)
			}
		})
	}
}

// TestProbeFailsOnAcceptAndReset: the probe that would readmit an ejected
// endpoint fails when the endpoint resets the probe's connection within
// EarlyResetWindow, so an endpoint that accepts and resets everything stays
// out; one that accepts and stays silent is readmitted.
func TestProbeFailsOnAcceptAndReset(t *testing.T) {
	tests := map[string]struct {
		probes string // the script after the first connection
		want   string // state after the probes had time
	}{
		"accepts and resets: stays ejected": {probes: "Z", want: "ejected"},
		"accepts, silent: readmitted":       {probes: "A", want: "ready"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			p, _ := newProxier(t, Config{EjectBase: 100 * time.Millisecond, EjectMax: 100 * time.Millisecond})
			n := pn("probe", "")
			mustSync(t, p, tcpPort(n, 80))
			// Three resets after reading eject it; then the probes.
			bad := newScriptServer(t, "RRR"+tt.probes, false)
			p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(bad.addr())})
			for i := range 3 {
				_, _ = roundTrip(addrOf(p, n), fmt.Sprintf("r%d", i))
			}
			state := func() string { return p.Snapshot()[0].Endpoints[0].State }
			eventually(t, "ejected", func() bool { return state() == "ejected" || bad.accepted.Load() > 3 })
			// At 100 ms per ejection, 600 ms hold several probes.
			eventually(t, "probes", func() bool { return bad.accepted.Load() >= 5 || state() == "ready" })
			time.Sleep(300 * time.Millisecond)
			if got := state(); got != tt.want {
				t.Fatalf("after %d probe connections: %s, want %s", bad.accepted.Load()-3, got, tt.want)
			}
		})
	}
}
