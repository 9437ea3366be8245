package integration

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/uproxy/uproxy/integration/bed"
)

// TestClientIPAffinity: with sessionAffinity ClientIP one client sticks to
// one pod; after timeoutSeconds of silence the next pick is free again, so
// within a few idle periods the client lands on another pod.
func TestClientIPAffinity(t *testing.T) {
	w := newWorld(t, "affinity", 3*time.Minute)
	svc := bed.ServiceFor("sticky", bed.TCPPort("http", 80, 8080))
	timeout := int32(3)
	svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}
	created := w.deploy(bed.EchoDeployment("sticky", 3, httpPort("http", 8080)), svc)
	u := url(created.Spec.ClusterIP, 80, "/")
	w.waitHello(u)
	w.sleep(time.Duration(timeout+1) * time.Second) // forget waitHello's pick

	// Phases: 10 requests back to back (well inside the timeout), then
	// silence longer than the timeout.
	var phases []string
	sticky := true
	for range 4 {
		s := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: u, Workers: 1, Requests: 10}).Wait()
		if s.Failures != 0 || len(s.PerPod) != 1 {
			sticky = false
			t.Errorf("one client within the affinity timeout: want 1 pod, got %v", s)
		}
		phases = append(phases, strings.Join(podSet(s.PerPod), "+"))
		w.sleep(time.Duration(timeout)*time.Second + 1500*time.Millisecond)
	}
	moved := 0
	for i := 1; i < len(phases); i++ {
		if phases[i] != phases[i-1] {
			moved++
		}
	}
	summary("affinity", "timeout=%ds phases=%v sticky-within-phase=%v moves-after-timeout=%d", timeout, phases, sticky, moved)
	if moved == 0 {
		t.Errorf("the client never moved to another pod after the affinity timeout: %v", phases)
	}
}

// TestUDPEcho: datagrams and DNS-style queries through a UDP service; every
// dig (a new source port, so a new session) is answered and round robin
// reaches every pod.
func TestUDPEcho(t *testing.T) {
	w := newWorld(t, "udp", 3*time.Minute)
	svc := bed.ServiceFor("dns", corev1.ServicePort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53})
	created := w.deploy(bed.EchoDeployment("dns", 3, corev1.ContainerPort{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}), svc)
	ip := created.Spec.ClusterIP
	pods, err := w.b.Client.CoreV1().Pods(w.ns).List(w.ctx, metav1.ListOptions{LabelSelector: "app=dns"})
	if err != nil {
		t.Fatal(err)
	}
	podByIP := map[string]string{}
	for _, p := range pods.Items {
		podByIP[p.Status.PodIP] = p.Name
	}
	var r bed.Result
	if err := bed.Poll(w.ctx, 200*time.Millisecond, func() (bool, error) {
		r = w.client.NCUDP(w.ctx, ip, 53, "hello-udp", time.Second)
		return r.Out == "hello-udp", nil
	}); err != nil {
		t.Fatalf("UDP echo through %s:53 never answered (last %s): %v", ip, r, err)
	}
	const queries = 30
	per := map[string]int{}
	failed := 0
	for range queries {
		r := w.client.Dig(w.ctx, ip, 53, "echo.example.")
		if name, ok := podByIP[strings.TrimSpace(r.Out)]; ok && r.OK() {
			per[name]++
		} else {
			failed++
			t.Logf("dig: %s", r)
		}
	}
	echoOK := 0
	for i := range 10 {
		msg := fmt.Sprintf("datagram-%d", i)
		if r := w.client.NCUDP(w.ctx, ip, 53, msg, time.Second); r.Out == msg {
			echoOK++
		}
	}
	summary("udp", "dig queries=%d failed=%d pods=%d %v; nc -u echo %d/10", queries, failed, len(per), per, echoOK)
	if failed != 0 || len(per) != 3 {
		t.Errorf("want every query answered by all 3 pods in turn, got failed=%d %v", failed, per)
	}
	if echoOK != 10 {
		t.Errorf("UDP echo: %d of 10 datagrams came back", echoOK)
	}
}

// TestNodePort: a NodePort service reached from a client namespace through
// the node IP, as an outside host would.
func TestNodePort(t *testing.T) {
	w := newWorld(t, "nodeport", 3*time.Minute)
	svc := bed.ServiceFor("np", bed.TCPPort("http", 80, 8080))
	svc.Spec.Type = corev1.ServiceTypeNodePort
	created := w.deploy(bed.EchoDeployment("np", 2, httpPort("http", 8080)), svc)
	np := created.Spec.Ports[0].NodePort
	u := url(bed.NodeIP, np, "/")
	w.waitHello(u)
	s := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: u, Workers: 2, Requests: 40}).Wait()
	c := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: url(created.Spec.ClusterIP, 80, "/"), Workers: 2, Requests: 20}).Wait()
	summary("nodeport", "node %s:%d %v; clusterIP %v", bed.NodeIP, np, s, c)
	if s.Failures != 0 || len(s.PerPod) != 2 || c.Failures != 0 {
		t.Errorf("want both pods via the NodePort and no failure: nodeport %v, clusterIP %v\n%s%s", s, c, s.FailureDetail(), c.FailureDetail())
	}
}

// TestServiceDeleteRecreate: deleting a service removes its portal (the
// ClusterIP stops answering), re-creating it with the same ClusterIP brings
// it back.
func TestServiceDeleteRecreate(t *testing.T) {
	w := newWorld(t, "recreate", 3*time.Minute)
	created := w.deploy(bed.EchoDeployment("again", 2, httpPort("http", 8080)),
		bed.ServiceFor("again", bed.TCPPort("http", 80, 8080)))
	ip := created.Spec.ClusterIP
	u := url(ip, 80, "/")
	w.waitHello(u)

	if err := w.b.Client.CoreV1().Services(w.ns).Delete(w.ctx, "again", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	var r bed.Result
	if err := bed.Poll(w.ctx, 100*time.Millisecond, func() (bool, error) {
		if time.Since(deleted) > 15*time.Second {
			return false, fmt.Errorf("still answering 15s after delete: %s", r)
		}
		r = w.client.Curl(w.ctx, u, 500*time.Millisecond)
		return !r.OK(), nil
	}); err != nil {
		t.Fatal(err)
	}
	gone := time.Since(deleted)

	again := bed.ServiceFor("again", bed.TCPPort("http", 80, 8080))
	again.Spec.ClusterIP = ip
	var recreated time.Time
	if err := bed.Poll(w.ctx, 200*time.Millisecond, func() (bool, error) {
		// The IP allocator may hold the address for a moment.
		_, err := w.b.Client.CoreV1().Services(w.ns).Create(w.ctx, again, metav1.CreateOptions{})
		recreated = time.Now()
		return err == nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(w.ctx, 20*time.Second)
	defer cancel()
	if _, err := w.client.WaitHello(ctx, u); err != nil {
		t.Fatal(err)
	}
	back := time.Since(recreated)
	s := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: u, Workers: 2, Requests: 40}).Wait()
	summary("recreate", "clusterIP %s gone %v after delete, back %v after re-create; %v",
		ip, gone.Round(time.Millisecond), back.Round(time.Millisecond), s)
	if s.Failures != 0 || len(s.PerPod) != 2 {
		t.Errorf("after re-create: %v\n%s", s, s.FailureDetail())
	}
}

// TestRollingUpdate: a new pod template rolls out (maxUnavailable 0,
// maxSurge 1) under 4 curl loops: no failure but at most one request cut
// by each old pod as it stops (checkCutByTermination), and afterwards only
// the new pods answer.
func TestRollingUpdate(t *testing.T) {
	w := newWorld(t, "rolling", 5*time.Minute)
	created := w.deploy(bed.EchoDeployment("roll", 3, httpPort("http", 8080)),
		bed.ServiceFor("roll", bed.TCPPort("http", 80, 8080)))
	u := url(created.Spec.ClusterIP, 80, "/")
	w.waitHello(u)
	old := w.readyPods("roll")

	loop := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: u, Workers: 4})
	w.sleep(2 * time.Second)
	patch := []byte(`{"spec":{"template":{"metadata":{"annotations":{"bed/version":"2"}}}}}`)
	if _, err := w.b.Client.AppsV1().Deployments(w.ns).Patch(w.ctx, "roll", types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	if err := w.b.WaitDeployment(w.ctx, w.ns, "roll"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(started)
	newPods := w.readyPods("roll")
	w.sleep(time.Second)
	settled := time.Now()
	w.sleep(2 * time.Second)
	s := loop.Stop()
	tail := s.Between(settled, time.Now())

	summary("rolling", "%v rollout=%v after={%s}", s, took.Round(time.Millisecond), strings.Join(podSet(tail.PerPod), " "))
	checkCutByTermination(t, "during the rolling update", s, len(old))
	for _, p := range old {
		if tail.PerPod[p] != 0 {
			t.Errorf("old pod %s still answered after the rollout: %v", p, tail)
		}
	}
	for _, p := range newPods {
		if tail.PerPod[p] == 0 {
			t.Errorf("new pod %s got no request after the rollout: %v", p, tail)
		}
	}
}

// TestScaleInDrainsInFlight: requests in flight to pods that are scaled away
// finish (the pods drain on SIGTERM, the proxy keeps their connections),
// while new requests keep succeeding on the pod that stays.
func TestScaleInDrainsInFlight(t *testing.T) {
	w := newWorld(t, "drain", 3*time.Minute)
	created := w.deploy(bed.EchoDeployment("slow", 3, httpPort("http", 8080)),
		bed.ServiceFor("slow", bed.TCPPort("http", 80, 8080)))
	w.waitHello(url(created.Spec.ClusterIP, 80, "/"))

	// 6 slow requests spread over the 3 pods, then scale to 1 while they run.
	before := w.readyPods("slow")
	slow := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: url(created.Spec.ClusterIP, 80, "/sleep?d=3s"), Workers: 6, Requests: 6, MaxTime: 10 * time.Second})
	w.sleep(time.Second)
	fast := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: url(created.Spec.ClusterIP, 80, "/"), Workers: 2})
	w.sleep(500 * time.Millisecond)
	w.scale("slow", 1)
	s := slow.Wait()
	f := fast.Stop()
	after := w.readyPods("slow")
	drained := 0 // slow requests answered by pods that were scaled away
	for _, p := range before {
		if !slices.Contains(after, p) {
			drained += s.PerPod[p]
		}
	}
	summary("drain", "in-flight %v drained-from-removed-pods=%d; meanwhile %v", s, drained, f)
	if s.Requests != 6 || s.Failures != 0 || drained == 0 {
		t.Errorf("want 6 slow requests to finish, some on removed pods, despite the scale-in: %v drained=%d\n%s", s, drained, s.FailureDetail())
	}
	checkCutByTermination(t, "new requests during the scale-in", f, len(before)-1)
}
