package reliability

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/uproxy/uproxy/integration/bed"
)

// TestOverlapNewService creates a Service while two instances overlap:
// only the newest writes portal rules (the older one yields when the newer
// starts), so the rules never flip between the two instances' proxy ports,
// and when the old one exits the new Service's rule points at a port the
// new instance listens on: a curl loop sees no failure. With the ownership
// handover off, the two instances rewrite each other's rule (each sees the
// other's as tampering) at every check.
func TestOverlapNewService(t *testing.T) {
	for name, off := range map[string]bool{"newest writes": false, "both write": true} {
		t.Run(name, func(t *testing.T) { testOverlapNewService(t, off) })
	}
}

func testOverlapNewService(t *testing.T, off bool) {
	w := newWorld(t, "rel-overlap-svc", 4*time.Minute)
	e := w.deployEcho("echo", 3)
	var env []string
	if off {
		env = []string{"UPROXY_TEST_DISABLE=rule-owner"}
	}
	// A 2 s sync period: each instance checks the installed rules every
	// second, so a fight shows within the overlap.
	args := []string{"--iptables-sync-period", "2s"}
	u1, log1 := startUproxyProc(t, w, true, env, args...)
	w.waitServed(e)
	st, err := w.portStatus(e, "http")
	if err != nil {
		t.Fatal(err)
	}
	u2, log2 := startUproxyProc(t, w, false, env, args...)
	waitBothListen(t, w, st.ProxyPort, u1, u2)

	late := bed.ServiceFor("echo", bed.TCPPort("http", portHTTP, 8080))
	late.Name = "late"
	created, err := w.b.Client.CoreV1().Services(w.ns).Create(w.ctx, late, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://%s:%d/", created.Spec.ClusterIP, portHTTP)
	ctx, cancel := context.WithTimeout(w.ctx, 30*time.Second)
	defer cancel()
	if _, err := w.client.WaitHello(ctx, url); err != nil {
		t.Fatal(err)
	}
	w.sleep(4 * time.Second) // both instances run their checks
	loop := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: url, Workers: 4, MaxTime: 10 * time.Second})
	w.sleep(time.Second)
	exitErr, killed := u1.Stop(10 * time.Second)
	w.sleep(3 * time.Second)
	s := loop.Stop()

	rules, _ := w.b.NATRules(w.ctx)
	rulePort := regexp.MustCompile(`"` + regexp.QuoteMeta(w.ns) + `/late:http".*--to-ports (\d+)`).FindStringSubmatch(rules)
	holder := ""
	if len(rulePort) == 2 {
		holder = listeners(w, mustPort(t, rulePort[1]))
	}
	repairs := countIn(t, log1, "restored portal rules") + countIn(t, log2, "restored portal rules")
	summary("overlap-service", "%s: late service's rule → port %v held by [%s]; repairs logged by the two instances %d; curl loop across the old one's exit %v",
		t.Name(), rulePort, holder, repairs, s)
	if exitErr != nil || killed {
		t.Errorf("first uproxy on SIGTERM: err=%v killed=%v", exitErr, killed)
	}
	if off {
		if repairs == 0 {
			t.Errorf("no rule fight logged with the ownership handover off: the test no longer shows what it does")
		}
		return
	}
	if repairs != 0 {
		t.Errorf("the instances rewrote each other's rules %d times", repairs)
	}
	if !strings.Contains(holder, fmt.Sprintf("pid=%d,", u2.Pid())) {
		t.Errorf("the late service's rule (%v) does not point at a port of the remaining instance: %q", rulePort, holder)
	}
	if s.Failures != 0 {
		t.Errorf("%d requests to the late service failed:\n%s", s.Failures, s.FailureDetail())
	}
}

func mustPort(t *testing.T, s string) uint16 {
	t.Helper()
	var p uint16
	if _, err := fmt.Sscan(s, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// countIn counts the lines of a file that contain sub.
func countIn(t *testing.T, path, sub string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), sub)
}
