package integration

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/uproxy/uproxy/integration/bed"
)

// TestSeed000ScaleUnderLoad replays the EKS workshop: proddetail in namespace
// workshop (port name http 3000) scaled 1 -> 3 -> 1 while 4 parallel curl
// loops, a new connection each, hit the ClusterIP: no request may fail but
// one per pod stopping at the scale-in (see checkCutByTermination), and
// after the scale-out all three pods answer.
func TestSeed000ScaleUnderLoad(t *testing.T) {
	w := newWorld(t, "workshop", 5*time.Minute)
	svc := w.deploy(bed.EchoDeployment("proddetail", 1, httpPort("http", 3000)),
		bed.ServiceFor("proddetail", bed.TCPPort("http", 3000, 3000)))
	u := url(svc.Spec.ClusterIP, 3000, "/catalogdetail")
	w.waitHello(u)

	loop := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: u, Workers: 4})
	w.sleep(2 * time.Second)
	t.Logf("%s scale 1 -> 3", time.Now().Format("15:04:05.000"))
	w.scale("proddetail", 3)
	scaledOut := time.Now()
	t.Logf("%s scaled out: %v", scaledOut.Format("15:04:05.000"), w.readyPods("proddetail"))
	three := w.readyPods("proddetail")
	w.sleep(4 * time.Second)
	afterOut := loop.Snapshot().Between(scaledOut, time.Now())
	t.Logf("%s scale 3 -> 1", time.Now().Format("15:04:05.000"))
	w.scale("proddetail", 1)
	t.Logf("%s scaled in: %v", time.Now().Format("15:04:05.000"), w.readyPods("proddetail"))
	w.sleep(2 * time.Second)
	s := loop.Stop()

	summary("seed000", "%v scaled-out-window=%v", s, afterOut)
	// The 2 pods that stop at the scale-in may each cut one request uproxy
	// had handed them (a Go server closes, unanswered, a request it read
	// after its Shutdown began: curl exit 52; seen once in CI at 7308a9b);
	// any other failure fails.
	checkCutByTermination(t, "seed000", s, len(three)-1)
	for _, p := range three {
		if afterOut.PerPod[p] == 0 {
			t.Errorf("pod %s got no request after the scale-out: %v", p, afterOut)
		}
	}
	if s.Requests < 50 {
		t.Errorf("only %d requests in the whole run", s.Requests)
	}
}

// TestSeed003RoundRobin replays the nginx echo: 3 replicas behind
// echo-service, 300 requests are spread 100/100/100 (within 5 %).
func TestSeed003RoundRobin(t *testing.T) {
	w := newWorld(t, "seed003", 3*time.Minute)
	d := bed.EchoDeployment("echo-app", 3, httpPort("", 80))
	svc := bed.ServiceFor("echo-app", bed.TCPPort("", 80, 80))
	svc.Name = "echo-service"
	created := w.deploy(d, svc)
	u := url(created.Spec.ClusterIP, 80, "/")
	w.waitHello(u)

	s := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: u, Workers: 3, Requests: 300}).Wait()
	summary("seed003", "%v", s)
	if s.Requests != 300 || s.Failures != 0 {
		t.Errorf("want 300 requests without failure, got %v\n%s", s, s.FailureDetail())
	}
	if len(s.PerPod) != 3 {
		t.Errorf("want 3 pods answering, got %v", s.PerPod)
	}
	for p, n := range s.PerPod {
		if !within(n, 100, 5) {
			t.Errorf("pod %s answered %d of 300, want 100 ± 5 %%", p, n)
		}
	}
}

// TestSeed002HeadlessAndHttpenv replays httpenv x5 behind a ClusterIP (all
// five reached) and a headless service, which must get no portal: creating it
// changes no nat rule, while its pods stay reachable directly.
func TestSeed002HeadlessAndHttpenv(t *testing.T) {
	w := newWorld(t, "seed002", 3*time.Minute)
	created := w.deploy(bed.EchoDeployment("httpenv", 5, httpPort("http", 8888)),
		bed.ServiceFor("httpenv", bed.TCPPort("", 8888, 8888)))
	u := url(created.Spec.ClusterIP, 8888, "/")
	w.waitHello(u)

	before := w.natRules()
	if !strings.Contains(before, created.Spec.ClusterIP+"/32") {
		t.Errorf("no nat rule names the httpenv ClusterIP %s:\n%s", created.Spec.ClusterIP, before)
	}
	headless := bed.ServiceFor("httpenv", bed.TCPPort("", 8888, 8888))
	headless.Name = "httpenv-headless"
	headless.Spec.ClusterIP = corev1.ClusterIPNone
	w.createService(headless, 5)
	addrs, err := w.b.WaitEndpoints(w.ctx, w.ns, "httpenv-headless", 5)
	if err != nil {
		t.Fatal(err)
	}
	w.sleep(time.Second) // several min-sync periods for a wrong portal to show
	after := w.natRules()
	if before != after {
		t.Errorf("creating a headless service changed the nat table:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if strings.Contains(after, "httpenv-headless") {
		t.Errorf("nat rules mention the headless service:\n%s", after)
	}
	direct := 0
	for _, a := range addrs {
		if r := w.client.Curl(w.ctx, url(a, 8888, "/"), 3*time.Second); r.OK() {
			direct++
		}
	}

	s := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: u, Workers: 2, Requests: 100}).Wait()
	summary("seed002", "%v headless: nat-unchanged=%v direct-pods=%d/%d", s, before == after, direct, len(addrs))
	if s.Failures != 0 || len(s.PerPod) != 5 {
		t.Errorf("want all 5 pods and no failure, got %v\n%s", s, s.FailureDetail())
	}
	if direct != 5 {
		t.Errorf("headless pods reachable directly: %d of 5", direct)
	}
}

// TestSeed004RedisTCP replays redis reached by telnet from a busybox pod: a
// raw TCP service answers PING with +PONG and echoes the rest of the exchange.
func TestSeed004RedisTCP(t *testing.T) {
	w := newWorld(t, "seed004", 3*time.Minute)
	created := w.deploy(bed.EchoDeployment("redis", 2, httpPort("redis", 6379)),
		bed.ServiceFor("redis", bed.TCPPort("", 6379, 6379)))
	ip := created.Spec.ClusterIP
	var r bed.Result
	if err := bed.Poll(w.ctx, 100*time.Millisecond, func() (bool, error) {
		r = w.client.NC(w.ctx, ip, 6379, "PING\r\n", 2*time.Second)
		return r.Out == "+PONG\r\n", nil
	}); err != nil {
		t.Fatalf("redis service never answered PING (last %s): %v", r, err)
	}
	const exchanges = 20
	ok := 0
	var bad []string
	for i := range exchanges {
		in := fmt.Sprintf("PING\r\nSET k%d v\r\nPING\r\n", i)
		want := fmt.Sprintf("+PONG\r\nSET k%d v\r\n+PONG\r\n", i)
		if r := w.client.NC(w.ctx, ip, 6379, in, 2*time.Second); r.Out == want {
			ok++
		} else {
			bad = append(bad, r.String())
		}
	}
	summary("seed004", "exchanges=%d ok=%d failed=%d", exchanges, ok, exchanges-ok)
	if ok != exchanges {
		t.Errorf("%d exchanges went wrong: %s", exchanges-ok, strings.Join(bad, "; "))
	}
}

// podSet returns the sorted keys.
func podSet(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
