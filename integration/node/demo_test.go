package node

import (
	"sort"
	"testing"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
)

// TestDemo is `make demo`: uproxy deployed as the README says (instead of
// kube-proxy) on the kubelet node, the seed's proddetail with 3 replicas, a
// client pod's visible `while sleep 1; do curl
// proddetail.workshop:3000/catalogdetail; done`, `kubectl get pods -o wide`,
// `kubectl describe service`, a scale 3 -> 1 and back, then the per-pod
// counts and the failure count (which must be 0). The node and everything on
// it are removed when the test binary ends. In make test it is the seed's
// scale scenario on the kubelet node.
func TestDemo(t *testing.T) {
	w := newWorld(t, "workshop", 15*time.Minute)
	w.ensureUproxy()
	say("demo: uproxy pod %s", w.uproxyPod())
	c := w.seed("prodcatalog", 3)
	say("demo: kubectl get pods -o wide -n workshop\n%s", w.kubectl("get", "pods", "-o", "wide", "-n", w.ns))
	say("demo: kubectl describe service proddetail -n workshop\n%s", w.kubectl("describe", "service", "proddetail", "-n", w.ns))
	say("demo: in pod prodcatalog: while sleep 1; do curl %s; done", seedURL)
	l := bed.StartLoop(w.ctx, c, bed.LoopOptions{URL: seedURL, Workers: 1, Interval: time.Second, MaxTime: 5 * time.Second,
		OnSample: func(s bed.Sample) {
			if s.OK {
				say("curl -> Hello! I am Pod: %s (%v)", s.Pod, s.Dur.Round(time.Millisecond))
			} else {
				say("curl -> FAILED %s", s.Detail)
			}
		}})
	w.sleep(5 * time.Second)
	say("demo: kubectl scale deployment proddetail --replicas=1 -n workshop")
	w.kubectl("scale", "deployment", "proddetail", "--replicas=1", "-n", w.ns)
	w.waitRollout(w.ns, "deployment/proddetail", 2*time.Minute)
	w.sleep(8 * time.Second)
	say("demo: kubectl get pods -o wide -n workshop\n%s", w.kubectl("get", "pods", "-o", "wide", "-n", w.ns))
	say("demo: kubectl scale deployment proddetail --replicas=3 -n workshop")
	w.kubectl("scale", "deployment", "proddetail", "--replicas=3", "-n", w.ns)
	w.waitRollout(w.ns, "deployment/proddetail", 2*time.Minute)
	w.sleep(8 * time.Second)
	s := l.Stop()
	pods := make([]string, 0, len(s.PerPod))
	for p := range s.PerPod {
		pods = append(pods, p)
	}
	sort.Strings(pods)
	for _, p := range pods {
		say("demo: %-40s %d requests", p, s.PerPod[p])
	}
	say("demo: %d requests, %d failed", s.Requests, s.Failures)
	summary("demo", "%v", s)
	if s.Failures != 0 {
		t.Errorf("%d requests failed:\n%s", s.Failures, s.FailureDetail())
	}
}
