package bed

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
)

// podWorker owns one pod: its namespace, veth, address and server process.
type podWorker struct {
	a         *Agent
	uid       types.UID
	namespace string
	name      string
	key       string
	logPath   string
	notify    chan struct{}

	mu sync.Mutex // mu guards the fields below (fault injection reads and writes them)
	// ns, octet, veth and proc exist once the pod runs.
	ns         *Netns
	octet      int
	veth       string
	proc       *Proc
	args       []string
	env        []string
	ready      bool // the readiness the agent reports (SetReady flips it)
	crashed    bool
	blackholed bool
	resetting  bool
}

func newPodWorker(a *Agent, pod *corev1.Pod) *podWorker {
	key := pod.Namespace + "/" + pod.Name
	return &podWorker{
		a: a, uid: pod.UID, namespace: pod.Namespace, name: pod.Name, key: key,
		logPath: a.b.path(fmt.Sprintf("pods/%s_%s_%s.log", pod.Namespace, pod.Name, pod.UID[:8])),
		notify:  make(chan struct{}, 1),
		ready:   true,
	}
}

// run is the worker's loop; it ends when the pod is gone or the agent stops.
func (w *podWorker) run() {
	defer w.a.wg.Done()
	defer w.a.forget(w)
	defer w.teardown()
	ctx := w.a.ctx
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.notify:
		}
		pod, err := w.a.pods.Pods(w.namespace).Get(w.name)
		if err != nil || pod.UID != w.uid {
			return // deleted (grace 0 by someone) or replaced
		}
		if pod.DeletionTimestamp != nil {
			w.terminate(ctx, pod)
			return
		}
		if pod.Spec.NodeName == "" {
			if err := w.bind(ctx, pod); err != nil {
				w.a.b.opts.Logf("agent: bind %s: %v", w.key, err)
				w.retryLater(ctx, time.Second)
			}
			continue
		}
		w.mu.Lock()
		started := w.ns != nil
		w.mu.Unlock()
		if started {
			continue
		}
		if err := w.start(pod); err != nil {
			w.a.b.opts.Logf("agent: start %s: %v", w.key, err)
			w.teardown()
			w.retryLater(ctx, time.Second)
			continue
		}
		if err := w.pushStatus(ctx); err != nil {
			w.a.b.opts.Logf("agent: status %s: %v", w.key, err)
		}
	}
}

func (w *podWorker) retryLater(ctx context.Context, d time.Duration) {
	go func() {
		select {
		case <-ctx.Done():
		case <-time.After(d):
			select {
			case w.notify <- struct{}{}:
			default:
			}
		}
	}()
}

func (w *podWorker) bind(ctx context.Context, pod *corev1.Pod) error {
	return w.a.client.CoreV1().Pods(pod.Namespace).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: NodeName},
	}, metav1.CreateOptions{})
}

// start creates the pod namespace and starts the server; it returns when the
// server printed READY (all listeners bound).
func (w *podWorker) start(pod *corev1.Pod) error {
	octet, err := w.a.ips.take()
	if err != nil {
		return err
	}
	ns, err := NewNetns("pod")
	w.mu.Lock()
	w.octet, w.ns, w.veth = octet, ns, fmt.Sprintf("vp%d", octet)
	w.mu.Unlock()
	if err != nil {
		return err
	}
	ip := podIP(octet)
	dual := w.a.b.opts.DualStack
	if dual {
		if err := enableIPv6(ns); err != nil {
			return err
		}
	}
	if err := w.a.b.Node.IPBatch(
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", w.veth, ns.Name),
		fmt.Sprintf("link set %s master %s", w.veth, BridgeName),
		fmt.Sprintf("link set %s up", w.veth),
	); err != nil {
		return err
	}
	lines := []string{
		"link set eth0 address " + macFor(octet),
		"addr add " + ip + "/24 dev eth0",
		"link set eth0 up",
		"route add default via " + NodeIP,
	}
	if dual {
		lines = append(lines, "addr add "+podIP6(octet)+"/64 dev eth0 nodad", "route add ::/0 via "+NodeIP6)
	}
	if err := ns.IPBatch(lines...); err != nil {
		return err
	}
	c := pod.Spec.Containers[0]
	grace := int64(30)
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = *pod.Spec.TerminationGracePeriodSeconds
	}
	args := append(echoArgs(c), "--drain-timeout", strconv.FormatInt(grace, 10)+"s")
	env := []string{"POD_NAME=" + pod.Name, "POD_NAMESPACE=" + pod.Namespace, "POD_IP=" + ip}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env = append(env, e.Name+"="+e.Value)
		}
	}
	w.mu.Lock()
	w.args, w.env = args, env
	w.mu.Unlock()
	return w.startServer()
}

// startServer starts (or restarts) the echoserver in the pod namespace.
func (w *podWorker) startServer() error {
	w.mu.Lock()
	ns, args, env := w.ns, w.args, w.env
	w.mu.Unlock()
	rw := &readyWriter{marker: []byte("READY\n"), ready: make(chan struct{})}
	p, err := startProc(ns, "echoserver "+w.key, w.logPath, env, rw, append([]string{w.a.b.opts.Echoserver}, args...)...)
	if err != nil {
		return err
	}
	select {
	case <-rw.ready:
	case <-p.Done():
		return fmt.Errorf("echoserver exited before READY: %s", p.Tail(5))
	case <-time.After(15 * time.Second):
		p.Kill()
		return fmt.Errorf("echoserver not READY after 15s: %s", p.Tail(5))
	}
	w.mu.Lock()
	w.proc, w.crashed, w.resetting = p, false, false
	w.mu.Unlock()
	return nil
}

// echoArgs maps the container to echoserver flags: its args when given, else
// one flag per port: UDP ports --udp-echo, TCP ports named like "redis" or
// "tcp*" (or 6379) --tcp-echo, other TCP ports --http.
func echoArgs(c corev1.Container) []string {
	if len(c.Args) > 0 {
		return append([]string(nil), c.Args...)
	}
	var args []string
	for _, p := range c.Ports {
		addr := ":" + strconv.Itoa(int(p.ContainerPort))
		switch {
		case p.Protocol == corev1.ProtocolUDP:
			args = append(args, "--udp-echo", addr)
		case strings.Contains(p.Name, "redis") || strings.HasPrefix(p.Name, "tcp") || p.ContainerPort == 6379:
			args = append(args, "--tcp-echo", addr)
		default:
			args = append(args, "--http", addr)
		}
	}
	return args
}

// pushStatus writes the pod status the worker believes in: Running, with
// Ready as set (and false once the server is gone).
func (w *podWorker) pushStatus(ctx context.Context) error {
	w.mu.Lock()
	ips := []string{podIP(w.octet)}
	if w.a.b.opts.DualStack {
		ips = append(ips, podIP6(w.octet))
	}
	running := w.proc != nil
	ready := w.ready && running
	w.mu.Unlock()
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pod, err := w.a.client.CoreV1().Pods(w.namespace).Get(ctx, w.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pod.UID != w.uid {
			return nil
		}
		setRunningStatus(pod, ips, running, ready)
		_, err = w.a.client.CoreV1().Pods(w.namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		return err
	})
}

// setRunningStatus writes a Running (or Succeeded) status with the pod's
// IPs: IPv4, then IPv6 in a dual-stack bed (the EndpointSlice controller
// makes one slice per family from them).
func setRunningStatus(pod *corev1.Pod, ips []string, running, ready bool) {
	now := metav1.Now()
	st := &pod.Status
	st.HostIP, st.HostIPs = NodeIP, []corev1.HostIP{{IP: NodeIP}}
	if len(ips) > 1 {
		st.HostIPs = append(st.HostIPs, corev1.HostIP{IP: NodeIP6})
	}
	st.PodIP, st.PodIPs = ips[0], nil
	for _, ip := range ips {
		st.PodIPs = append(st.PodIPs, corev1.PodIP{IP: ip})
	}
	if st.StartTime == nil {
		st.StartTime = &now
	}
	st.Phase = corev1.PodRunning
	if !running {
		st.Phase = corev1.PodSucceeded
	}
	cond := func(t corev1.PodConditionType, ok bool) {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
		}
		for i := range st.Conditions {
			if st.Conditions[i].Type == t {
				if st.Conditions[i].Status != s {
					st.Conditions[i].Status, st.Conditions[i].LastTransitionTime = s, now
				}
				return
			}
		}
		st.Conditions = append(st.Conditions, corev1.PodCondition{Type: t, Status: s, LastTransitionTime: now})
	}
	cond(corev1.PodScheduled, true)
	cond(corev1.PodInitialized, true)
	cond(corev1.ContainersReady, ready)
	cond(corev1.PodReady, ready)
	cs := corev1.ContainerStatus{Name: pod.Spec.Containers[0].Name, Image: pod.Spec.Containers[0].Image, Ready: ready, Started: &running}
	if running {
		cs.State.Running = &corev1.ContainerStateRunning{StartedAt: *st.StartTime}
	} else {
		cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", FinishedAt: now}
	}
	st.ContainerStatuses = []corev1.ContainerStatus{cs}
}

// terminate drains the pod like the kubelet: (preStop delay,) SIGTERM, wait
// up to the grace period, SIGKILL, report not ready, delete with grace 0.
func (w *podWorker) terminate(ctx context.Context, pod *corev1.Pod) {
	grace := 30 * time.Second
	if pod.DeletionGracePeriodSeconds != nil {
		grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	}
	if d := w.a.preStopDelay(); d > 0 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
	w.mu.Lock()
	p := w.proc
	w.mu.Unlock()
	if p != nil {
		if err, killed := p.Stop(grace); killed || (err != nil && !isSignalExit(err, syscall.SIGKILL)) {
			w.a.b.opts.Logf("agent: %s server stop: err=%v killed=%v", w.key, err, killed)
		}
		w.mu.Lock()
		w.proc = nil
		w.mu.Unlock()
	}
	if pod.Spec.NodeName != "" && ctx.Err() == nil {
		if err := w.pushStatus(ctx); err != nil && !apierrors.IsNotFound(err) {
			w.a.b.opts.Logf("agent: final status %s: %v", w.key, err)
		}
	}
	w.a.forceDelete(pod)
}

func (a *Agent) forceDelete(pod *corev1.Pod) {
	zero := int64(0)
	err := a.client.CoreV1().Pods(pod.Namespace).Delete(a.ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) && a.ctx.Err() == nil {
		a.b.opts.Logf("agent: delete %s/%s: %v", pod.Namespace, pod.Name, err)
	}
}

// teardown kills the server and removes the pod's namespace and veth.
func (w *podWorker) teardown() {
	w.mu.Lock()
	p, ns, octet, veth := w.proc, w.ns, w.octet, w.veth
	w.proc, w.ns = nil, nil
	w.mu.Unlock()
	if p != nil {
		p.Kill()
	}
	if ns != nil {
		_ = w.a.b.Node.IP("link", "del", veth) // also removes eth0 in the pod
		if err := ns.Delete(); err != nil {
			w.a.b.opts.Logf("agent: %v", err)
		}
	}
	if octet != 0 {
		w.a.ips.release(octet)
		w.mu.Lock()
		w.octet = 0
		w.mu.Unlock()
	}
}

func isSignalExit(err error, sig syscall.Signal) bool {
	return err != nil && strings.Contains(err.Error(), "signal: "+sig.String())
}

func podIP(octet int) string { return fmt.Sprintf("10.244.0.%d", octet) }

// macFor gives every address a fixed MAC (0a:58 + the IPv4 bytes, like the
// bridge CNI plugin), so neighbour caches never go stale when an address is
// reused by a new pod.
func macFor(octet int) string { return fmt.Sprintf("0a:58:0a:f4:00:%02x", octet) }
