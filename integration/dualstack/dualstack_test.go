package dualstack

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/uproxy/uproxy/integration/bed"
)

const (
	portHTTP = 80 // echoserver --http :8080
	portUDP  = 53 // echoserver --udp-echo :5353
)

// dualWorld is one test's share of the dual-stack bed: a Kubernetes
// namespace, a client namespace with both families, and a uproxy.
type dualWorld struct {
	t      *testing.T
	b      *bed.Bed
	ns     string
	ctx    context.Context
	client *bed.Client
	u      *bed.Uproxy
}

func newDualWorld(t *testing.T, namespace string) *dualWorld {
	t.Helper()
	b := bed.SharedDualStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	w := &dualWorld{t: t, b: b, ctx: ctx}
	w.ns = b.Namespace(t, namespace)
	w.client = b.NewClient(t)
	if w.client.IP6 == "" {
		t.Fatal("dual-stack bed gave the client no IPv6 address")
	}
	w.u = b.StartUproxy(t, bed.UproxyOptions{})
	return w
}

// deployEcho runs one echo pod app=<name> serving HTTP on 8080 and UDP echo
// on 5353, and returns its name and IPs (IPv4, IPv6).
func (w *dualWorld) deployEcho(name string) (pod, ip4, ip6 string) {
	w.t.Helper()
	d := bed.EchoDeployment(name, 1,
		corev1.ContainerPort{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
		corev1.ContainerPort{Name: "udp-echo", ContainerPort: 5353, Protocol: corev1.ProtocolUDP})
	if _, err := w.b.Client.AppsV1().Deployments(w.ns).Create(w.ctx, d, metav1.CreateOptions{}); err != nil {
		w.t.Fatal(err)
	}
	if err := w.b.WaitDeployment(w.ctx, w.ns, name); err != nil {
		w.t.Fatal(err)
	}
	pods, err := w.b.Client.CoreV1().Pods(w.ns).List(w.ctx, metav1.ListOptions{LabelSelector: "app=" + name})
	if err != nil || len(pods.Items) != 1 {
		w.t.Fatalf("pods of %s: %v (%d)", name, err, len(pods.Items))
	}
	p := pods.Items[0]
	if len(p.Status.PodIPs) != 2 {
		w.t.Fatalf("pod %s has PodIPs %v, want one per family", p.Name, p.Status.PodIPs)
	}
	return p.Name, p.Status.PodIPs[0].IP, p.Status.PodIPs[1].IP
}

// dualService creates a RequireDualStack Service (selector app=<app>, or
// none when app is "") with an HTTP and a UDP port, of type typ.
func (w *dualWorld) dualService(name, app string, typ corev1.ServiceType) *corev1.Service {
	w.t.Helper()
	policy := corev1.IPFamilyPolicyRequireDualStack
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Type:           typ,
			IPFamilyPolicy: &policy,
			Ports: []corev1.ServicePort{
				{Name: "http", Protocol: corev1.ProtocolTCP, Port: portHTTP, TargetPort: intstr.FromInt32(8080)},
				{Name: "udp", Protocol: corev1.ProtocolUDP, Port: portUDP, TargetPort: intstr.FromInt32(5353)},
			},
		},
	}
	if app != "" {
		s.Spec.Selector = map[string]string{"app": app}
	}
	created, err := w.b.Client.CoreV1().Services(w.ns).Create(w.ctx, s, metav1.CreateOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	if len(created.Spec.ClusterIPs) != 2 || !strings.Contains(created.Spec.ClusterIPs[1], ":") {
		w.t.Fatalf("service %s: clusterIPs %v, want IPv4 and IPv6", name, created.Spec.ClusterIPs)
	}
	return created
}

// manualSlice creates an EndpointSlice of service svcName not managed by the
// EndpointSlice controller (for a selectorless service), removed in
// t.Cleanup.
func (w *dualWorld) manualSlice(svcName string, typ discoveryv1.AddressType, addr string) {
	w.t.Helper()
	ready := true
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: svcName + "-" + strings.ToLower(string(typ)),
			Labels: map[string]string{discoveryv1.LabelServiceName: svcName,
				discoveryv1.LabelManagedBy: "uproxy-dualstack-test"},
		},
		AddressType: typ,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(8080))},
			{Name: ptr("udp"), Protocol: ptr(corev1.ProtocolUDP), Port: ptr(int32(5353))},
		},
	}
	if _, err := w.b.Client.DiscoveryV1().EndpointSlices(w.ns).Create(w.ctx, es, metav1.CreateOptions{}); err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() {
		_ = w.b.Client.DiscoveryV1().EndpointSlices(w.ns).Delete(context.Background(), es.Name, metav1.DeleteOptions{})
	})
}

func ptr[T any](v T) *T { return &v }

// url is http://ip:port/ with IPv6 in brackets.
func url(ip string, port int32) string {
	return "http://" + net.JoinHostPort(ip, strconv.Itoa(int(port))) + "/"
}

// hello fetches url once from the client and returns the answering pod.
func (w *dualWorld) hello(u string) (string, bed.Result) {
	r := w.client.Run(w.ctx, "", "curl", "-g", "-sS", "--max-time", "2", u)
	pod, ok := bed.ParseHello(r.Out)
	if !r.OK() || !ok {
		return "", r
	}
	return pod, r
}

// serveWait is how long a portal may take to answer once its objects exist.
const serveWait = 30 * time.Second

// waitHello polls url until a pod answers (at most serveWait) and returns it.
func (w *dualWorld) waitHello(t *testing.T, u string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, serveWait)
	defer cancel()
	var pod string
	var last bed.Result
	err := bed.Poll(ctx, 200*time.Millisecond, func() (bool, error) {
		pod, last = w.hello(u)
		return pod != "", nil
	})
	if err != nil {
		t.Fatalf("%s never answered within %v (last: %s): %v", u, serveWait, last, err)
	}
	return pod
}

// waitDig polls a UDP DNS query to server:port until the echoserver
// answers (at most serveWait), and returns the answer (the pod's POD_IP).
func (w *dualWorld) waitDig(t *testing.T, server string, port int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, serveWait)
	defer cancel()
	var last bed.Result
	err := bed.Poll(ctx, 200*time.Millisecond, func() (bool, error) {
		last = w.client.Dig(w.ctx, server, port, "dualstack.test.")
		return last.OK() && strings.TrimSpace(last.Out) != "", nil
	})
	if err != nil {
		t.Fatalf("UDP %s never answered within %v (last: %s): %v", net.JoinHostPort(server, strconv.Itoa(port)), serveWait, last, err)
	}
	return strings.TrimSpace(last.Out)
}

// External and load-balancer IPs of the served service: the client's
// default routes lead to the node, where the portal rules catch them.
const (
	extIP4, extIP6 = "10.250.0.10", "fd00:10:250::10"
	lbIP4, lbIP6   = "10.251.0.10", "fd00:10:251::10"
)

// TestDualStackServe: a RequireDualStack LoadBalancer Service with an external
// and a load-balancer IP of each family is served on every IPv6 address
// (ClusterIP TCP and UDP, [NodeIP6]:nodePort TCP and UDP, external and LB
// IP; ClusterIP and node port also from the node itself) as on IPv4, through uproxy's ip6tables portal rules; a restarted
// uproxy takes each family's proxy port back from the installed rules and
// leaves both families' portal rules as they were.
func TestDualStackServe(t *testing.T) {
	w := newDualWorld(t, "dualstack-serve")
	pod, ip4, _ := w.deployEcho("web")
	s := w.dualService("web", "web", corev1.ServiceTypeLoadBalancer) // node ports too
	s.Spec.ExternalIPs = []string{extIP4, extIP6}
	s, err := w.b.Client.CoreV1().Services(w.ns).Update(w.ctx, s, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lbIP4}, {IP: lbIP6}}
	if s, err = w.b.Client.CoreV1().Services(w.ns).UpdateStatus(w.ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.b.WaitEndpoints(w.ctx, w.ns, "web", 2); err != nil { // one per family
		t.Fatal(err)
	}
	var nodePort, udpNodePort int32
	for _, p := range s.Spec.Ports {
		if p.Name == "http" {
			nodePort = p.NodePort
		} else {
			udpNodePort = p.NodePort
		}
	}
	cases := []struct{ name, url string }{
		{"IPv4 ClusterIP", url(s.Spec.ClusterIPs[0], portHTTP)},
		{"IPv6 ClusterIP", url(s.Spec.ClusterIPs[1], portHTTP)},
		{"IPv4 NodePort", url(bed.NodeIP, nodePort)},
		{"IPv6 NodePort", url(bed.NodeIP6, nodePort)},
		{"IPv4 external IP", url(extIP4, portHTTP)},
		{"IPv6 external IP", url(extIP6, portHTTP)},
		{"IPv4 LB IP", url(lbIP4, portHTTP)},
		{"IPv6 LB IP", url(lbIP6, portHTTP)},
	}
	udp := []struct {
		name   string
		server string
		port   int
	}{
		{"IPv4 UDP ClusterIP", s.Spec.ClusterIPs[0], portUDP},
		{"IPv6 UDP ClusterIP", s.Spec.ClusterIPs[1], portUDP},
		{"IPv6 UDP NodePort", bed.NodeIP6, int(udpNodePort)},
	}
	check := func(when string) {
		for _, c := range cases {
			t.Run(when+" "+c.name, func(t *testing.T) {
				start := time.Now()
				if got := w.waitHello(t, c.url); got != pod {
					t.Fatalf("%s answered by %q, want %q", c.url, got, pod)
				}
				t.Logf("%s: %s answered after %v", c.name, c.url, time.Since(start).Round(time.Millisecond))
			})
		}
		// From the node itself (KUBE-PORTALS-HOST / KUBE-NODEPORT-HOST:
		// DNAT to [NodeIP6]:proxyPort, REDIRECT would pick ::1).
		for _, u := range []string{url(s.Spec.ClusterIPs[1], portHTTP), url(bed.NodeIP6, nodePort)} {
			t.Run(when+" from the node "+u, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(w.ctx, serveWait)
				defer cancel()
				var out string
				var err error
				if perr := bed.Poll(ctx, 200*time.Millisecond, func() (bool, error) {
					out, err = w.b.Node.Output(ctx, "curl", "-g", "-sS", "--max-time", "2", u)
					got, ok := bed.ParseHello(out)
					return err == nil && ok && got == pod, nil
				}); perr != nil {
					t.Fatalf("%s from the node never answered by %s within %v (last: %q, %v)", u, pod, serveWait, out, err)
				}
			})
		}
		for _, c := range udp {
			t.Run(when+" "+c.name, func(t *testing.T) {
				if got := w.waitDig(t, c.server, c.port); got != ip4 { // the echoserver answers with POD_IP
					t.Fatalf("UDP %s:%d answered %q, want the pod's %s", c.server, c.port, got, ip4)
				}
			})
		}
	}
	check("first")
	rules4, rules6 := w.portalRules("iptables-save"), w.portalRules("ip6tables-save")
	if !strings.Contains(rules6, "-d "+s.Spec.ClusterIPs[1]+"/128") || !strings.Contains(rules6, "-d "+extIP6+"/128") {
		t.Errorf("no ip6tables portal rule for %s or %s:\n%s", s.Spec.ClusterIPs[1], extIP6, rules6)
	}

	// Restart: SIGTERM leaves the rules; the new uproxy reopens both
	// families' proxy ports and rewrites nothing.
	if err, killed := w.u.Proc.Stop(10 * time.Second); err != nil || killed {
		t.Fatalf("first uproxy did not exit cleanly: %v killed=%v", err, killed)
	}
	w.u = w.b.StartUproxy(t, bed.UproxyOptions{})
	check("restarted")
	if got := w.portalRules("ip6tables-save"); got != rules6 {
		t.Errorf("ip6tables portal rules changed across a restart:\nbefore:\n%s\nafter:\n%s", rules6, got)
	}
	if got := w.portalRules("iptables-save"); got != rules4 {
		t.Errorf("iptables portal rules changed across a restart:\nbefore:\n%s\nafter:\n%s", rules4, got)
	}
	result := "served"
	if t.Failed() {
		result = "NOT all served"
	}
	fmt.Printf("SUMMARY TestDualStackServe: IPv4+IPv6 ClusterIP, NodePort, external and LB IP (TCP), IPv4+IPv6 ClusterIP and IPv6 NodePort (UDP) %s by pod %s, before and after a restart (portal rules unchanged: %v)\n",
		result, pod, !t.Failed())
}

// portalRules returns the nat table's portal and node-port rules (KUBE-*
// chains) in the node namespace, sorted, as save (iptables-save or
// ip6tables-save) prints them.
func (w *dualWorld) portalRules(save string) string {
	w.t.Helper()
	out, err := w.b.Node.Output(w.ctx, save, "-t", "nat")
	if err != nil {
		w.t.Fatalf("%s: %v", save, err)
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "-A KUBE-") {
			lines = append(lines, l)
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// TestDualStackFamiliesApart: a selectorless dual-stack Service whose IPv4
// EndpointSlice names pod A and whose IPv6 slice names pod B. Every request
// to the IPv4 ClusterIP must reach A and every one to the IPv6 ClusterIP B
// (with one merged endpoint list per port, about half went to the other
// family's pod).
func TestDualStackFamiliesApart(t *testing.T) {
	w := newDualWorld(t, "dualstack-apart")
	podA, a4, _ := w.deployEcho("a")
	podB, b4, b6 := w.deployEcho("b")
	s := w.dualService("split", "", corev1.ServiceTypeClusterIP)
	w.manualSlice("split", discoveryv1.AddressTypeIPv4, a4)
	w.manualSlice("split", discoveryv1.AddressTypeIPv6, b6)
	u4, u6 := url(s.Spec.ClusterIPs[0], portHTTP), url(s.Spec.ClusterIPs[1], portHTTP)
	w.waitHello(t, u4)
	w.waitHello(t, u6)
	const n = 20
	for _, c := range []struct {
		family, url, want string
	}{{"IPv4", u4, podA}, {"IPv6", u6, podB}} {
		got := map[string]int{}
		for range n {
			pod, r := w.hello(c.url)
			if pod == "" {
				pod = "error: " + r.String()
			}
			got[pod]++
		}
		if got[c.want] != n {
			t.Errorf("%s ClusterIP %s: answers %v, want all %d from %s (the %s slice's only endpoint)", c.family, c.url, got, n, c.want, c.family)
		}
		fmt.Printf("SUMMARY TestDualStackFamiliesApart: %s ClusterIP %d/%d requests to %s\n", c.family, got[c.want], n, c.want)
	}
	// UDP keeps families apart too: every query (a new client port, so a
	// new UDP session each) to the IPv4 ClusterIP is answered by A, to the
	// IPv6 one by B (the echoserver answers with its pod's IPv4 POD_IP).
	for _, c := range []struct{ family, server, want string }{
		{"IPv4", s.Spec.ClusterIPs[0], a4}, {"IPv6", s.Spec.ClusterIPs[1], b4},
	} {
		w.waitDig(t, c.server, portUDP)
		got := map[string]int{}
		for range n {
			r := w.client.Dig(w.ctx, c.server, portUDP, "dualstack.test.")
			got[strings.TrimSpace(r.Out)]++
		}
		if got[c.want] != n {
			t.Errorf("UDP %s ClusterIP %s: answers %v, want all %d from %s", c.family, c.server, got, n, c.want)
		}
		fmt.Printf("SUMMARY TestDualStackFamiliesApart: UDP %s ClusterIP %d/%d queries answered by %s\n", c.family, got[c.want], n, c.want)
	}
}
