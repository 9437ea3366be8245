package reliability

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/uproxy/uproxy/integration/bed"
)

// lbIP is the load-balancer ingress IP the test writes into the Service's
// status (TEST-NET-1; the clients route everything via the node, so it is
// never sent anywhere else).
const lbIP = "192.0.2.50"

// TestProxyPortsOnlyAsPortals (issue 15 item 1): from two "outside" hosts on
// the node's bridge,
//   - the service answers through its portals (ClusterIP, NodePort, TCP and
//     UDP), but the proxy ports behind them, dialled directly at
//     nodeIP:proxyPort, do not (the SYN or datagram is dropped);
//   - the node itself still reaches nodeIP:proxyPort (left to the host
//     firewall), and 127.0.0.1:nodePort;
//   - a LoadBalancer IP whose Service lists loadBalancerSourceRanges =
//     [client A/32] serves client A and drops client B (counted by the DROP
//     rule in UPROXY-LB-FIREWALL).
func TestProxyPortsOnlyAsPortals(t *testing.T) {
	w := newWorld(t, "sec-portals", 3*time.Minute)
	e := w.deployEcho("echo", 1)
	outsider := w.b.NewClient(t) // client B: not in the source ranges
	lb := w.createLB("echo", []string{w.client.IP + "/32"})
	w.b.StartUproxy(t, bed.UproxyOptions{SyncPeriod: syncPeriod})
	w.waitServed(e)
	ctx := w.ctx

	rules, err := w.b.NATRules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	httpProxy := proxyPortOf(t, rules, w.ns+"/echo:http", "tcp")
	udpProxy := proxyPortOf(t, rules, w.ns+"/echo:udp", "udp")
	direct := fmt.Sprintf("http://%s:%d/", bed.NodeIP, httpProxy)
	viaNodePort := fmt.Sprintf("http://%s:%d/", bed.NodeIP, lb.nodePort)
	viaLB := fmt.Sprintf("http://%s:%d/", lbIP, portHTTP)

	// Portals answer; wait for the LB rules (same sync as the ClusterIP's,
	// but the LB service may come a sync later).
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := w.client.WaitHello(wctx, viaLB); err != nil {
		t.Fatalf("client A (in loadBalancerSourceRanges) -> LB IP: %v", err)
	}
	for _, url := range []string{e.url(), viaNodePort} {
		if r := w.client.Curl(ctx, url, 3*time.Second); !r.OK() {
			t.Errorf("portal %s: %s", url, r)
		}
	}
	if r := w.client.NCUDP(ctx, e.ip, portUDP, "ping\n", time.Second); !strings.Contains(r.Out, "ping") {
		t.Errorf("UDP portal %s:%d: %s", e.ip, portUDP, r)
	}

	// The proxy ports themselves: dropped from outside (a timeout, no
	// answer), served to the node itself.
	rDirect := w.client.Curl(ctx, direct, 2*time.Second)
	if rDirect.OK() {
		t.Errorf("client reached proxy port %s directly: %s", direct, rDirect)
	}
	rUDP := w.client.NCUDP(ctx, bed.NodeIP, int(udpProxy), "ping\n", time.Second)
	if strings.Contains(rUDP.Out, "ping") {
		t.Errorf("client reached UDP proxy port %s:%d directly: %s", bed.NodeIP, udpProxy, rUDP)
	}
	// The listener is dual-stack while the bed's node has no IPv6 node IP:
	// its bridge's IPv6 link-local address must not be a way in either.
	ll := nodeLinkLocal(t, w)
	llReached := false
	if ll != "" {
		addr := fmt.Sprintf("[%s%%eth0]:%d", ll, httpProxy)
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := w.client.NS.DialContext(dctx, "tcp", addr)
		cancel()
		if err == nil {
			llReached = true
			c.Close()
			t.Errorf("client reached proxy port %s over IPv6 link-local", addr)
		}
	}
	// The node itself: nodeIP:proxyPort (not redirected, from lo) and, as
	// kube-proxy's localhost NodePorts, 127.0.0.1:nodePort (KUBE-NODEPORT-HOST
	// DNATs it to nodeIP:proxyPort).
	for _, url := range []string{direct, fmt.Sprintf("http://127.0.0.1:%d/", lb.nodePort)} {
		if code, body, err := w.b.HTTPGet(ctx, url); err != nil || code != 200 || !strings.Contains(body, "Hello") {
			t.Errorf("node itself -> %s: %d %v %q", url, code, err, body)
		}
	}

	// loadBalancerSourceRanges: client B is dropped, client A served.
	drops0 := lbDrops(t, w)
	rB := outsider.Curl(ctx, viaLB, 2*time.Second)
	if rB.OK() {
		t.Errorf("client B %s (outside loadBalancerSourceRanges) served by %s: %s", outsider.IP, viaLB, rB)
	}
	drops := lbDrops(t, w) - drops0
	if drops == 0 {
		t.Errorf("client B's SYNs to %s were not dropped by UPROXY-LB-FIREWALL (counter +0)", viaLB)
	}
	rA := w.client.Curl(ctx, viaLB, 3*time.Second)
	if !rA.OK() {
		t.Errorf("client A %s -> %s: %s", w.client.IP, viaLB, rA)
	}
	// Client B still gets the ClusterIP portal (source ranges are for LB IPs).
	if r := outsider.Curl(ctx, e.url(), 3*time.Second); !r.OK() {
		t.Errorf("client B -> ClusterIP %s: %s", e.url(), r)
	}
	summary("proxy-ports-only-as-portals", "direct nodeIP:%d (tcp) from outside: ok=%v exit=%d after %v; nodeIP:%d (udp): answer=%q; [%s]:proxyPort (node link-local) reached=%v; node itself: served; LB %s from B (not listed): ok=%v exit=%d after %v, LB-firewall drops +%d; from A (listed): ok=%v in %v",
		httpProxy, rDirect.OK(), rDirect.Code, rDirect.Dur.Round(time.Millisecond), udpProxy, strings.TrimSpace(rUDP.Out), ll, llReached,
		lbIP, rB.OK(), rB.Code, rB.Dur.Round(time.Millisecond), drops, rA.OK(), rA.Dur.Round(time.Millisecond))
}

// lbService is the LoadBalancer service createLB made.
type lbService struct{ nodePort int32 }

// createLB creates <name>-lb, a LoadBalancer service selecting app=<name>
// on the HTTP port with the given source ranges, and writes lbIP into its
// status (the bed has no cloud provider; nothing else writes it).
func (w *world) createLB(name string, ranges []string) lbService {
	w.t.Helper()
	s := bed.ServiceFor(name, bed.TCPPort("http", portHTTP, 8080))
	s.Name = name + "-lb"
	s.Spec.Type = corev1.ServiceTypeLoadBalancer
	s.Spec.LoadBalancerSourceRanges = ranges
	created, err := w.b.Client.CoreV1().Services(w.ns).Create(w.ctx, s, metav1.CreateOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	created.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lbIP}}
	if _, err := w.b.Client.CoreV1().Services(w.ns).UpdateStatus(w.ctx, created, metav1.UpdateOptions{}); err != nil {
		w.t.Fatal(err)
	}
	return lbService{nodePort: created.Spec.Ports[0].NodePort}
}

// proxyPortOf finds a service port's proxy port in the nat rules (the
// REDIRECT of its ClusterIP portal).
func proxyPortOf(t *testing.T, natRules, comment, proto string) uint16 {
	t.Helper()
	re := regexp.MustCompile(`-A KUBE-PORTALS-CONTAINER -d \S+ -p ` + proto + ` -m comment --comment "` + regexp.QuoteMeta(comment) + `" .* -j REDIRECT --to-ports (\d+)`)
	m := re.FindStringSubmatch(natRules)
	if m == nil {
		t.Fatalf("no REDIRECT rule for %s in:\n%s", comment, natRules)
	}
	n, _ := strconv.ParseUint(m[1], 10, 16)
	return uint16(n)
}

// lbDrops sums the packet counters of UPROXY-LB-FIREWALL's rules.
func lbDrops(t *testing.T, w *world) int {
	t.Helper()
	out, err := w.b.Node.Output(w.ctx, "iptables", "-w", "-t", "filter", "-L", "UPROXY-LB-FIREWALL", "-v", "-x", "-n")
	if err != nil {
		t.Fatal(err)
	}
	sum := 0
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) > 2 && f[2] == "DROP" {
			n, _ := strconv.Atoi(f[0])
			sum += n
		}
	}
	return sum
}

// nodeLinkLocal returns the IPv6 link-local address of the node's bridge
// ("" when the namespace has IPv6 off).
func nodeLinkLocal(t *testing.T, w *world) string {
	t.Helper()
	out, err := w.b.Node.Output(w.ctx, "ip", "-6", "-o", "addr", "show", "dev", bed.BridgeName, "scope", "link")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(out) {
		if a, _, ok := strings.Cut(f, "/"); ok && strings.HasPrefix(a, "fe80:") {
			return a
		}
	}
	return ""
}
