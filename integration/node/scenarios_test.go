package node

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
)

const seedURL = "http://proddetail.workshop:3000/catalogdetail"

// TestInsteadOfKubeProxy is README option B on a fresh node (no portal rules,
// no service proxy): `kubectl apply -f deploy/` must bring up uproxy, which
// reaches the API server by its real address (kubeadm's kube-proxy ConfigMap
// kubeconfig), then CoreDNS and the seed's service by name. Then the API
// server is stopped and the uproxy container killed: the restarted uproxy
// serves the Services from its state checkpoint (the DaemonSet's hostPath
// /var/lib/uproxy) while the API server is down, and every Service within
// seconds of the API server being back.
func TestInsteadOfKubeProxy(t *testing.T) {
	w := newWorld(t, "workshop", 10*time.Minute)
	if exists, _ := w.uproxyDeployedAs(); exists {
		w.removeUproxy()
	}
	if rules := w.portalRules(); rules != "" {
		t.Fatalf("node is not fresh, nat rules left:\n%s", rules)
	}
	w.deployUproxy(false)
	w.waitCoreDNS()
	w.apply(seedApp(w.ns, "proddetail", bed.EchoImage, 3))
	w.waitRollout(w.ns, "deployment/proddetail", 2*time.Minute)
	c := w.clientPod("client")
	r, err := c.WaitHello(w.ctx, seedURL)
	if err != nil {
		t.Fatal(err)
	}
	say("fresh node: %s -> %s", seedURL, strings.TrimSpace(r.Out))

	// uproxy killed while the API server is down.
	pod := w.uproxyPod()
	before := w.restarts(pod)
	id, err := w.b.ContainerID(w.ctx, uproxyNS, pod, "uproxy")
	if err != nil {
		t.Fatal(err)
	}
	w.b.StopAPIServer()
	apiUp := false
	t.Cleanup(func() {
		if !apiUp {
			_ = w.b.StartAPIServer()
			_ = w.b.WaitAPIReady(w.ctx)
		}
	})
	if _, err := w.b.Ctr(w.ctx, "tasks", "kill", "--signal", "SIGKILL", id); err != nil {
		t.Fatal(err)
	}
	say("API server stopped, uproxy container %s killed", id[:12])
	// The kubelet restarts the container without the API server.
	w.sleep(5 * time.Second)
	down := c.Curl(w.ctx, seedURL, 2*time.Second)
	say("with the API server down after the restart: %s", down)
	if err := w.b.StartAPIServer(); err != nil {
		t.Fatal(err)
	}
	if err := w.b.WaitAPIReady(w.ctx); err != nil {
		t.Fatal(err)
	}
	apiUp = true
	back := time.Now()
	if _, err := c.WaitHello(w.ctx, seedURL); err != nil {
		t.Fatal(err)
	}
	took := time.Since(back)
	// The kubelet posts the restart once the API server is back; with the
	// state checkpoint the service answers before that.
	after := w.restarts(w.uproxyPod())
	_ = bed.Poll(w.ctx, 200*time.Millisecond, func() (bool, error) {
		after = w.restarts(w.uproxyPod())
		return after > before || time.Since(back) > 30*time.Second, nil
	})
	summary("instead-of-kube-proxy", "served by name %v after the API server was back (uproxy restarts %d -> %d; while down: ok=%v)",
		took.Round(time.Millisecond), before, after, down.OK())
	if after <= before {
		t.Errorf("the uproxy container was not restarted (restarts %d -> %d)", before, after)
	}
	if !down.OK() {
		t.Errorf("the restarted uproxy did not serve from its state checkpoint while the API server was down: %s", down)
	}
	if took > 10*time.Second {
		t.Errorf("services came back %v after the API server, want within 10 s", took)
	}
}

// TestRollingUpdateUnderCurlLoops: the seed's Deployment moves to a new image
// tag while 4 curl loops (a new connection per request) run; kubelet does the
// termination (SIGTERM, grace period, SIGKILL).
func TestRollingUpdateUnderCurlLoops(t *testing.T) {
	w := newWorld(t, "workshop", 10*time.Minute)
	w.ensureUproxy()
	c := w.seed("client", 3)
	before := w.readyPods("proddetail")
	s := w.loopFor(c, seedURL, func() {
		say("kubectl set image deployment/proddetail proddetail=%s -n workshop", bed.EchoImageV2)
		w.kubectl("set", "image", "deployment/proddetail", "proddetail="+bed.EchoImageV2, "-n", w.ns)
		w.waitRollout(w.ns, "deployment/proddetail", 3*time.Minute)
	})
	after := w.readyPods("proddetail")
	summary("rolling-update", "%v (pods before %v, after %v)", s, before, after)
	// An old pod that stops accepting at SIGTERM resets the connections
	// still in its accept queue; one uproxy had just handed a request to is
	// not replayed (the pod may have read it; issue 15 item 7), as
	// kube-proxy cannot save it either. At most one (seen once in a CI run).
	cut := countFailed(s, "exit=52 ", "exit=56 ")
	if s.Failures > cut || cut > 1 || s.Slow != 0 {
		t.Errorf("%d failed, %d slower than %v:\n%s%s", s.Failures, s.Slow, bed.SlowThreshold, s.FailureDetail(), slowDetail(s))
	} else if cut > 0 {
		t.Logf("%d request cut by an old pod that reset its accept queue at SIGTERM (not replayed):\n%s", cut, s.FailureDetail())
	}
	for _, p := range after {
		for _, q := range before {
			if p == q {
				t.Errorf("pod %s survived the rolling update", p)
			}
		}
	}
}

// TestUproxyRolloutAndKill: the uproxy DaemonSet rolled to a new image tag,
// then its container SIGKILLed (a crash or OOM kill), rolled back, and its
// container stopped as a failed liveness probe does (SIGTERM; kubelet
// starts it again), each under 4 curl loops from a client pod that resolve
// the Service by name. Each restart is the pod's first: a second one within
// kubelet's crash-loop back-off (10 s, doubling) would leave the queued
// connections waiting that long. The fd holder keeps the proxy ports'
// sockets open while the container restarts: no request may fail, except
// one relayed by the killed process at the instant of the SIGKILL (its
// connection dies with the process, as with HAProxy or Envoy killed so),
// which is reported.
func TestUproxyRolloutAndKill(t *testing.T) {
	w := newWorld(t, "workshop", 15*time.Minute)
	w.ensureUproxy()
	c := w.seed("client", 3)
	w.uproxyImage("v2")
	for _, step := range []struct{ image, signal string }{{"uproxy:v2", "SIGKILL"}, {"uproxy:dev", "SIGTERM"}} {
		old := w.uproxyPod()
		start := time.Now()
		var took time.Duration
		retrans := synRetrans(t, c)
		s := w.loopFor(c, seedURL, func() {
			say("kubectl -n kube-system set image ds/uproxy uproxy=%s fd-holder=%s", step.image, step.image)
			w.kubectl("-n", uproxyNS, "set", "image", "ds/uproxy", "uproxy="+step.image, "fd-holder="+step.image)
			w.waitRollout(uproxyNS, "ds/uproxy", 3*time.Minute)
			took = time.Since(start)
		})
		retrans = synRetrans(t, c) - retrans
		cur := w.uproxyPod()
		summary("uproxy-rollout", "%v (rollout to %s %v, pod %s -> %s, client SYNs retransmitted %d)", s, step.image, took.Round(time.Millisecond), old, cur, retrans)
		// No request may fail, DNS lookups included: the old pod's UDP
		// sockets steer new queries to the new pod's and close only once the
		// replies they await were relayed (before that drain, about 1
		// rollout in 4 lost one or two lookups to the resolver's 5 s timeout).
		if s.Failures != 0 {
			t.Errorf("rollout to %s: %d of %d requests failed:\n%s", step.image, s.Failures, s.Requests, s.FailureDetail())
		}
		// Nor wait for a SYN retransmission: the old pod cannot set
		// tcp_migrate_req, so it steers new SYNs to the new pod's listeners
		// (before that, each loop had a request of about 1.03 s per rollout).
		if retrans != 0 {
			t.Errorf("rollout to %s: the client retransmitted %d SYNs (a listener dropped them); slowest request %v", step.image, retrans, s.Max)
		}
		if cur == old {
			t.Errorf("the uproxy pod was not replaced (%s)", cur)
		}
		w.restartUproxy(c, cur, step.signal)
	}
}

// restartUproxy sends sig to the uproxy container of pod under 4 curl
// loops run by c, waits for kubelet to restart it, and checks the requests (see
// TestUproxyRolloutAndKill).
func (w *world) restartUproxy(c *bed.PodClient, pod, sig string) {
	t := w.t
	t.Helper()
	before := w.restarts(pod)
	// killed is when the signal had certainly been delivered: the call
	// returned. Sending it runs the runtime's client, whose own start took
	// over 100 ms on the loaded CI machine: a request that started 76 ms
	// after the call began was still relayed by the process being killed.
	var killed time.Time
	s := w.loopFor(c, seedURL, func() {
		say("uproxy container of %s sent %s", pod, sig)
		if err := w.b.SignalContainer(w.ctx, uproxyNS, pod, "uproxy", sig); err != nil {
			t.Fatal(err)
		}
		killed = time.Now()
		say("signal delivered")
		ctx, cancel := context.WithTimeout(w.ctx, 2*time.Minute)
		defer cancel()
		if err := bed.Poll(ctx, 200*time.Millisecond, func() (bool, error) {
			return w.restarts(pod) > before, nil
		}); err != nil {
			t.Fatalf("kubelet did not restart uproxy within 2 minutes (restarts %d): %v", w.restarts(pod), err)
		}
		w.uproxyPod()
	})
	logs := w.kubectl("-n", uproxyNS, "logs", pod, "-c", "uproxy")
	takenBack := strings.Count(logs, "took back the socket a previous run left with the fd holder")
	var inFlight, other []bed.Sample
	for _, f := range s.Failed {
		if sig == "SIGKILL" && f.Start.Before(killed) && cutByKill(f.Detail) {
			inFlight = append(inFlight, f)
		} else {
			other = append(other, f)
		}
	}
	summary("uproxy-"+strings.ToLower(sig), "%v (restarts %d -> %d, %d sockets taken back from the fd holder, %d failed in flight at the kill)",
		s, before, w.restarts(pod), takenBack, len(inFlight))
	if len(other) > 0 || s.Failures > len(s.Failed) {
		t.Errorf("%s: %d of %d requests failed:\n%s", sig, s.Failures, s.Requests, s.FailureDetail())
	}
	if len(inFlight) > 1 {
		t.Errorf("%s: %d requests cut in flight, want at most the one being relayed at the instant of the kill:\n%s", sig, len(inFlight), s.FailureDetail())
	}
	if takenBack == 0 {
		t.Errorf("%s: the restarted uproxy took no socket back from the fd holder; its log:\n%s", sig, logs)
	}
}

// countFailed counts the failed requests whose curl error starts with one
// of prefixes; -1 when the summary did not keep every failure.
func countFailed(s bed.Summary, prefixes ...string) int {
	if s.Failures > len(s.Failed) {
		return -1
	}
	n := 0
	for _, f := range s.Failed {
		for _, p := range prefixes {
			if strings.HasPrefix(f.Detail, p) {
				n++
				break
			}
		}
	}
	return n
}

// cutByKill: curl's error for a connection that died mid-request (empty
// reply, reset while receiving, partial transfer), as opposed to one that
// was never served (resolve or connect failures, timeouts).
func cutByKill(detail string) bool {
	for _, code := range []string{"exit=52 ", "exit=56 ", "exit=18 "} {
		if strings.HasPrefix(detail, code) {
			return true
		}
	}
	return false
}

// TestLookAtIt follows the README's "Look at it" steps on the node: logs,
// the portal rules from inside the uproxy pod, /debug/services and /healthz
// on the node's loopback, /metrics, and /debug/pprof/ once --profiling is
// added to the DaemonSet.
func TestLookAtIt(t *testing.T) {
	w := newWorld(t, "workshop", 10*time.Minute)
	w.ensureUproxy()
	w.apply(seedApp(w.ns, "proddetail", bed.EchoImage, 1))
	w.waitRollout(w.ns, "deployment/proddetail", 2*time.Minute)
	svc := w.kubectl("-n", w.ns, "get", "service", "proddetail", "-o", "jsonpath={.spec.clusterIP}")

	logs := w.kubectl("-n", uproxyNS, "logs", "ds/uproxy")
	if strings.TrimSpace(logs) == "" {
		t.Errorf("kubectl logs ds/uproxy printed nothing")
	}
	pod := w.uproxyPod()
	rules := w.kubectl("-n", uproxyNS, "exec", pod, "--", "sh", "-c", "iptables -t nat -S | grep PORTALS")
	if !strings.Contains(rules, svc) {
		t.Errorf("portal rules seen from the uproxy pod lack %s:\n%s", svc, rules)
	}
	var table string
	if err := bed.Poll(w.ctx, 200*time.Millisecond, func() (bool, error) {
		table = w.nodeGet("http://127.0.0.1:10249/debug/services")
		return strings.Contains(table, w.ns+"/proddetail"), nil
	}); err != nil {
		t.Errorf("/debug/services lacks %s/proddetail:\n%s", w.ns, table)
	}
	health := w.nodeGet("http://127.0.0.1:10256/healthz")
	metrics := w.nodeGet("http://127.0.0.1:10249/metrics")
	if !strings.Contains(metrics, "uproxy_listeners") || !strings.Contains(metrics, "kubeproxy_sync_proxy_rules_duration_seconds") {
		t.Errorf("/metrics lacks uproxy's and kube-proxy's metric names")
	}
	if code, _, err := w.b.HTTPGet(w.ctx, "http://127.0.0.1:10249/debug/pprof/"); err != nil || code != 404 {
		t.Errorf("/debug/pprof/ without --profiling: %d %v, want 404", code, err)
	}
	w.kubectl("-n", uproxyNS, "patch", "ds", "uproxy", "--type=json",
		"-p", `[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--profiling"}]`)
	w.waitRollout(uproxyNS, "ds/uproxy", 3*time.Minute)
	var heap string
	if err := bed.Poll(w.ctx, 200*time.Millisecond, func() (bool, error) {
		code, body, err := w.b.HTTPGet(w.ctx, "http://127.0.0.1:10249/debug/pprof/heap?debug=1")
		heap = body
		return err == nil && code == 200, nil
	}); err != nil {
		t.Errorf("/debug/pprof/heap with --profiling: %v", err)
	}
	summary("look-at-it", "logs %d lines, %d portal rules for %s, /debug/services %d bytes, /healthz %s, /metrics %d bytes, pprof heap %d bytes",
		strings.Count(logs, "\n"), strings.Count(rules, "\n"), svc, len(table), strings.TrimSpace(health), len(metrics), len(heap))
}

// TestBesideKubeProxy is README option A: a real kube-proxy v1.36.3
// (iptables mode) runs on the node, and uproxy is applied with the option A
// lines uncommented. Both must run (no port conflict, no restarts), each
// proxying only its own Services: uproxy those labelled
// service.kubernetes.io/service-proxy-name=uproxy, kube-proxy the rest.
func TestBesideKubeProxy(t *testing.T) {
	w := newWorld(t, "beside", 10*time.Minute)
	if exists, _ := w.uproxyDeployedAs(); exists {
		w.removeUproxy()
	}
	kp := w.kubeProxy()
	w.deployUproxy(true)
	t.Cleanup(func() {
		w.removeUproxy()
		kp.Stop(10 * time.Second)
		if out, err := w.b.Node.Output(w.ctx, w.b.TestbinDir()+"/kube-proxy", "--cleanup"); err != nil {
			t.Logf("kube-proxy --cleanup: %v\n%s", err, out)
		}
	})
	w.waitCoreDNS()
	w.apply(seedApp(w.ns, "mine", bed.EchoImage, 2))
	w.apply(seedApp(w.ns, "theirs", bed.EchoImage, 2))
	w.kubectl("-n", w.ns, "label", "service", "mine", "service.kubernetes.io/service-proxy-name=uproxy")
	w.waitRollout(w.ns, "deployment/mine", 2*time.Minute)
	w.waitRollout(w.ns, "deployment/theirs", 2*time.Minute)
	c := w.clientPod("client")
	ip := func(name string) string {
		return w.kubectl("-n", w.ns, "get", "service", name, "-o", "jsonpath={.spec.clusterIP}")
	}
	mine, theirs := ip("mine"), ip("theirs")
	results := map[string]bed.Summary{}
	for _, name := range []string{"mine", "theirs"} {
		u := "http://" + name + "." + w.ns + ":3000/"
		if _, err := c.WaitHello(w.ctx, u); err != nil {
			t.Fatal(err)
		}
		results[name] = bed.StartLoop(w.ctx, c, bed.LoopOptions{URL: u, Workers: 2, Requests: 100}).Wait()
	}
	rules, err := w.b.NATRules(w.ctx)
	if err != nil {
		t.Fatal(err)
	}
	owner := func(ip string) (uproxy, kubeProxy bool) {
		for _, l := range strings.Split(rules, "\n") {
			if !strings.Contains(l, ip+"/32") {
				continue
			}
			// uproxy keeps the userspace proxier's chain names.
			uproxy = uproxy || strings.Contains(l, "KUBE-PORTALS-")
			kubeProxy = kubeProxy || strings.Contains(l, "-A KUBE-SERVICES ")
		}
		return
	}
	mu, mk := owner(mine)
	tu, tk := owner(theirs)
	pod := w.uproxyPod()
	w.sleep(10 * time.Second) // a crash loop would show by now
	restarts := w.restarts(pod)
	done, _ := kp.Exited()
	summary("beside-kube-proxy", "mine(uproxy) %v; theirs(kube-proxy) %v; rules: mine uproxy=%v kube-proxy=%v, theirs uproxy=%v kube-proxy=%v; uproxy restarts %d, kube-proxy exited %v",
		results["mine"], results["theirs"], mu, mk, tu, tk, restarts, done)
	if s := results["mine"]; s.Failures != 0 {
		t.Errorf("mine (uproxy): %d failed:\n%s", s.Failures, s.FailureDetail())
	}
	// kube-proxy's Service, resolved through kube-dns, which kube-proxy
	// serves here too: under load a DNS query on kube-proxy's iptables path
	// was lost once in a run (5 s resolver timeout; seen at load 20). That
	// is kube-proxy's, not uproxy's; anything else fails the test.
	if s := results["theirs"]; s.Failures > 0 {
		dnsOnly := s.Failures <= 2 && s.Failures == len(s.Failed)
		for _, f := range s.Failed {
			dnsOnly = dnsOnly && strings.Contains(f.Detail, "Resolving timed out")
		}
		if !dnsOnly {
			t.Errorf("theirs (kube-proxy): %d failed:\n%s", s.Failures, s.FailureDetail())
		} else {
			t.Logf("theirs (kube-proxy): %d DNS lookups through kube-proxy timed out:\n%s", s.Failures, s.FailureDetail())
		}
	}
	if !mu || mk || tu || !tk {
		t.Errorf("each proxy must handle only its own Service; nat rules:\n%s", w.portalRules())
	}
	if restarts != 0 || done {
		t.Errorf("uproxy restarted %d times, kube-proxy exited: %v", restarts, done)
	}
}

// TestWorkloadShutdownModes shows what clients see from two workloads uproxy
// cannot make hitless on its own, under 4 curl loops: one that keeps
// accepting and answers 503 for 5 s after SIGTERM (a pod deleted with
// kubectl), and one SIGKILLed with requests in flight (each request takes
// 1 s). The figures are printed; the test asserts only that the loops ran
// across the faults.
func TestWorkloadShutdownModes(t *testing.T) {
	w := newWorld(t, "workshop", 10*time.Minute)
	w.ensureUproxy()
	c := w.seed("client", 3, "--unready-503=5s")
	kinds := func(s bed.Summary) string {
		n503 := 0
		for _, x := range s.Samples {
			if !x.OK && strings.Contains(x.Detail, "shutting down") {
				n503++
			}
		}
		return fmt.Sprintf("503=%d other=%d", n503, s.Failures-n503)
	}
	victim := w.readyPods("proddetail")[0]
	s := w.loopFor(c, seedURL, func() {
		say("kubectl delete pod %s -n workshop (it answers 503 for 5 s after SIGTERM)", victim)
		w.kubectl("delete", "pod", victim, "-n", w.ns, "--wait=true")
		w.waitRollout(w.ns, "deployment/proddetail", 2*time.Minute)
	})
	summary("workload-503-on-shutdown", "%v failures: %s", s, kinds(s))

	slow := "http://proddetail.workshop:3000/sleep?d=1s"
	victim = w.readyPods("proddetail")[0]
	var killed time.Time
	s = w.loopFor(c, slow, func() {
		w.sleep(time.Second)
		say("container of %s SIGKILLed with requests in flight", victim)
		killed = time.Now()
		if err := w.b.KillContainer(w.ctx, w.ns, victim, "proddetail"); err != nil {
			t.Fatal(err)
		}
		w.waitRollout(w.ns, "deployment/proddetail", 2*time.Minute)
		w.sleep(3 * time.Second)
	})
	inFlight := s.Between(killed.Add(-1100*time.Millisecond), killed.Add(100*time.Millisecond))
	summary("workload-sigkill-in-flight", "%v; started within 1 s before the kill: %d, failed %d; failures after the kill window: %d",
		s, inFlight.Requests, inFlight.Failures, s.Between(killed.Add(100*time.Millisecond), time.Now()).Failures)
	if s.Requests == 0 || inFlight.Requests == 0 {
		t.Errorf("the loop did not run across the kill: %v", s)
	}
}

// synRetrans reads the TCP SYN retransmissions of c's pod network namespace
// (TcpExt TCPSynRetrans in /proc/net/netstat).
func synRetrans(t *testing.T, c *bed.PodClient) int64 {
	t.Helper()
	out, err := c.ProcNet("netstat")
	if err != nil {
		t.Fatalf("%s's /proc/net/netstat: %v", c.Pod, err)
	}
	var head []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != "TcpExt:" {
			continue
		}
		if head == nil {
			head = f
			continue
		}
		for i, name := range head {
			if name == "TCPSynRetrans" && i < len(f) {
				v, err := strconv.ParseInt(f[i], 10, 64)
				if err != nil {
					t.Fatalf("TCPSynRetrans %q: %v", f[i], err)
				}
				return v
			}
		}
	}
	t.Fatalf("no TcpExt TCPSynRetrans in %s's /proc/net/netstat:\n%s", c.Pod, out)
	return 0
}
