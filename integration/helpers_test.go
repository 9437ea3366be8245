package integration

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/uproxy/uproxy/integration/bed"
)

// world is one scenario's share of the bed: its namespace, a uproxy, a client.
type world struct {
	t      *testing.T
	b      *bed.Bed
	ns     string
	ctx    context.Context
	client *bed.Client
	proxy  *bed.Uproxy
}

// newWorld starts uproxy for this test in the shared bed's node and a client
// namespace; everything goes away in t.Cleanup.
func newWorld(t *testing.T, namespace string, timeout time.Duration) *world {
	t.Helper()
	b := bed.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	w := &world{t: t, b: b, ctx: ctx}
	w.ns = b.Namespace(t, namespace)
	w.proxy = b.StartUproxy(t, bed.UproxyOptions{})
	w.client = b.NewClient(t)
	return w
}

// deploy creates the deployment and service, waits for the rollout and the
// endpoints, and returns the service as stored (ClusterIP, NodePorts).
func (w *world) deploy(d *appsv1.Deployment, svc *corev1.Service) *corev1.Service {
	w.t.Helper()
	if _, err := w.b.Client.AppsV1().Deployments(w.ns).Create(w.ctx, d, metav1.CreateOptions{}); err != nil {
		w.t.Fatal(err)
	}
	if err := w.b.WaitDeployment(w.ctx, w.ns, d.Name); err != nil {
		w.t.Fatal(err)
	}
	if svc == nil {
		return nil
	}
	return w.createService(svc, int(*d.Spec.Replicas))
}

func (w *world) createService(svc *corev1.Service, endpoints int) *corev1.Service {
	w.t.Helper()
	created, err := w.b.Client.CoreV1().Services(w.ns).Create(w.ctx, svc, metav1.CreateOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := w.b.WaitEndpoints(w.ctx, w.ns, svc.Name, endpoints); err != nil {
		w.t.Fatal(err)
	}
	return created
}

// waitHello waits until url answers through the proxy.
func (w *world) waitHello(url string) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, 20*time.Second)
	defer cancel()
	if _, err := w.client.WaitHello(ctx, url); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) scale(name string, n int32) {
	w.t.Helper()
	if err := w.b.Scale(w.ctx, w.ns, name, n); err != nil {
		w.t.Fatal(err)
	}
	if err := w.b.WaitDeployment(w.ctx, w.ns, name); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) readyPods(app string) []string {
	w.t.Helper()
	pods, err := w.b.ReadyPods(w.ctx, w.ns, app)
	if err != nil {
		w.t.Fatal(err)
	}
	return pods
}

func (w *world) sleep(d time.Duration) {
	select {
	case <-w.ctx.Done():
	case <-time.After(d):
	}
}

// summary prints the scenario's one SUMMARY line.
func summary(name string, format string, args ...any) string {
	line := fmt.Sprintf("SUMMARY %s: %s", name, fmt.Sprintf(format, args...))
	fmt.Println(line)
	return line
}

func url(ip string, port int32, path string) string {
	return fmt.Sprintf("http://%s:%d%s", ip, port, path)
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// natRules is the node's nat table without comments and counters.
func (w *world) natRules() string {
	w.t.Helper()
	out, err := w.b.NATRules(w.ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "#") || l == "" {
			continue
		}
		lines = append(lines, counters.ReplaceAllString(l, ""))
	}
	return strings.Join(lines, "\n")
}

// within reports whether got is within pct percent of want.
func within(got, want int, pct float64) bool {
	d := float64(got - want)
	return d <= float64(want)*pct/100 && -d <= float64(want)*pct/100
}

func ports(p ...corev1.ContainerPort) []corev1.ContainerPort { return p }

func httpPort(name string, port int32) corev1.ContainerPort {
	return corev1.ContainerPort{Name: name, ContainerPort: port, Protocol: corev1.ProtocolTCP}
}

// checkCutByTermination fails t unless every failure of s is a request cut
// after uproxy delivered it (curl 52: closed without an answer; 56: reset)
// and there are at most stopping of them, one per pod that stopped at
// SIGTERM while uproxy still sent to it. Such a pod resets the connections
// still in its accept queue, and a Go server that read a request after its
// Shutdown began closes it unanswered (net/http's conn.serve); uproxy does
// not replay a request the pod may have read (issue 15 item 7), as
// kube-proxy cannot (the README's exception).
func checkCutByTermination(t *testing.T, what string, s bed.Summary, stopping int) {
	t.Helper()
	cut := 0
	for _, x := range s.Failed {
		if strings.HasPrefix(x.Detail, "exit=52 ") || strings.HasPrefix(x.Detail, "exit=56 ") {
			cut++
		}
	}
	if s.Failures > cut || s.Failures > len(s.Failed) || cut > stopping {
		t.Errorf("%s: %d requests failed (%d cut after delivery, at most %d allowed, one per stopping pod): %v\n%s", what, s.Failures, cut, stopping, s, s.FailureDetail())
	} else if cut > 0 {
		t.Logf("%s: %d requests cut by pods stopping at SIGTERM (not replayed):\n%s", what, cut, s.FailureDetail())
	}
}
