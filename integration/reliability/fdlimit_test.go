package reliability

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
)

// fdLimit is the RLIMIT_NOFILE uproxy gets in TestFDExhaustion: a proxied
// TCP connection holds two fds, so about (fdLimit - fds at start) / 2
// connections fit.
const fdLimit = 400

// TestFDExhaustion lowers a running uproxy's fd limit to fdLimit (prlimit on
// the process) and floods the ClusterIP with connections that stay idle
// after one echo: uproxy does not exit, connections beyond the limit are
// reset at once (never left hanging in the backlog), the accept loop backs
// off instead of spinning, the held connections keep working, and service
// resumes by itself once the held connections close. Endpoint ejections are
// reported, not asserted: EMFILE on dial never ejects (proxy/dial.go), but a
// dial timing out under the flood's load may.
func TestFDExhaustion(t *testing.T) {
	w := newWorld(t, "rel-fd", 4*time.Minute)
	e := w.deployEcho("echo", 2)
	u := w.b.StartUproxy(t, bed.UproxyOptions{})
	w.waitServed(e)
	pid := u.Proc.Pid()
	start, err := readProc(pid)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("prlimit", "--pid", fmt.Sprint(pid), fmt.Sprintf("--nofile=%d:%d", fdLimit, fdLimit)).CombinedOutput(); err != nil {
		t.Fatalf("prlimit: %v: %s", err, out)
	}
	limits, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if !strings.Contains(string(limits), fmt.Sprintf("Max open files            %d                  %d", fdLimit, fdLimit)) {
		t.Fatalf("fd limit not applied:\n%s", limits)
	}

	// The flood: 16 dialers in parallel (so accept itself meets EMFILE, not
	// only the dial that follows it), 900 connections in all, each echoing
	// one line to prove it is relayed and then held idle.
	const flood, dialers = 900, 16
	var (
		mu          sync.Mutex // guards held, resets, hung, firstErr
		held        []net.Conn
		resets      int
		hung        int
		firstErrors []string
	)
	t.Cleanup(func() {
		for _, c := range held {
			_ = c.Close()
		}
	})
	var wg sync.WaitGroup
	next := make(chan struct{}, flood)
	for range flood {
		next <- struct{}{}
	}
	close(next)
	for range dialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				c, err := w.dialTCP(e.tcpAddr(), 3*time.Second)
				if err == nil {
					err = ping(c, 3*time.Second)
				}
				mu.Lock()
				switch {
				case err == nil:
					held = append(held, c)
				case errors.Is(err, os.ErrDeadlineExceeded):
					hung++
				default:
					resets++
				}
				if err != nil {
					if c != nil {
						_ = c.Close()
					}
					if len(firstErrors) < 3 {
						firstErrors = append(firstErrors, err.Error())
					}
				}
				stop := hung > 5
				mu.Unlock()
				if stop {
					return
				}
			}
		}()
	}
	wg.Wait()
	if hung > 0 {
		t.Errorf("%d connections beyond the fd limit hung (no answer in 3s) instead of being reset; first errors %q", hung, firstErrors)
	}
	if resets == 0 && hung == 0 {
		t.Fatalf("the fd limit was never reached: %d connections held, none reset", len(held))
	}
	if done, werr := u.Proc.Exited(); done {
		t.Fatalf("uproxy exited at the fd limit: %v\n%s", werr, u.Proc.Tail(30))
	}
	atLimit, _ := readProc(pid)

	// At the limit, keep knocking for 2s (each attempt is reset) and
	// measure uproxy's CPU: a spinning accept loop would burn a core.
	cpu0 := atLimit.CPU
	knockStart := time.Now()
	knockResets, knockHung := 0, 0
	for time.Since(knockStart) < 2*time.Second {
		c, err := w.dialTCP(e.tcpAddr(), 3*time.Second)
		if err == nil {
			err = ping(c, 3*time.Second)
			_ = c.Close()
		}
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			knockHung++
		case err != nil:
			knockResets++
		}
		w.sleep(20 * time.Millisecond)
	}
	after, _ := readProc(pid)
	cpuShare := float64(after.CPU-cpu0) / float64(time.Since(knockStart))
	if knockHung > 0 {
		t.Errorf("at the limit, %d new connections hung instead of being reset", knockHung)
	}
	if cpuShare > 0.5 {
		t.Errorf("uproxy used %.0f%% of a core while at the fd limit: the accept loop spins", 100*cpuShare)
	}

	// The held connections still work.
	broken := 0
	for _, c := range held {
		if err := ping(c, 3*time.Second); err != nil {
			broken++
		}
	}
	if broken > 0 {
		t.Errorf("%d of %d held connections broke while at the fd limit", broken, len(held))
	}
	nheld := len(held)
	for _, c := range held {
		_ = c.Close()
	}
	held = nil

	// Service resumes by itself.
	released := time.Now()
	ctx := w.ctx
	if err := bed.Poll(ctx, 50*time.Millisecond, func() (bool, error) {
		c, err := w.dialTCP(e.tcpAddr(), time.Second)
		if err != nil {
			return false, nil
		}
		defer c.Close()
		return ping(c, time.Second) == nil, nil
	}); err != nil {
		t.Fatalf("service did not resume after the held connections closed: %v", err)
	}
	resumed := time.Since(released)
	r := w.client.Curl(w.ctx, e.url(), 5*time.Second)
	if _, ok := bed.ParseHello(r.Out); !ok {
		t.Errorf("HTTP through the proxy after the flood: %s", r)
	}

	m := w.metrics()
	shed, _ := metric(m, "uproxy_connections_shed_total")
	acceptErrs, _ := metric(m, "uproxy_accept_errors_total")
	dialFailed, _ := metric(m, "uproxy_connection_failures_total", w.portLabel(e, "tcp"), `reason="dial_failed"`)
	ejections, _ := metric(m, "uproxy_endpoint_ejections_total", w.portLabel(e, "tcp"))
	summary("fd-exhaustion", "limit=%d fds-at-start=%d held=%d (fds at limit %d) reset=%d hung=%d knock: reset=%d hung=%d cpu=%.0f%% "+
		"shed_total=%.0f accept_errors=%.0f dial_failed_resets=%.0f ejections=%.0f resumed-after=%v held-broken=%d",
		fdLimit, start.FDs, nheld, atLimit.FDs, resets, hung, knockResets, knockHung, 100*cpuShare,
		shed, acceptErrs, dialFailed, ejections, resumed.Round(time.Millisecond), broken)
	if shed == 0 {
		t.Errorf("uproxy_connections_shed_total is 0: accept never met the limit or did not shed (accept errors %.0f)", acceptErrs)
	}
	if done, werr := u.Proc.Exited(); done {
		t.Fatalf("uproxy exited: %v", werr)
	}
}
