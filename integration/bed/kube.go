package bed

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Namespace creates (or reuses) a Kubernetes namespace for one test and, in
// t.Cleanup, deletes what the test made in it (services, deployments,
// replica sets, pods) and waits until its pods are gone. The namespace object
// itself stays: the bed runs no namespace controller to finalize it.
func (b *Bed) Namespace(t testing.TB, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := b.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	if err != nil {
		// Reused (the node tests share "workshop"): start empty, even if a
		// controller recreated something after the last test's cleanup
		// (as after a test that stopped the API server).
		if err := b.emptyNamespace(name); err != nil {
			t.Fatalf("empty namespace %s: %v", name, err)
		}
	}
	// The ServiceAccount admission plugin rejects pods until "default" exists.
	if err := poll(ctx, 100*time.Millisecond, func() (bool, error) {
		_, err := b.Client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		t.Fatalf("namespace %s: no default service account: %v", name, err)
	}
	t.Cleanup(func() {
		if err := b.emptyNamespace(name); err != nil {
			t.Errorf("cleanup namespace %s: %v", name, err)
		}
	})
	return name
}

func (b *Bed) emptyNamespace(ns string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	all := metav1.ListOptions{}
	del := metav1.DeleteOptions{}
	c := b.Client
	svcs, err := c.CoreV1().Services(ns).List(ctx, all)
	if err != nil {
		return err
	}
	for _, s := range svcs.Items {
		if err := c.CoreV1().Services(ns).Delete(ctx, s.Name, del); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	// Deleting the Deployments first is not enough: until the garbage
	// collector and the deployment controller have seen the deletion, a
	// controller may still create a ReplicaSet or pods (a test once found
	// a previous test's 3 pods Ready in its namespace). So delete, then
	// wait until no Deployment, ReplicaSet or pod is left, deleting again
	// whatever appeared meanwhile.
	one := int64(1)
	podDel := metav1.DeleteOptions{GracePeriodSeconds: &one}
	deleteAll := func() error {
		if err := c.AppsV1().Deployments(ns).DeleteCollection(ctx, del, all); err != nil {
			return err
		}
		if err := c.AppsV1().ReplicaSets(ns).DeleteCollection(ctx, del, all); err != nil {
			return err
		}
		return c.CoreV1().Pods(ns).DeleteCollection(ctx, podDel, all)
	}
	if err := deleteAll(); err != nil {
		return err
	}
	last := time.Now()
	return poll(ctx, 200*time.Millisecond, func() (bool, error) {
		deps, err1 := c.AppsV1().Deployments(ns).List(ctx, all)
		rss, err2 := c.AppsV1().ReplicaSets(ns).List(ctx, all)
		pods, err3 := c.CoreV1().Pods(ns).List(ctx, all)
		if err1 != nil || err2 != nil || err3 != nil {
			return false, nil
		}
		if len(deps.Items)+len(rss.Items)+len(pods.Items) == 0 {
			return true, nil
		}
		if time.Since(last) > time.Second {
			last = time.Now()
			_ = deleteAll() // retried by the next round
		}
		return false, nil
	})
}

// EchoDeployment is a deployment of the echoserver labelled app=<name>. The
// agent maps ports to echoserver flags (see the agent's echoArgs): UDP ports
// echo datagrams, TCP ports named "redis"/"tcp*" echo lines, others serve HTTP.
func EchoDeployment(name string, replicas int32, ports ...corev1.ContainerPort) *appsv1.Deployment {
	lbl := map[string]string{"app": name}
	grace := int64(10)
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbl},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: lbl},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType, RollingUpdate: &appsv1.RollingUpdateDeployment{
				MaxUnavailable: ptr(intstr.FromInt32(0)), MaxSurge: ptr(intstr.FromInt32(1)),
			}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: lbl},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					Containers:                    []corev1.Container{{Name: name, Image: "uproxy/echoserver", Ports: ports}},
				},
			},
		},
	}
}

// ServiceFor is a ClusterIP service selecting app=<name>.
func ServiceFor(name string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": name}, Ports: ports},
	}
}

// TCPPort is a service port name/port -> targetPort.
func TCPPort(name string, port, target int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: corev1.ProtocolTCP, Port: port, TargetPort: intstr.FromInt32(target)}
}

func ptr[T any](v T) *T { return &v }

// Scale sets a deployment's replicas.
func (b *Bed) Scale(ctx context.Context, ns, name string, replicas int32) error {
	s, err := b.Client.AppsV1().Deployments(ns).GetScale(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	s.Spec.Replicas = replicas
	_, err = b.Client.AppsV1().Deployments(ns).UpdateScale(ctx, name, s, metav1.UpdateOptions{})
	return err
}

// WaitDeployment waits until the deployment is fully rolled out at its
// replica count and no other pod of it (terminating or old) is left.
func (b *Bed) WaitDeployment(ctx context.Context, ns, name string) error {
	var last string
	err := poll(ctx, 100*time.Millisecond, func() (bool, error) {
		d, err := b.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		want := *d.Spec.Replicas
		st := d.Status
		sel := labels.SelectorFromSet(d.Spec.Selector.MatchLabels).String()
		pods, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return false, err
		}
		last = fmt.Sprintf("gen %d/%d replicas=%d updated=%d ready=%d available=%d pods=%d want=%d",
			st.ObservedGeneration, d.Generation, st.Replicas, st.UpdatedReplicas, st.ReadyReplicas, st.AvailableReplicas, len(pods.Items), want)
		return st.ObservedGeneration >= d.Generation && st.Replicas == want && st.UpdatedReplicas == want &&
			st.ReadyReplicas == want && st.AvailableReplicas == want && int32(len(pods.Items)) == want, nil
	})
	if err != nil {
		return fmt.Errorf("deployment %s/%s not rolled out (%s): %w", ns, name, last, err)
	}
	return nil
}

// ReadyPods returns the names of the ready pods matching app=<app>.
func (b *Bed) ReadyPods(ctx context.Context, ns, app string) ([]string, error) {
	pods, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		return nil, err
	}
	var names []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && podReady(&p) {
			names = append(names, p.Name)
		}
	}
	slices.Sort(names)
	return names, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// WaitEndpoints waits until the service's EndpointSlices list exactly n
// endpoints, all ready, and returns their addresses.
func (b *Bed) WaitEndpoints(ctx context.Context, ns, svc string, n int) ([]string, error) {
	var addrs []string
	var last string
	err := poll(ctx, 100*time.Millisecond, func() (bool, error) {
		sl, err := b.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
		if err != nil {
			return false, err
		}
		addrs = addrs[:0]
		total := 0
		for _, s := range sl.Items {
			for _, e := range s.Endpoints {
				total++
				if e.Conditions.Ready != nil && *e.Conditions.Ready {
					addrs = append(addrs, e.Addresses...)
				}
			}
		}
		last = fmt.Sprintf("%d endpoints, ready %v", total, addrs)
		return total == n && len(addrs) == n, nil
	})
	if err != nil {
		return nil, fmt.Errorf("service %s/%s: want %d ready endpoints, have %s: %w", ns, svc, n, last, err)
	}
	slices.Sort(addrs)
	return addrs, nil
}

// poll calls cond every interval until it returns true, an error, or ctx ends.
func poll(ctx context.Context, interval time.Duration, cond func() (bool, error)) error {
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// EndpointState is one EndpointSlice endpoint's conditions.
type EndpointState struct {
	Ready, Serving, Terminating bool
}

// Endpoints returns the service's EndpointSlice endpoints by address.
func (b *Bed) Endpoints(ctx context.Context, ns, svc string) (map[string]EndpointState, error) {
	sl, err := b.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		return nil, err
	}
	out := map[string]EndpointState{}
	for _, s := range sl.Items {
		for _, e := range s.Endpoints {
			st := EndpointState{
				Ready:       e.Conditions.Ready != nil && *e.Conditions.Ready,
				Serving:     e.Conditions.Serving != nil && *e.Conditions.Serving,
				Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
			}
			for _, a := range e.Addresses {
				out[a] = st
			}
		}
	}
	return out, nil
}

// Poll calls cond every interval until it returns true, an error, or ctx ends.
func Poll(ctx context.Context, interval time.Duration, cond func() (bool, error)) error {
	return poll(ctx, interval, cond)
}
