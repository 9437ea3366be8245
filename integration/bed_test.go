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

	"github.com/uproxy/uproxy/integration/bed"
)

// TestBed checks the bed itself, without uproxy: pods become Ready through
// the agent, the real EndpointSlice controller lists their IPs, clients reach
// pods directly over the bridge, and every fault injection does what it says.
func TestBed(t *testing.T) {
	b := bed.Shared(t)
	ns := b.Namespace(t, "bedcheck")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	d := bed.EchoDeployment("web", 3,
		corev1.ContainerPort{Name: "http", ContainerPort: 8080},
		corev1.ContainerPort{Name: "redis", ContainerPort: 6379},
		corev1.ContainerPort{Name: "dns", ContainerPort: 5353, Protocol: corev1.ProtocolUDP})
	if _, err := b.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Client.CoreV1().Services(ns).Create(ctx, bed.ServiceFor("web", bed.TCPPort("http", 80, 8080)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := b.WaitDeployment(ctx, ns, "web"); err != nil {
		t.Fatal(err)
	}
	ips, err := b.WaitEndpoints(ctx, ns, "web", 3)
	if err != nil {
		t.Fatal(err)
	}
	rollout := time.Since(start)
	pods, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		t.Fatal(err)
	}
	byIP := map[string]string{}
	var podIPs []string
	for _, p := range pods.Items {
		byIP[p.Status.PodIP] = p.Name
		podIPs = append(podIPs, p.Status.PodIP)
	}
	slices.Sort(podIPs)
	if !slices.Equal(ips, podIPs) {
		t.Fatalf("EndpointSlice addresses %v != pod IPs %v", ips, podIPs)
	}

	c := b.NewClient(t)
	for _, ip := range ips {
		r := c.Curl(ctx, "http://"+ip+":8080/", 3*time.Second)
		if name, ok := bed.ParseHello(r.Out); !ok || name != byIP[ip] {
			t.Fatalf("curl pod %s: want hello from %s, got %s", ip, byIP[ip], r)
		}
		if r := c.NC(ctx, ip, 6379, "PING\r\nhello\r\n", 2*time.Second); r.Out != "+PONG\r\nhello\r\n" {
			t.Fatalf("nc pod %s:6379: %s", ip, r)
		}
		if r := c.Dig(ctx, ip, 5353, "web.example."); strings.TrimSpace(r.Out) != ip {
			t.Fatalf("dig pod %s:5353: %s", ip, r)
		}
		if r := c.NCUDP(ctx, ip, 5353, "hello-udp", time.Second); r.Out != "hello-udp" {
			t.Fatalf("nc -u pod %s:5353: %s", ip, r)
		}
	}

	// Faults, one per pod.
	crashed, holed, unready := byIP[ips[0]], byIP[ips[1]], byIP[ips[2]]
	if err := b.Agent.Crash(ns, crashed); err != nil {
		t.Fatal(err)
	}
	if r := c.Curl(ctx, "http://"+ips[0]+":8080/", 2*time.Second); r.Code != 7 {
		t.Fatalf("crashed pod: want curl exit 7 (refused), got %s", r)
	}
	if err := b.Agent.Blackhole(ns, holed); err != nil {
		t.Fatal(err)
	}
	if r := c.Curl(ctx, "http://"+ips[1]+":8080/", time.Second); r.Code != 28 {
		t.Fatalf("blackholed pod: want curl exit 28 (timeout), got %s", r)
	}
	if err := b.Agent.ResetConnections(ns, unready, true); err != nil {
		t.Fatal(err)
	}
	if r := c.Curl(ctx, "http://"+ips[2]+":8080/", time.Second); r.OK() {
		t.Fatalf("resetting pod: want curl failure, got %s", r)
	}
	if err := b.Agent.SetReady(ctx, ns, unready, false); err != nil {
		t.Fatal(err)
	}
	var eps map[string]bed.EndpointState
	if err := bed.Poll(ctx, 100*time.Millisecond, func() (bool, error) {
		eps, err = b.Endpoints(ctx, ns, "web")
		return err == nil && !eps[ips[2]].Ready && eps[ips[0]].Ready, err
	}); err != nil {
		t.Fatalf("after SetReady(false) the endpoint of %s stays ready: %v (%v)", unready, eps, err)
	}
	for _, p := range []string{crashed, holed, unready} {
		if err := b.Agent.Restore(ctx, ns, p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.WaitEndpoints(ctx, ns, "web", 3); err != nil {
		t.Fatal(err)
	}
	for _, ip := range ips {
		if r := c.Curl(ctx, "http://"+ip+":8080/", 3*time.Second); !r.OK() {
			t.Fatalf("pod %s after Restore: %s", ip, r)
		}
	}

	// Scale in: pods drain and disappear, the slice follows.
	if err := b.Scale(ctx, ns, "web", 1); err != nil {
		t.Fatal(err)
	}
	if err := b.WaitDeployment(ctx, ns, "web"); err != nil {
		t.Fatal(err)
	}
	left, err := b.WaitEndpoints(ctx, ns, "web", 1)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("SUMMARY bed: rollout of 3 pods %v, endpoints %v, faults crash/blackhole/reset/unready/restore ok, scaled to %v\n",
		rollout.Round(time.Millisecond), ips, left)
}
