package reliability

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
)

// TestRestartUnderLoad sends SIGTERM to uproxy under a 4-worker curl loop
// and starts it again: the old one exits 0 after draining, and requests fail
// only between the signal and the new instance being ready (portal rules
// stay; the new instance takes its proxy ports back from them). Zero
// failures is not expected: between the old listener closing and the new one
// opening, connections to the proxy port are refused.
func TestRestartUnderLoad(t *testing.T) {
	w := newWorld(t, "rel-restart", 4*time.Minute)
	e := w.deployEcho("echo", 2)
	u1 := w.b.StartUproxy(t, bed.UproxyOptions{})
	w.waitServed(e)
	before, err := w.portStatus(e, "http")
	if err != nil {
		t.Fatal(err)
	}

	loop := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: e.url(), Workers: 4, MaxTime: 5 * time.Second})
	w.sleep(2 * time.Second)
	termAt := time.Now()
	exitErr, killed := u1.Proc.Stop(10 * time.Second)
	exitedAt := time.Now()
	u2 := w.b.StartUproxy(t, bed.UproxyOptions{})
	readyAt := time.Now()
	w.sleep(3 * time.Second)
	s := loop.Stop()
	after, err := w.portStatus(e, "http")
	if err != nil {
		t.Fatal(err)
	}

	var first, last time.Time
	outside := 0
	for _, x := range s.Samples {
		if x.OK {
			continue
		}
		if first.IsZero() {
			first = x.Start
		}
		if end := x.Start.Add(x.Dur); end.After(last) {
			last = end
		}
		// curl's Start is its exec; it connects some ms later, so a
		// request is in the window when its run overlaps it.
		if x.Start.Add(x.Dur).Before(termAt) || x.Start.After(readyAt) {
			outside++
		}
	}
	gap := time.Duration(0)
	if !first.IsZero() {
		gap = last.Sub(first)
	}
	summary("restart", "TERM→exit %v, TERM→new instance healthy %v; loop %v; failures=%d (outside the restart window: %d), failure span %v; proxy port %d → %d",
		exitedAt.Sub(termAt).Round(time.Millisecond), readyAt.Sub(termAt).Round(time.Millisecond), s, s.Failures, outside,
		gap.Round(time.Millisecond), before.ProxyPort, after.ProxyPort)
	if exitErr != nil || killed {
		t.Errorf("first uproxy on SIGTERM: err=%v killed=%v", exitErr, killed)
	}
	if outside != 0 {
		t.Errorf("%d requests failed outside the restart window [%s, %s]:\n%s", outside,
			termAt.Format("15:04:05.000"), readyAt.Format("15:04:05.000"), s.FailureDetail())
	}
	if before.ProxyPort != after.ProxyPort {
		t.Errorf("proxy port changed across the restart: %d → %d", before.ProxyPort, after.ProxyPort)
	}
	_ = u2
}

// TestOverlappingInstances runs a second uproxy next to the first (a
// DaemonSet surge): it takes the same proxy ports (read back from the rules)
// with SO_REUSEPORT, then the first gets SIGTERM. A curl loop across it all
// sees zero failures.
func TestOverlappingInstances(t *testing.T) {
	w := newWorld(t, "rel-overlap", 4*time.Minute)
	e := w.deployEcho("echo", 2)
	u1 := w.b.StartUproxy(t, bed.UproxyOptions{})
	w.waitServed(e)
	st, err := w.portStatus(e, "http")
	if err != nil {
		t.Fatal(err)
	}
	port := st.ProxyPort

	loop := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: e.url(), Workers: 4, MaxTime: 5 * time.Second})
	w.sleep(time.Second)
	// NoWait: /healthz is shared with the first instance, so it proves
	// nothing about the second; wait for its listener on the same port.
	u2 := w.b.StartUproxy(t, bed.UproxyOptions{NoWait: true})
	startedAt := time.Now()
	var holders string
	ctx, cancel := context.WithTimeout(w.ctx, 30*time.Second)
	defer cancel()
	if err := bed.Poll(ctx, 100*time.Millisecond, func() (bool, error) {
		if done, werr := u2.Proc.Exited(); done {
			return false, fmt.Errorf("second uproxy exited: %v\n%s", werr, u2.Proc.Tail(20))
		}
		holders = listeners(w, port)
		return strings.Contains(holders, fmt.Sprintf("pid=%d,", u1.Proc.Pid())) &&
			strings.Contains(holders, fmt.Sprintf("pid=%d,", u2.Proc.Pid())), nil
	}); err != nil {
		t.Fatalf("second uproxy never listened on proxy port %d next to the first (listeners: %s): %v", port, holders, err)
	}
	bothAt := time.Now()
	w.sleep(2 * time.Second) // both serve
	termAt := time.Now()
	exitErr, killed := u1.Proc.Stop(10 * time.Second)
	w.sleep(3 * time.Second) // the second alone
	s := loop.Stop()
	alone := listeners(w, port)
	summary("overlap", "second instance listening on proxy port %d after %v; first TERM→exit %v; loop %v; after: %s",
		port, bothAt.Sub(startedAt).Round(time.Millisecond), time.Since(termAt).Round(time.Millisecond)-3*time.Second, s, alone)
	if exitErr != nil || killed {
		t.Errorf("first uproxy on SIGTERM: err=%v killed=%v", exitErr, killed)
	}
	if s.Failures != 0 {
		t.Errorf("%d requests failed across the overlap:\n%s", s.Failures, s.FailureDetail())
	}
	if !strings.Contains(alone, fmt.Sprintf("pid=%d,", u2.Proc.Pid())) {
		t.Errorf("the second uproxy does not hold proxy port %d after the first left: %s", port, alone)
	}
}

// listeners returns `ss -Htlnp sport = :port` in the node namespace.
func listeners(w *world, port uint16) string {
	ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
	defer cancel()
	out, _ := w.b.Node.Output(ctx, "ss", "-Htlnp", fmt.Sprintf("sport = :%d", port))
	return strings.TrimSpace(out)
}
