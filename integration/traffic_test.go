package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/uproxy/uproxy/integration/bed"
)

// trafficWorld is TestTrafficPolicies' share of the bed: two echo pods (a,
// b) on the bed's node, and Services without selector whose EndpointSlices
// the test writes itself, so that an endpoint can claim to run on another
// node ("node2") or carry zone hints. The pods are real: whichever endpoint
// uproxy picks answers with its pod name.
type trafficWorld struct {
	*world
	podA, podB string // pod names
	ip         map[string]string
	zoneWas    *string // the node's zone label before the test (nil: none)
}

// TestTrafficPolicies checks issue 15 item 2 on the bed, as kube-proxy
// behaves: externalTrafficPolicy Local refuses external traffic when no
// endpoint is on this node and keeps it on local endpoints otherwise, while
// cluster traffic and the node's own connections use every endpoint;
// internalTrafficPolicy Local affects ClusterIP traffic only; zone hints
// (trafficDistribution PreferClose) keep cluster traffic in the node's
// zone; the healthCheckNodePort answers 503/200 with kube-proxy's body; eTP
// Local holds for UDP too.
func TestTrafficPolicies(t *testing.T) {
	w := &trafficWorld{world: newWorld(t, "traffic", 4*time.Minute), ip: map[string]string{}}
	w.deploy(bed.EchoDeployment("tp", 2, httpPort("http", 8080)), nil)
	pods, err := w.b.Client.CoreV1().Pods(w.ns).List(w.ctx, metav1.ListOptions{LabelSelector: "app=tp"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		w.ip[p.Name] = p.Status.PodIP
	}
	names := w.readyPods("tp")
	if len(names) != 2 {
		t.Fatalf("pods %v", names)
	}
	w.podA, w.podB = names[0], names[1]
	w.setZone(t, "zone-a")

	t.Run("externalTrafficPolicy Local", w.externalLocal)
	t.Run("internalTrafficPolicy Local", w.internalLocal)
	t.Run("PreferClose zone hints", w.preferClose)
	t.Run("healthCheckNodePort", w.healthCheck)
	t.Run("externalTrafficPolicy Local, UDP", w.externalLocalUDP)
}

func (w *trafficWorld) externalLocal(t *testing.T) {
	s := w.service(t, "etp", corev1.ServiceTypeNodePort, func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	})
	w.slice(t, "etp", w.ep(w.podA, "node2"))
	clusterURL := url(s.Spec.ClusterIP, 80, "/")
	nodeURL := url(bed.NodeIP, s.Spec.Ports[0].NodePort, "/")
	w.hello(t, clusterURL) // the portal rules of both listeners are in

	cluster := w.pods(t, clusterURL, 10)
	refused, last := w.failures(nodeURL, 5)
	resets := w.metric(t, `uproxy_connection_failures_total{protocol="TCP",reason="no_endpoint",service_port="`+w.ns+`/etp:http/external"}`)
	fromNode := w.nodeCurl(t, nodeURL)
	summary("traffic-etp-remote", "clusterIP %v; NodePort from a client: %d/5 refused (%s; reset by the external listener: %s); NodePort from the node: %q", cluster, refused, last, resets, fromNode)
	if cluster[w.podA] != 10 {
		t.Errorf("cluster traffic: %v, want all 10 to the remote endpoint %s", cluster, w.podA)
	}
	if refused != 5 || resets != "5" {
		t.Errorf("external traffic with no local endpoint: %d/5 refused, %s reset by the external listener; want all (kube-proxy drops it)", refused, resets)
	}
	if fromNode != w.podA {
		t.Errorf("the node's own connection to its NodePort answered by %q, want the cluster endpoint %s (kube-proxy: LOCAL traffic uses cluster endpoints)", fromNode, w.podA)
	}

	w.slice(t, "etp", w.ep(w.podA, "node2"), w.ep(w.podB, bed.NodeName))
	w.waitPod(t, nodeURL, w.podB)
	external := w.pods(t, nodeURL, 10)
	cluster = w.pods(t, clusterURL, 20)
	summary("traffic-etp-local", "NodePort %v; clusterIP %v", external, cluster)
	if external[w.podB] != 10 {
		t.Errorf("external traffic: %v, want all 10 to the local endpoint %s", external, w.podB)
	}
	if cluster[w.podA] == 0 || cluster[w.podB] == 0 {
		t.Errorf("cluster traffic: %v, want both endpoints", cluster)
	}
}

func (w *trafficWorld) internalLocal(t *testing.T) {
	s := w.service(t, "itp", corev1.ServiceTypeNodePort, func(s *corev1.Service) {
		s.Spec.InternalTrafficPolicy = ptrTo(corev1.ServiceInternalTrafficPolicyLocal)
	})
	w.slice(t, "itp", w.ep(w.podA, "node2"))
	nodeURL := url(bed.NodeIP, s.Spec.Ports[0].NodePort, "/")
	clusterURL := url(s.Spec.ClusterIP, 80, "/")
	w.hello(t, nodeURL)
	external := w.pods(t, nodeURL, 10)
	refused, last := w.failures(clusterURL, 5)
	summary("traffic-itp", "NodePort %v; clusterIP %d/5 refused (%s)", external, refused, last)
	if external[w.podA] != 10 {
		t.Errorf("external traffic: %v, want all 10 to %s (iTP Local does not apply to it)", external, w.podA)
	}
	if refused != 5 {
		t.Errorf("cluster traffic with no local endpoint: %d/5 refused, want all", refused)
	}
}

func (w *trafficWorld) preferClose(t *testing.T) {
	s := w.service(t, "zone", corev1.ServiceTypeClusterIP, func(s *corev1.Service) {
		s.Spec.TrafficDistribution = ptrTo(corev1.ServiceTrafficDistributionPreferClose)
	})
	// As the EndpointSlice controller writes them for PreferClose.
	a, b := w.ep(w.podA, bed.NodeName), w.ep(w.podB, "node2")
	a.Zone, b.Zone = ptrTo("zone-a"), ptrTo("zone-b")
	a.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "zone-a"}}}
	b.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "zone-b"}}}
	w.slice(t, "zone", a, b)
	u := url(s.Spec.ClusterIP, 80, "/")
	w.hello(t, u)
	inA := w.pods(t, u, 20)
	w.setZone(t, "zone-b")
	w.waitPod(t, u, w.podB)
	inB := w.pods(t, u, 20)
	summary("traffic-preferclose", "node in zone-a: %v; node in zone-b: %v", inA, inB)
	if inA[w.podA] != 20 {
		t.Errorf("node in zone-a: %v, want all 20 to the zone-a endpoint %s", inA, w.podA)
	}
	if inB[w.podB] != 20 {
		t.Errorf("node in zone-b: %v, want all 20 to the zone-b endpoint %s", inB, w.podB)
	}
}

func (w *trafficWorld) healthCheck(t *testing.T) {
	s := w.service(t, "lb", corev1.ServiceTypeLoadBalancer, func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	})
	hc := s.Spec.HealthCheckNodePort
	if hc == 0 {
		t.Fatal("the API server allocated no healthCheckNodePort")
	}
	w.slice(t, "lb", w.ep(w.podA, "node2"))
	hcURL := url(bed.NodeIP, hc, "/")
	// A Go client in the client namespace, as a cloud load balancer asks.
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: w.client.NS.DialContext, DisableKeepAlives: true}}
	type answer struct {
		code int
		body string
		hdr  http.Header
	}
	ask := func() (answer, error) {
		resp, err := c.Get(hcURL)
		if err != nil {
			return answer{}, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return answer{resp.StatusCode, string(b), resp.Header}, err
	}
	waitCode := func(code int) answer {
		t.Helper()
		var last answer
		var lastErr error
		ctx, cancel := context.WithTimeout(w.ctx, 20*time.Second)
		defer cancel()
		err := bed.Poll(ctx, 100*time.Millisecond, func() (bool, error) {
			last, lastErr = ask()
			return lastErr == nil && last.code == code, nil
		})
		if err != nil {
			t.Fatalf("health check %s never answered %d (last %d %q, %v)", hcURL, code, last.code, last.body, lastErr)
		}
		return last
	}
	down := waitCode(http.StatusServiceUnavailable)
	w.slice(t, "lb", w.ep(w.podA, "node2"), w.ep(w.podB, bed.NodeName))
	up := waitCode(http.StatusOK)
	summary("traffic-healthcheck", "port %d: remote endpoint only %d %s; with a local one %d %s",
		hc, down.code, strings.Join(strings.Fields(down.body), ""), up.code, strings.Join(strings.Fields(up.body), ""))
	want := func(a answer, n int) {
		t.Helper()
		var body struct {
			Service             struct{ Namespace, Name string } `json:"service"`
			LocalEndpoints      int                              `json:"localEndpoints"`
			ServiceProxyHealthy bool                             `json:"serviceProxyHealthy"`
		}
		if err := json.Unmarshal([]byte(a.body), &body); err != nil {
			t.Fatalf("body %q: %v", a.body, err)
		}
		if body.Service.Namespace != w.ns || body.Service.Name != "lb" || body.LocalEndpoints != n || !body.ServiceProxyHealthy {
			t.Errorf("body %q: want service %s/lb, localEndpoints %d, serviceProxyHealthy true", a.body, w.ns, n)
		}
		if a.hdr.Get("Content-Type") != "application/json" || a.hdr.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("headers %v", a.hdr)
		}
	}
	want(down, 0)
	want(up, 1)
}

// externalLocalUDP: as externalLocal, for UDP (DNS queries answered by the
// echo pods with their own address): external datagrams with no local
// endpoint get no answer, cluster ones are answered.
func (w *trafficWorld) externalLocalUDP(t *testing.T) {
	w.deploy(bed.EchoDeployment("tpu", 2, corev1.ContainerPort{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}), nil)
	pods, err := w.b.Client.CoreV1().Pods(w.ns).List(w.ctx, metav1.ListOptions{LabelSelector: "app=tpu"})
	if err != nil || len(pods.Items) != 2 {
		t.Fatalf("pods: %v, %v", pods, err)
	}
	ipA, ipB := pods.Items[0].Status.PodIP, pods.Items[1].Status.PodIP
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "etpu"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			Ports: []corev1.ServicePort{{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53}}},
	}
	s, err = w.b.Client.CoreV1().Services(w.ns).Create(w.ctx, s, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	udpEP := func(ip, node string) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptrTo(true)}, NodeName: ptrTo(node)}
	}
	write := func(eps ...discoveryv1.Endpoint) {
		es := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: "etpu-test", Labels: map[string]string{
				discoveryv1.LabelServiceName: "etpu", discoveryv1.LabelManagedBy: "uproxy-integration-test",
			}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptrTo("dns"), Port: ptrTo(int32(53)), Protocol: ptrTo(corev1.ProtocolUDP)}},
			Endpoints:   eps,
		}
		api := w.b.Client.DiscoveryV1().EndpointSlices(w.ns)
		if old, err := api.Get(w.ctx, es.Name, metav1.GetOptions{}); err == nil {
			es.ResourceVersion = old.ResourceVersion
			_, err = api.Update(w.ctx, es, metav1.UpdateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return
		}
		if _, err := api.Create(w.ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	np := int(s.Spec.Ports[0].NodePort)
	answers := func(host string, port, n int) map[string]int {
		out := map[string]int{}
		for range n {
			r := w.client.Dig(w.ctx, host, port, "echo.example.")
			a := strings.TrimSpace(r.Out)
			if _, err := netip.ParseAddr(a); err != nil || !r.OK() {
				a = "none" // dig prints its timeout on stdout
			}
			out[a]++
		}
		return out
	}
	waitAnswer := func(host string, port int, want string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(w.ctx, 20*time.Second)
		defer cancel()
		var last bed.Result
		if err := bed.Poll(ctx, 100*time.Millisecond, func() (bool, error) {
			last = w.client.Dig(ctx, host, port, "echo.example.")
			return strings.TrimSpace(last.Out) == want, nil
		}); err != nil {
			t.Fatalf("%s:%d never answered %s (last %s): %v", host, port, want, last, err)
		}
	}
	write(udpEP(ipA, "node2"))
	waitAnswer(s.Spec.ClusterIP, 53, ipA)
	cluster := answers(s.Spec.ClusterIP, 53, 5)
	external := answers(bed.NodeIP, np, 3)
	write(udpEP(ipA, "node2"), udpEP(ipB, bed.NodeName))
	waitAnswer(bed.NodeIP, np, ipB)
	externalLocal := answers(bed.NodeIP, np, 5)
	summary("traffic-etp-udp", "remote endpoint %s only: clusterIP %v, NodePort %v; local endpoint %s added: NodePort %v",
		ipA, cluster, external, ipB, externalLocal)
	if cluster[ipA] != 5 {
		t.Errorf("cluster traffic: %v, want 5 answers from %s", cluster, ipA)
	}
	if external["none"] != 3 {
		t.Errorf("external traffic with no local endpoint: %v, want no answer to any of 3 queries", external)
	}
	if externalLocal[ipB] != 5 {
		t.Errorf("external traffic: %v, want 5 answers from the local endpoint %s", externalLocal, ipB)
	}
}

// service creates a Service without selector (its slices are the test's)
// with one TCP port http 80 -> 8080.
func (w *trafficWorld) service(t *testing.T, name string, typ corev1.ServiceType, mod func(*corev1.Service)) *corev1.Service {
	t.Helper()
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.ServiceSpec{Type: typ, Ports: []corev1.ServicePort{bed.TCPPort("http", 80, 8080)}},
	}
	mod(s)
	created, err := w.b.Client.CoreV1().Services(w.ns).Create(w.ctx, s, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return created
}

// slice writes the Service's one EndpointSlice with eps.
func (w *trafficWorld) slice(t *testing.T, svcName string, eps ...discoveryv1.Endpoint) {
	t.Helper()
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svcName + "-test", Labels: map[string]string{
			discoveryv1.LabelServiceName: svcName, discoveryv1.LabelManagedBy: "uproxy-integration-test",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptrTo("http"), Port: ptrTo(int32(8080)), Protocol: ptrTo(corev1.ProtocolTCP)}},
		Endpoints:   eps,
	}
	api := w.b.Client.DiscoveryV1().EndpointSlices(w.ns)
	old, err := api.Get(w.ctx, es.Name, metav1.GetOptions{})
	if err == nil {
		es.ResourceVersion = old.ResourceVersion
		_, err = api.Update(w.ctx, es, metav1.UpdateOptions{})
	} else {
		_, err = api.Create(w.ctx, es, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// ep is pod's endpoint, claimed to run on node.
func (w *trafficWorld) ep(pod, node string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{w.ip[pod]},
		Conditions: discoveryv1.EndpointConditions{Ready: ptrTo(true), Serving: ptrTo(true), Terminating: ptrTo(false)},
		NodeName:   ptrTo(node),
		TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: w.ns, Name: pod},
	}
}

// pods sends n requests from the client namespace and counts the answering
// pods ("" counts failures).
func (w *trafficWorld) pods(t *testing.T, u string, n int) map[string]int {
	t.Helper()
	out := map[string]int{}
	for range n {
		r := w.client.Curl(w.ctx, u, 2*time.Second)
		pod, _ := bed.ParseHello(r.Out)
		if !r.OK() {
			pod = ""
		}
		out[pod]++
	}
	return out
}

// failures sends n requests and counts those that fail, with the last error.
func (w *trafficWorld) failures(u string, n int) (int, string) {
	failed, last := 0, ""
	for range n {
		if r := w.client.Curl(w.ctx, u, 2*time.Second); !r.OK() {
			failed++
			last = fmt.Sprintf("curl exit %d: %s", r.Code, strings.TrimSpace(r.Err))
		}
	}
	return failed, last
}

// hello waits until u answers through the proxy (world.waitHello, failing
// t rather than the parent test).
func (w *trafficWorld) hello(t *testing.T, u string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, 20*time.Second)
	defer cancel()
	if _, err := w.client.WaitHello(ctx, u); err != nil {
		t.Fatal(err)
	}
}

// waitPod waits until u is answered by pod.
func (w *trafficWorld) waitPod(t *testing.T, u, pod string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, 20*time.Second)
	defer cancel()
	err := bed.Poll(ctx, 100*time.Millisecond, func() (bool, error) {
		got, _ := bed.ParseHello(w.client.Curl(w.ctx, u, time.Second).Out)
		return got == pod, nil
	})
	if err != nil {
		t.Fatalf("%s never answered by %s: %v", u, pod, err)
	}
}

// metric returns the value of one line of uproxy's /metrics ("" if absent).
func (w *trafficWorld) metric(t *testing.T, series string) string {
	t.Helper()
	out, err := w.b.Node.Output(w.ctx, "curl", "-sS", "--max-time", "2", "http://"+bed.MetricsAddr+"/metrics")
	if err != nil {
		t.Fatalf("metrics: %v: %s", err, out)
	}
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			return v
		}
	}
	return ""
}

// nodeCurl fetches u from the node namespace itself and returns the pod.
func (w *trafficWorld) nodeCurl(t *testing.T, u string) string {
	t.Helper()
	out, err := w.b.Node.Output(w.ctx, "curl", "-sS", "--max-time", "2", u)
	if err != nil {
		return "error: " + strings.TrimSpace(out)
	}
	pod, _ := bed.ParseHello(out)
	return pod
}

// setZone labels the bed's node with zone (topology.kubernetes.io/zone);
// the first call arranges for the old label to come back at cleanup.
func (w *trafficWorld) setZone(t *testing.T, zone string) {
	t.Helper()
	nodes := w.b.Client.CoreV1().Nodes()
	n, err := nodes.Get(w.ctx, bed.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if w.zoneWas == nil {
		was, had := n.Labels[corev1.LabelTopologyZone]
		w.zoneWas = &was
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			n, err := nodes.Get(ctx, bed.NodeName, metav1.GetOptions{})
			if err != nil {
				t.Errorf("restoring the node's zone: %v", err)
				return
			}
			if had {
				n.Labels[corev1.LabelTopologyZone] = was
			} else {
				delete(n.Labels, corev1.LabelTopologyZone)
			}
			if _, err := nodes.Update(ctx, n, metav1.UpdateOptions{}); err != nil {
				t.Errorf("restoring the node's zone: %v", err)
			}
		})
	}
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	n.Labels[corev1.LabelTopologyZone] = zone
	if _, err := nodes.Update(w.ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func ptrTo[T any](v T) *T { return &v }
