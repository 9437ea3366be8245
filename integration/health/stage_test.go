package health

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/uproxy/uproxy/integration/bed"
)

// app is the deployment and service name of every scenario (each scenario
// has its own Kubernetes namespace).
const app = "web"

// stage is one scenario's share of the bed: a namespace with the deployment
// and its service, reached through uproxy at url.
type stage struct {
	t      *testing.T
	b      *bed.Bed
	ctx    context.Context
	ns     string
	client *bed.Client
	url    string
	pods   []string // ready pods before the loop starts, sorted
}

// newStage creates the namespace, a deployment of replicas echoservers and
// its ClusterIP service, and waits until uproxy answers for it.
func newStage(t *testing.T, b *bed.Bed, client *bed.Client, ns string, replicas int32) *stage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	s := &stage{t: t, b: b, ctx: ctx, client: client, ns: b.Namespace(t, ns)}
	// Runs before the namespace cleanup (t.Cleanup is LIFO): scaling to 0
	// first leaves the ReplicaSet nothing to re-create while the namespace
	// is emptied (the bed's cleanup deletes pods before their owners are gone).
	t.Cleanup(s.scaleToZero)
	d := bed.EchoDeployment(app, replicas, corev1.ContainerPort{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP})
	if _, err := b.Client.AppsV1().Deployments(s.ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := b.WaitDeployment(ctx, s.ns, app); err != nil {
		t.Fatal(err)
	}
	svc, err := b.Client.CoreV1().Services(s.ns).Create(ctx, bed.ServiceFor(app, bed.TCPPort("http", 80, 8080)), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.WaitEndpoints(ctx, s.ns, app, int(replicas)); err != nil {
		t.Fatal(err)
	}
	s.url = fmt.Sprintf("http://%s:80/", svc.Spec.ClusterIP)
	// Every pod answers through the proxy before measuring starts.
	seen := map[string]bool{}
	err = bed.Poll(ctx, 50*time.Millisecond, func() (bool, error) {
		r := client.Curl(ctx, s.url, time.Second)
		if pod, ok := bed.ParseHello(r.Out); ok {
			seen[pod] = true
		}
		return len(seen) == int(replicas), nil
	})
	if err != nil {
		t.Fatalf("%s: not every pod answered through the proxy (%v): %v", s.url, seen, err)
	}
	s.pods = s.readyPods()
	return s
}

func (s *stage) sleep(d time.Duration) { sleepCtx(s.ctx, d) }

// scaleToZero scales the deployment to 0 and waits up to a minute for its
// pods to go; a timeout is logged (the namespace cleanup reports it).
func (s *stage) scaleToZero() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.b.Scale(ctx, s.ns, app, 0); err != nil {
		s.t.Logf("scale %s/%s to 0: %v", s.ns, app, err)
		return
	}
	err := bed.Poll(ctx, 200*time.Millisecond, func() (bool, error) {
		pods, err := s.b.Client.CoreV1().Pods(s.ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		return err == nil && len(pods.Items) == 0, nil
	})
	if err != nil {
		s.t.Logf("pods of %s/%s still there a minute after scaling to 0: %v", s.ns, app, err)
	}
}

func (s *stage) readyPods() []string {
	s.t.Helper()
	pods, err := s.b.ReadyPods(s.ctx, s.ns, app)
	if err != nil {
		s.t.Fatal(err)
	}
	return pods
}

// scale sets the replicas and waits for the rollout to settle.
func (s *stage) scale(n int32) {
	s.t.Helper()
	if err := s.b.Scale(s.ctx, s.ns, app, n); err != nil {
		s.t.Fatal(err)
	}
	s.waitDeployment()
}

func (s *stage) waitDeployment() {
	s.t.Helper()
	if err := s.b.WaitDeployment(s.ctx, s.ns, app); err != nil {
		s.t.Fatal(err)
	}
}

// keep makes the ReplicaSet controller delete other pods first on scale-in
// (pod-deletion-cost), so a scale 3 -> 1 removes the pods a fault was put on.
func (s *stage) keep(pod string) {
	s.t.Helper()
	patch := []byte(`{"metadata":{"annotations":{"controller.kubernetes.io/pod-deletion-cost":"1000"}}}`)
	if _, err := s.b.Client.CoreV1().Pods(s.ns).Patch(s.ctx, pod, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
		s.t.Fatal(err)
	}
}

// metric sums a uproxy metric over the series of this scenario's service
// port whose labels also contain match.
func (s *stage) metric(name, match string) int {
	s.t.Helper()
	code, body, err := s.b.HTTPGet(s.ctx, "http://"+bed.MetricsAddr+"/metrics")
	if err != nil || code != 200 {
		s.t.Errorf("scrape metrics: %d %v", code, err)
		return -1
	}
	port := fmt.Sprintf(`service_port="%s/%s:http"`, s.ns, app)
	total := 0.0
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, name+"{") || !strings.Contains(l, port) || !strings.Contains(l, match) {
			continue
		}
		f := strings.Fields(l)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			total += v
		}
	}
	return int(total)
}

// readyWatch records when each pod of the app is first seen Ready (the
// test's clock, at most a watch event's latency after the agent set it).
type readyWatch struct {
	mu sync.Mutex // mu guards at
	at map[string]time.Time
}

func (s *stage) watchReady() *readyWatch {
	s.t.Helper()
	ctx, cancel := context.WithCancel(s.ctx)
	s.t.Cleanup(cancel)
	w, err := s.b.Client.CoreV1().Pods(s.ns).Watch(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		s.t.Fatal(err)
	}
	rw := &readyWatch{at: map[string]time.Time{}}
	go rw.run(ctx, w)
	return rw
}

// run consumes the watch until ctx ends.
func (rw *readyWatch) run(ctx context.Context, w watch.Interface) {
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.ResultChan():
			if !ok {
				return
			}
			pod, isPod := ev.Object.(*corev1.Pod)
			if !isPod || !podReady(pod) {
				continue
			}
			now := time.Now()
			rw.mu.Lock()
			if _, seen := rw.at[pod.Name]; !seen {
				rw.at[pod.Name] = now
			}
			rw.mu.Unlock()
		}
	}
}

func (rw *readyWatch) snapshot() map[string]time.Time {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	out := make(map[string]time.Time, len(rw.at))
	for k, v := range rw.at {
		out[k] = v
	}
	return out
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
