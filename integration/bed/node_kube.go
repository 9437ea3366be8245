package bed

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Kubectl runs the bed's kubectl v1.36.3 as the admin, inside the node
// namespace (where the API server listens), with stdin, and returns its
// combined output.
func (b *Bed) Kubectl(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(b.opts.TestbinDir, "kubectl"), args...)
	cmd.Env = append(cmd.Environ(), "KUBECONFIG="+b.AdminKubeconfig)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := b.Node.Start(cmd); err != nil {
		return "", err
	}
	if err := cmd.Wait(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// Ctr runs ctr against the kubelet node's containerd (namespace k8s.io).
func (b *Bed) Ctr(ctx context.Context, args ...string) (string, error) {
	if b.runtime == nil {
		return "", fmt.Errorf("the bed has no kubelet node")
	}
	return b.runtime.Ctr(ctx, args...)
}

// ContainerdAddress is the kubelet node's containerd socket.
func (b *Bed) ContainerdAddress() string {
	if b.runtime == nil {
		return ""
	}
	return b.runtime.Address
}

// ContainerID returns the containerd id of a pod's running container.
func (b *Bed) ContainerID(ctx context.Context, ns, pod, container string) (string, error) {
	p, err := b.Client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == container || container == "" {
			if cs.State.Running == nil {
				return "", fmt.Errorf("pod %s/%s container %s is not running", ns, pod, cs.Name)
			}
			_, id, _ := strings.Cut(cs.ContainerID, "://")
			return id, nil
		}
	}
	return "", fmt.Errorf("pod %s/%s has no container %q", ns, pod, container)
}

// ContainerPID returns the host pid of a pod container's first process.
func (b *Bed) ContainerPID(ctx context.Context, ns, pod, container string) (int, error) {
	id, err := b.ContainerID(ctx, ns, pod, container)
	if err != nil {
		return 0, err
	}
	out, err := b.Ctr(ctx, "tasks", "ls")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l) // TASK PID STATUS
		if len(f) >= 2 && f[0] == id {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no task for container %s of %s/%s:\n%s", id, ns, pod, out)
}

// KillContainer SIGKILLs a pod's container (a crash or OOM kill, as the
// kubelet then sees it: it restarts the container).
func (b *Bed) KillContainer(ctx context.Context, ns, pod, container string) error {
	return b.SignalContainer(ctx, ns, pod, container, "SIGKILL")
}

// SignalContainer sends sig (e.g. "SIGTERM") to the container's process,
// as the runtime does when kubelet stops it.
func (b *Bed) SignalContainer(ctx context.Context, ns, pod, container, sig string) error {
	id, err := b.ContainerID(ctx, ns, pod, container)
	if err != nil {
		return err
	}
	_, err = b.Ctr(ctx, "tasks", "kill", "--signal", sig, id)
	return err
}

// PodClient runs client tools inside a pod of the kubelet node: nsenter
// into its container's mount, network and UTS namespaces, so the pod's own
// curl, resolv.conf (cluster DNS) and address are used, as with
// `kubectl exec`, without the exec round trip per request.
type PodClient struct {
	b       *Bed
	NS, Pod string
	pid     int
	IP      string
}

// NewPodClient returns a client for the running pod ns/pod (its first
// container).
func (b *Bed) NewPodClient(ctx context.Context, ns, pod string) (*PodClient, error) {
	pid, err := b.ContainerPID(ctx, ns, pod, "")
	if err != nil {
		return nil, err
	}
	p, err := b.Client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return &PodClient{b: b, NS: ns, Pod: pod, pid: pid, IP: p.Status.PodIP}, nil
}

// ProcNet returns the pod's /proc/net/<name> (netstat, snmp, ...), read
// through its first container's process from outside: inside the pod, /proc
// belongs to the pod's PID namespace, where a process nsenter started has
// no entry.
func (c *PodClient) ProcNet(name string) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", c.pid, name))
	return string(b), err
}

// Run runs argv inside the pod.
func (c *PodClient) Run(ctx context.Context, stdin string, argv ...string) Result {
	full := append([]string{"nsenter", "--target", strconv.Itoa(c.pid), "--mount", "--net", "--uts", "--"}, argv...)
	return runResult(ctx, (*exec.Cmd).Start, stdin, full...)
}

// Curl fetches url with the pod's curl, one new connection. Its phases
// (name lookup, connect, first byte) are written to the Result's Err, and
// its Dur is curl's own time_total when curl reports it: the request as the
// client saw it, without the nsenter and exec start-up around it, which on
// a loaded 2-core machine alone can take half a second.
func (c *PodClient) Curl(ctx context.Context, url string, maxTime time.Duration) Result {
	r := c.Run(ctx, "", "curl", "-sS", "--max-time", fmt.Sprintf("%.3f", maxTime.Seconds()),
		"-w", "%{stderr}dns=%{time_namelookup} connect=%{time_connect} first-byte=%{time_starttransfer} total=%{time_total}", url)
	if _, total, ok := strings.Cut(r.Err, " total="); ok {
		if secs, err := strconv.ParseFloat(strings.TrimSpace(total), 64); err == nil && secs > 0 {
			r.Dur = time.Duration(secs * float64(time.Second))
		}
	}
	return r
}

// WaitHello curls url from the pod until a pod answers or ctx ends.
func (c *PodClient) WaitHello(ctx context.Context, url string) (Result, error) {
	var r Result
	err := poll(ctx, 200*time.Millisecond, func() (bool, error) {
		r = c.Curl(ctx, url, time.Second)
		_, ok := ParseHello(r.Out)
		return r.OK() && ok, nil
	})
	if err != nil {
		return r, fmt.Errorf("%s never answered from pod %s/%s (last: %s): %w", url, c.NS, c.Pod, r, err)
	}
	return r, nil
}

// WaitPodsReady waits until the pods selected by selector in ns are all
// Ready, at least n of them, and returns them.
func (b *Bed) WaitPodsReady(ctx context.Context, ns, selector string, n int) ([]corev1.Pod, error) {
	var pods []corev1.Pod
	var last string
	err := poll(ctx, 200*time.Millisecond, func() (bool, error) {
		l, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		pods = pods[:0]
		var states []string
		for _, p := range l.Items {
			if p.DeletionTimestamp == nil && podReady(&p) {
				pods = append(pods, p)
			}
			states = append(states, fmt.Sprintf("%s:%s/ready=%v", p.Name, p.Status.Phase, podReady(&p)))
		}
		last = strings.Join(states, " ")
		return len(pods) >= n && len(pods) == len(l.Items), nil
	})
	if err != nil {
		return nil, fmt.Errorf("pods %s in %s not ready (%s): %w", selector, ns, last, err)
	}
	return pods, nil
}

// TestbinDir is where the upstream binaries are (integration/testbin/bin).
func (b *Bed) TestbinDir() string { return b.opts.TestbinDir }
