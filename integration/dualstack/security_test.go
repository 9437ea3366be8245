package dualstack

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/uproxy/uproxy/integration/bed"
)

// LB ingress IPs the test writes into the Service's status (documentation
// ranges; the clients route everything via the node).
const (
	secLBIP4 = "192.0.2.60"
	secLBIP6 = "2001:db8::60"
)

// TestDualStackSourceRangesAndProxyPorts (issue 15 item 1, IPv6 side): a
// dual-stack LoadBalancer Service whose loadBalancerSourceRanges list only
// client A's IPv6 address. Its IPv6 LB IP serves A and drops client B; its
// IPv4 LB IP admits nobody (ranges of the other family only: the
// restriction fails closed); the IPv6 proxy port dialled directly at
// [nodeIPv6]:proxyPort is dropped.
func TestDualStackSourceRangesAndProxyPorts(t *testing.T) {
	w := newDualWorld(t, "dualstack-security")
	pod, _, _ := w.deployEcho("web")
	clientB := w.b.NewClient(t)
	policy := corev1.IPFamilyPolicyRequireDualStack
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "lb"},
		Spec: corev1.ServiceSpec{
			Type:                     corev1.ServiceTypeLoadBalancer,
			IPFamilyPolicy:           &policy,
			Selector:                 map[string]string{"app": "web"},
			Ports:                    []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: portHTTP, TargetPort: intstr.FromInt32(8080)}},
			LoadBalancerSourceRanges: []string{w.client.IP6 + "/128"},
		},
	}
	created, err := w.b.Client.CoreV1().Services(w.ns).Create(w.ctx, s, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: secLBIP4}, {IP: secLBIP6}}
	if _, err := w.b.Client.CoreV1().Services(w.ns).UpdateStatus(w.ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := w.waitHello(t, url(secLBIP6, portHTTP)); got != pod {
		t.Fatalf("client A -> IPv6 LB answered by %q, want %s", got, pod)
	}
	// The ClusterIPs answer from B: source ranges are for LB IPs only.
	w.waitHello(t, url(created.Spec.ClusterIPs[1], portHTTP))

	curl := func(c *bed.Client, u string) bed.Result {
		return c.Run(w.ctx, "", "curl", "-g", "-sS", "--max-time", "2", u)
	}
	rules, err := w.b.Node.Output(w.ctx, "ip6tables-save", "-t", "nat")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`-A KUBE-PORTALS-CONTAINER -d ` + regexp.QuoteMeta(created.Spec.ClusterIPs[1]) + `/128 -p tcp .* -j REDIRECT --to-ports (\d+)`)
	m := re.FindStringSubmatch(rules)
	if m == nil {
		t.Fatalf("no IPv6 REDIRECT for %s in:\n%s", created.Spec.ClusterIPs[1], rules)
	}
	proxyPort, _ := strconv.Atoi(m[1])
	direct := "http://" + net.JoinHostPort(bed.NodeIP6, m[1]) + "/"

	checks := []struct {
		name   string
		client *bed.Client
		url    string
		served bool
	}{
		{"A (listed) -> IPv6 LB", w.client, url(secLBIP6, portHTTP), true},
		{"B (not listed) -> IPv6 LB", clientB, url(secLBIP6, portHTTP), false},
		{"A -> IPv4 LB (no IPv4 range listed)", w.client, url(secLBIP4, portHTTP), false},
		{"B -> IPv6 ClusterIP", clientB, url(created.Spec.ClusterIPs[1], portHTTP), true},
		{"A -> [nodeIPv6]:proxyPort directly", w.client, direct, false},
	}
	var summary []string
	for _, c := range checks {
		r := curl(c.client, c.url)
		if r.OK() != c.served {
			t.Errorf("%s (%s): served=%v, want %v: %s", c.name, c.url, r.OK(), c.served, r)
		}
		summary = append(summary, fmt.Sprintf("%s: served=%v exit=%d %v", c.name, r.OK(), r.Code, r.Dur.Round(time.Millisecond)))
	}
	// Gone from the node itself too? No: lo is left to the host firewall.
	ctx, cancel := context.WithTimeout(w.ctx, 3*time.Second)
	defer cancel()
	if c, err := w.b.Node.DialContext(ctx, "tcp", net.JoinHostPort(bed.NodeIP6, m[1])); err != nil {
		t.Errorf("node itself -> [%s]:%d: %v", bed.NodeIP6, proxyPort, err)
	} else {
		c.Close()
	}
	fmt.Printf("SUMMARY TestDualStackSourceRangesAndProxyPorts: %v\n", summary)
}
