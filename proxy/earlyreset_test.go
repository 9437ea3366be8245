package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/uproxy/uproxy/svc"
)

// resetServer is an endpoint that resets every connection (SO_LINGER 0):
// "at once" right after accept, before the client's bytes arrive (a
// connect-level failure), or "after reading" once it has read (and counted)
// the request, like a server that did the work and then failed or closes
// without answering by design. "close after reading" closes with a FIN.
type resetServer struct {
	ln       *net.TCPListener
	release  chan struct{} // closed by the test: connections go on
	accepted atomic.Int64
	requests atomic.Int64 // requests read (work done)
	wg       sync.WaitGroup
}

func newResetServer(t testing.TB, mode string) *resetServer {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &resetServer{ln: ln, release: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				<-s.release
				if mode != "at once" {
					buf := make([]byte, 100)
					_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
					if n, _ := c.Read(buf); n > 0 {
						s.requests.Add(1)
					}
				}
				if mode != "close after reading" {
					_ = c.SetLinger(0)
				}
				_ = c.Close()
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

func (s *resetServer) addr() string { return s.ln.Addr().String() }

// TestEarlyResetReplayRule: a connection is moved to another endpoint (and
// the failed one ejected) only when the endpoint failed before
// any of the client's bytes was sent to it; an endpoint that read the
// request and then reset or closed keeps its place and the client sees
// what it did, so the request runs once.
func TestEarlyResetReplayRule(t *testing.T) {
	tests := map[string]struct {
		mode     string // resetServer mode of the first endpoint
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
			mode: "at once", wait: true, answer: "good:x", ejected: true, replays: 1, goodHits: 1,
		},
		"connect-time reset, --early-reset-replay=false: client sees it, still ejected": {
			mode: "at once", wait: true, noReplay: true, reset: true, ejected: true,
		},
		"reset after reading the request: not replayed, not ejected": {
			mode: "after reading", reset: true, badRequests: 1,
		},
		"close after reading the request (no answer by design): not replayed, not ejected": {
			mode: "close after reading", badRequests: 1,
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			// A 1s window: the test's steps take a few ms, far more on a
			// loaded machine; the rule under test is not the window.
			p, _ := newProxier(t, Config{EjectBase: time.Minute, EarlyResetWindow: time.Second, NoEarlyResetReplay: tt.noReplay})
			n := pn("early", "")
			mustSync(t, p, tcpPort(n, 80))
			bad, good := newResetServer(t, tt.mode), newBackend(t, "good", "who")
			// Only the bad endpoint at first, so the first pick is it.
			p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(bad.addr())})
			c, err := net.Dial("tcp", addrOf(p, n))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			eventually(t, "dialed the bad endpoint", func() bool { return bad.accepted.Load() == 1 })
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
