package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
)

// TestDemo is `make demo`: the seed's proddetail service with 3 replicas, a
// visible curl loop printing which pod answered, a scale 3 -> 1 and back,
// then the per-pod counts and the failure count (which must be 0).
//
// The Makefile's demo targets run scripts/setup.sh first and the test with
// UPROXY_REQUIRE_ROOT=1, so it never skips there: a missing tool, root, the
// control plane or bin/uproxy fails it (plain go test still skips, like the
// package's other tests).
func TestDemo(t *testing.T) {
	w := newWorld(t, "workshop", 5*time.Minute)
	svc := w.deploy(bed.EchoDeployment("proddetail", 3, httpPort("http", 3000)),
		bed.ServiceFor("proddetail", bed.TCPPort("http", 3000, 3000)))
	u := url(svc.Spec.ClusterIP, 3000, "/catalogdetail")
	w.waitHello(u)
	say := func(format string, args ...any) {
		fmt.Printf("%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
	}
	say("demo: service workshop/proddetail %s:3000, pods %v; curl loop (new connection per request):", svc.Spec.ClusterIP, w.readyPods("proddetail"))

	loop := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: u, Workers: 2, Interval: 100 * time.Millisecond,
		OnSample: func(s bed.Sample) {
			if s.OK {
				say("curl %s -> %s (%v)", u, s.Pod, s.Dur.Round(time.Millisecond))
			} else {
				say("curl %s -> FAILED %s", u, s.Detail)
			}
		}})
	w.sleep(3 * time.Second)
	say("demo: kubectl scale deployment proddetail --replicas=1 -n workshop")
	w.scale("proddetail", 1)
	say("demo: scaled in, pods %v", w.readyPods("proddetail"))
	w.sleep(3 * time.Second)
	say("demo: kubectl scale deployment proddetail --replicas=3 -n workshop")
	w.scale("proddetail", 3)
	say("demo: scaled out, pods %v", w.readyPods("proddetail"))
	w.sleep(3 * time.Second)
	s := loop.Stop()
	for _, p := range podSet(s.PerPod) {
		say("demo: %-40s %d requests", p, s.PerPod[p])
	}
	say("demo: %d requests, %d failed", s.Requests, s.Failures)
	summary("demo", "%v", s)
	if s.Failures != 0 {
		t.Errorf("%d requests failed:\n%s", s.Failures, s.FailureDetail())
	}
}
