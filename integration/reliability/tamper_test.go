package reliability

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
	"github.com/uproxy/uproxy/proxy"
)

// TestIPTablesTamperRepaired flushes KUBE-PORTALS-CONTAINER and deletes its
// PREROUTING jump in the node namespace (what a careless `iptables -F` or
// another agent does): the next periodic sync puts both back, the service
// answers again, and uproxy_iptables_repairs_total counts the repair.
func TestIPTablesTamperRepaired(t *testing.T) {
	w := newWorld(t, "rel-tamper", 3*time.Minute)
	e := w.deployEcho("echo", 2)
	u := w.b.StartUproxy(t, bed.UproxyOptions{SyncPeriod: syncPeriod})
	w.waitServed(e)
	// The counter has a family label and appears at the first repair.
	repairs0, _ := metric(w.metrics(), "uproxy_iptables_repairs_total")
	node := w.b.Node
	execs := traceExecs(t, u.Proc.Pid())

	if _, err := node.Output(w.ctx, "iptables", "-w", "-t", "nat", "-F", "KUBE-PORTALS-CONTAINER"); err != nil {
		t.Fatal(err)
	}
	out, err := node.Output(w.ctx, "iptables", "-w", "-t", "nat", "-L", "PREROUTING", "-n", "--line-numbers")
	if err != nil {
		t.Fatal(err)
	}
	num := ""
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] == "KUBE-PORTALS-CONTAINER" {
			num = f[0]
		}
	}
	if num == "" {
		t.Fatalf("no PREROUTING jump to KUBE-PORTALS-CONTAINER:\n%s", out)
	}
	if _, err := node.Output(w.ctx, "iptables", "-w", "-t", "nat", "-D", "PREROUTING", num); err != nil {
		t.Fatal(err)
	}
	tamperedAt := time.Now()
	broken := !w.client.Curl(w.ctx, e.url(), 500*time.Millisecond).OK()

	var repairedAfter time.Duration
	ctx, cancel := context.WithTimeout(w.ctx, 10*syncPeriod)
	defer cancel()
	if err := bed.Poll(ctx, 100*time.Millisecond, func() (bool, error) {
		rules, err := w.b.NATRules(w.ctx)
		if err != nil {
			return false, nil
		}
		if strings.Contains(rules, "-j KUBE-PORTALS-CONTAINER") && strings.Contains(rules, "-A KUBE-PORTALS-CONTAINER -d "+e.ip+"/32") {
			repairedAfter = time.Since(tamperedAt)
			return true, nil
		}
		return false, nil
	}); err != nil {
		t.Fatalf("rules not repaired within %v: %v", 10*syncPeriod, err)
	}
	ctxOK := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: e.url(), Workers: 2, Requests: 20}).Wait()
	repairs1, _ := metric(w.metrics(), "uproxy_iptables_repairs_total")
	repairs := repairs1 - repairs0
	progs := execs()
	summary("iptables-tamper", "flushed KUBE-PORTALS-CONTAINER + deleted PREROUTING jump: service broken=%v, repaired after %v (sync period %v), repairs_total +%.0f, after: %v; programs uproxy ran meanwhile: %v",
		broken, repairedAfter.Round(time.Millisecond), syncPeriod, repairs, ctxOK, progs)
	for _, p := range progs {
		if !strings.HasPrefix(p, "iptables") && !strings.HasPrefix(p, "ip6tables") {
			t.Errorf("uproxy ran %q (want only iptables tools, from argument vectors)", p)
		}
	}
	if repairs < 1 {
		t.Errorf("uproxy_iptables_repairs_total did not count the repair")
	}
	if ctxOK.Failures != 0 {
		t.Errorf("after the repair: %v", ctxOK)
	}
}

// readyEndpoints counts a port's endpoints in the ready state.
func readyEndpoints(ps proxy.PortStatus) int {
	n := 0
	for _, ep := range ps.Endpoints {
		if ep.Ready {
			n++
		}
	}
	return n
}

// execveRE matches strace's execve lines: the program path and argv[0].
var execveRE = regexp.MustCompile(`execve\("([^"]+)", \["([^"]*)"`)

// traceExecs attaches strace to pid (following its children) and returns a
// function that detaches and lists the programs started meanwhile as
// "basename(path) argv0" entries. Without strace it logs and lists nothing
// (TestNoShellRunsIPTables still checks the sources).
func traceExecs(t *testing.T, pid int) func() []string {
	t.Helper()
	if _, err := exec.LookPath("strace"); err != nil {
		t.Logf("strace not installed: exec tracing skipped")
		return func() []string { return nil }
	}
	out := filepath.Join(t.TempDir(), "execve.txt")
	cmd := exec.Command("strace", "-f", "-qq", "-e", "trace=execve", "-o", out, "-p", strconv.Itoa(pid))
	if err := cmd.Start(); err != nil {
		t.Fatalf("strace: %v", err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = cmd.Process.Signal(os.Interrupt) // detaches
			_ = cmd.Wait()
		}
	}
	t.Cleanup(stop)
	time.Sleep(500 * time.Millisecond) // attached to every thread
	return func() []string {
		stop()
		b, _ := os.ReadFile(out)
		var progs []string
		for _, m := range execveRE.FindAllStringSubmatch(string(b), -1) {
			progs = append(progs, filepath.Base(m[1])+" "+m[2])
		}
		return progs
	}
}
