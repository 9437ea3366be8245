package reliability

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
)

// Bounds of issue 14 for a sequential restart under 4 curl loops.
const (
	restartSlow    = 1500 * time.Millisecond // a request slower than this is "slow"
	restartMaxSlow = 4                       // at most this many slow requests
)

// restartCase is one way of replacing uproxy under the curl loops.
type restartCase struct {
	kill  bool          // SIGKILL the old instance instead of SIGTERM
	delay time.Duration // from the old instance's exit to the new one's start
	// disable is UPROXY_TEST_DISABLE for both instances: the handover parts
	// switched off, to show what they are for ("" = all on).
	disable string
	// wantFailures: with the handover off, requests must fail (else the
	// test no longer shows what the mechanism does).
	wantFailures bool
}

// TestRestartUnderLoad stops uproxy (SIGTERM, or SIGKILL) under 4 curl loops
// (a new connection per request) against a ClusterIP with 3 endpoints and
// starts a new instance up to 2 s later: no request fails and at most 4 take
// longer than 1.5 s (one per loop: a SYN that arrived while no instance
// listened is dropped by UPROXY-PORT-WAIT and retransmitted by the client,
// instead of being reset). The old instance serves what is in its accept
// queue when it stops (SYN filter, then close) and logs that it cut no
// connection. A SIGKILL cuts the requests it was relaying between the signal
// and its exit; only those may fail. With the handover off (UPROXY-PORT-WAIT empty,
// listeners closed at once) requests fail.
func TestRestartUnderLoad(t *testing.T) {
	cases := map[string]restartCase{
		"TERM, new instance 2s later":          {delay: 2 * time.Second},
		"KILL, new instance 2s later":          {kill: true, delay: 2 * time.Second},
		"TERM, new instance 1s later, no wait": {delay: time.Second, disable: "port-wait,graceful-close", wantFailures: true},
		"KILL, new instance at once, no wait":  {kill: true, disable: "port-wait,graceful-close", wantFailures: true},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) { testRestart(t, c) })
	}
}

func testRestart(t *testing.T, c restartCase) {
	w := newWorld(t, "rel-restart", 4*time.Minute)
	e := w.deployEcho("echo", 3)
	var env []string
	if c.disable != "" {
		env = []string{"UPROXY_TEST_DISABLE=" + c.disable}
	}
	u1 := startRestartUproxy(t, w, env)
	w.waitServed(e)
	before, err := w.portStatus(e, "http")
	if err != nil {
		t.Fatal(err)
	}

	// curl without --max-time in the issue; 10 s here covers a SYN's
	// retransmissions at 1 s and 3 s.
	loop := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: e.url(), Workers: 4, MaxTime: 10 * time.Second})
	w.sleep(3 * time.Second)
	stopAt := time.Now()
	var exitErr error
	if c.kill {
		_ = u1.Signal(syscall.SIGKILL)
		<-waitExit(u1)
	} else {
		var killed bool
		if exitErr, killed = u1.Stop(10 * time.Second); killed && exitErr == nil {
			exitErr = errors.New("had to be killed")
		}
	}
	exitedAt := time.Now()
	w.sleep(c.delay)
	u2 := startRestartUproxy(t, w, env)
	readyAt := time.Now()
	w.sleep(4 * time.Second)
	s := loop.Stop()
	after, err := w.portStatus(e, "http")
	if err != nil {
		t.Fatal(err)
	}

	slow, resets := 0, 0
	for _, x := range s.Samples {
		if x.Dur > restartSlow {
			slow++
		}
		// curl 7: connection refused; 56: reset after connecting; 52:
		// closed without an answer.
		if !x.OK && (strings.HasPrefix(x.Detail, "exit=7 ") || strings.HasPrefix(x.Detail, "exit=56 ") || strings.HasPrefix(x.Detail, "exit=52 ")) {
			resets++
		}
	}
	inFlight := 0 // requests running between the stop signal and the exit
	for _, x := range s.Samples {
		if !x.Start.After(exitedAt) && !x.Start.Add(x.Dur).Before(stopAt) {
			inFlight++
		}
	}
	summary("restart", "%s: stop→exit %v, exit→new instance healthy %v; loop %v; failed=%d (refused/reset %d; requests in flight from the signal to the exit %d) slow(>%v)=%d max=%v; proxy port %d → %d",
		t.Name(), exitedAt.Sub(stopAt).Round(time.Millisecond), readyAt.Sub(exitedAt).Round(time.Millisecond), s, s.Failures, resets,
		inFlight, restartSlow, slow, s.Max.Round(time.Millisecond), before.ProxyPort, after.ProxyPort)
	t.Logf("requests slower than %v:\n%s", restartSlow, slowSince(s, stopAt, restartSlow))
	if !c.kill && exitErr != nil {
		t.Errorf("first uproxy on SIGTERM: %v", exitErr)
	}
	if c.wantFailures {
		if s.Failures == 0 {
			t.Errorf("no request failed with %s off: the test no longer shows what the handover does", c.disable)
		}
		_ = u2
		return
	}
	// A SIGKILL cuts what the killed process was relaying: a request in
	// flight between the signal and the process's exit (the kernel takes
	// 5-40 ms to tear it down, and accepts meanwhile) may fail; no
	// userspace proxy can save it. Any other failure is a handover failure.
	failed := 0
	for _, x := range s.Samples {
		if !x.OK && !(c.kill && !x.Start.After(exitedAt) && !x.Start.Add(x.Dur).Before(stopAt)) {
			failed++
		}
	}
	if failed != 0 {
		t.Errorf("%d requests failed across the restart (stop %s, new instance healthy %s):\n%s", failed,
			stopAt.Format("15:04:05.000"), readyAt.Format("15:04:05.000"), s.FailureDetail())
	}
	if !c.kill && !strings.Contains(u1.Tail(20), `"cut":0,`) {
		t.Errorf("the old instance did not log that it drained its connections and cut none:\n%s", u1.Tail(20))
	}
	if slow > restartMaxSlow {
		t.Errorf("%d requests slower than %v, want at most %d:\n%s", slow, restartSlow, restartMaxSlow, slowSince(s, stopAt, restartSlow))
	}
	if before.ProxyPort != after.ProxyPort {
		t.Errorf("proxy port changed across the restart: %d → %d", before.ProxyPort, after.ProxyPort)
	}
}

// startRestartUproxy starts uproxy with StartUproxy's command line (and env)
// and waits for /healthz; unlike StartUproxy it may be SIGKILLed. Cleanup
// stops it (SIGTERM, then SIGKILL) if it still runs.
func startRestartUproxy(t *testing.T, w *world, env []string, args ...string) *bed.Proc {
	p, _ := startUproxyProc(t, w, true, env, args...)
	return p
}

// startUproxyProc is startRestartUproxy that returns the log path too and
// waits for /healthz only when wait is set (a second instance shares it).
func startUproxyProc(t *testing.T, w *world, wait bool, env []string, args ...string) (*bed.Proc, string) {
	t.Helper()
	bin, _ := bed.UproxyBinary()
	argv := append([]string{bin}, w.b.UproxyArgs(bed.UproxyOptions{Args: args})...)
	logPath := filepath.Join(w.b.Dir, fmt.Sprintf("uproxy-%s-%d.log", strings.ReplaceAll(t.Name(), "/", "_"), time.Now().UnixNano()))
	p, err := bed.StartProc(w.b.Node, "uproxy", logPath, env, argv...)
	if err != nil {
		t.Fatalf("start uproxy: %v", err)
	}
	t.Cleanup(func() {
		_, _ = p.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("uproxy log tail (%s):\n%s", logPath, p.Tail(40))
		}
	})
	if !wait {
		return p, logPath
	}
	ctx, cancel := context.WithTimeout(w.ctx, 30*time.Second)
	defer cancel()
	if err := bed.Poll(ctx, 20*time.Millisecond, func() (bool, error) {
		if done, werr := p.Exited(); done {
			return false, fmt.Errorf("uproxy exited: %v", werr)
		}
		code, _, err := w.b.HTTPGet(ctx, "http://"+bed.HealthzAddr+"/healthz")
		return err == nil && code == http.StatusOK, nil
	}); err != nil {
		t.Fatalf("uproxy not healthy: %v\n%s", err, p.Tail(40))
	}
	return p, logPath
}

// waitExit returns a channel closed when p has exited.
func waitExit(p *bed.Proc) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if ok, _ := p.Exited(); ok {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return done
}

// listeners returns `ss -Htlnp sport = :port` in the node namespace.
func listeners(w *world, port uint16) string {
	ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
	defer cancel()
	out, _ := w.b.Node.Output(ctx, "ss", "-Htlnp", fmt.Sprintf("sport = :%d", port))
	return strings.TrimSpace(out)
}

// slowSince lists the requests slower than d, with their start relative to
// the stop signal, for reading a failure.
func slowSince(s bed.Summary, stopAt time.Time, d time.Duration) string {
	var b strings.Builder
	for _, x := range s.Samples {
		if x.Dur > d {
			fmt.Fprintf(&b, "  start %+.3fs after the stop signal, took %v, ok=%v %s\n", x.Start.Sub(stopAt).Seconds(), x.Dur.Round(time.Millisecond), x.OK, x.Detail)
		}
	}
	return b.String()
}
