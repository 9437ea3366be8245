package node

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/uproxy/uproxy/integration/bed"
)

// The uproxy DaemonSet as the README deploys it: `kubectl apply -f deploy/`
// with the image built from bin/uproxy (docker.io/library/uproxy:<tag>).

const (
	uproxyNS       = "kube-system"
	uproxySelector = "k8s-app=uproxy"
)

// uproxyImage builds the uproxy image from bin/uproxy under tag and imports
// it into the node's containerd.
func (w *world) uproxyImage(tag string) {
	w.t.Helper()
	bin, ok := bed.UproxyBinary()
	if !ok {
		w.t.Fatalf("uproxy binary %s missing: run `make build`", bin)
	}
	img, err := w.b.ImageBuilder().Uproxy(w.ctx, bin, tag)
	if err != nil {
		w.t.Fatal(err)
	}
	if err := w.b.ImportImages(w.ctx, img); err != nil {
		w.t.Fatal(err)
	}
}

// deployUproxy applies deploy/ (option A lines uncommented when
// besideKubeProxy) and waits for the DaemonSet's rollout.
func (w *world) deployUproxy(besideKubeProxy bool) {
	w.t.Helper()
	w.uproxyImage("dev")
	start := time.Now()
	w.apply(deployManifests(w.t, besideKubeProxy))
	w.waitRollout(uproxyNS, "ds/uproxy", 2*time.Minute)
	say("uproxy DaemonSet rolled out in %v", time.Since(start).Round(time.Millisecond))
}

// removeUproxy deletes deploy/'s objects and removes the portal rules left
// on the node, as the README's removal steps do (`uproxy --cleanup`).
func (w *world) removeUproxy() {
	w.t.Helper()
	if out, err := w.b.Kubectl(w.ctx, deployManifests(w.t, false), "delete", "--ignore-not-found", "--wait=true", "-f", "-"); err != nil {
		w.t.Fatalf("%v\n%s", err, out)
	}
	if err := bed.Poll(w.ctx, 200*time.Millisecond, func() (bool, error) {
		l, err := w.b.Client.CoreV1().Pods(uproxyNS).List(w.ctx, metav1.ListOptions{LabelSelector: uproxySelector})
		return err == nil && len(l.Items) == 0, nil
	}); err != nil {
		w.t.Fatalf("uproxy pods not gone: %v", err)
	}
	bin, _ := bed.UproxyBinary()
	if out, err := w.b.Node.Output(w.ctx, bin, "--cleanup"); err != nil {
		w.t.Fatalf("uproxy --cleanup: %v\n%s", err, out)
	}
}

// uproxyDeployedAs reports whether the DaemonSet exists and was applied
// with (true) or without (false) the option A arguments.
func (w *world) uproxyDeployedAs() (exists, besideKubeProxy bool) {
	ds, err := w.b.Client.AppsV1().DaemonSets(uproxyNS).Get(w.ctx, "uproxy", metav1.GetOptions{})
	if err != nil {
		return false, false
	}
	args := strings.Join(ds.Spec.Template.Spec.Containers[0].Args, " ")
	return true, strings.Contains(args, "--service-proxy-name")
}

// ensureUproxy makes uproxy the node's service proxy (option B, instead of
// kube-proxy) unless it already is.
func (w *world) ensureUproxy() {
	w.t.Helper()
	exists, beside := w.uproxyDeployedAs()
	if exists && !beside {
		w.waitRollout(uproxyNS, "ds/uproxy", 2*time.Minute)
		return
	}
	if exists {
		w.removeUproxy()
	}
	w.deployUproxy(false)
	w.waitCoreDNS()
}

// waitCoreDNS waits for CoreDNS, which reaches the API server through the
// kubernetes Service and so needs a working service proxy.
func (w *world) waitCoreDNS() {
	w.t.Helper()
	start := time.Now()
	if _, err := w.b.WaitPodsReady(w.ctx, "kube-system", "k8s-app=kube-dns", 1); err != nil {
		w.t.Fatal(err)
	}
	say("CoreDNS Ready after %v", time.Since(start).Round(time.Millisecond))
}

// uproxyPod returns the name of the uproxy pod that is running.
func (w *world) uproxyPod() string {
	w.t.Helper()
	pods, err := w.b.WaitPodsReady(w.ctx, uproxyNS, uproxySelector, 1)
	if err != nil {
		w.t.Fatal(err)
	}
	return pods[0].Name
}

// restarts returns the uproxy container's restart count.
func (w *world) restarts(pod string) int32 {
	p, err := w.b.Client.CoreV1().Pods(uproxyNS).Get(w.ctx, pod, metav1.GetOptions{})
	if err != nil {
		return -1
	}
	for _, cs := range p.Status.ContainerStatuses { // sorted by name: fd-holder comes first
		if cs.Name == "uproxy" {
			return cs.RestartCount
		}
	}
	return -1
}

// nodeGet fetches a URL on the node's loopback (uproxy's HTTP surfaces, as
// `minikube ssh -- curl -s 127.0.0.1:...` in the README).
func (w *world) nodeGet(url string) string {
	w.t.Helper()
	code, body, err := w.b.HTTPGet(w.ctx, url)
	if err != nil || code != http.StatusOK {
		w.t.Fatalf("GET %s on the node: %d %v\n%s", url, code, err, body)
	}
	return body
}

// portalRules returns the node's nat rules of uproxy and kube-proxy.
func (w *world) portalRules() string {
	rules, err := w.b.NATRules(w.ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(rules, "\n") {
		if strings.Contains(l, "UPROXY") || strings.Contains(l, "KUBE-") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// loopFor runs 4 curl loops (a new connection per request) from the client
// pod during fn and returns their summary.
func (w *world) loopFor(c *bed.PodClient, url string, fn func()) bed.Summary {
	w.t.Helper()
	ctx, cancel := context.WithCancel(w.ctx)
	defer cancel()
	l := bed.StartLoop(ctx, c, bed.LoopOptions{URL: url, Workers: 4, MaxTime: 5 * time.Second})
	w.sleep(2 * time.Second)
	fn()
	w.sleep(2 * time.Second)
	return l.Stop()
}

// kubeProxy runs the real kube-proxy v1.36.3 in iptables mode as a process on
// the node. Conntrack tuning is switched off: its sysctls are host-wide.
func (w *world) kubeProxy() *bed.Proc {
	w.t.Helper()
	p, err := bed.StartProc(w.b.Node, "kube-proxy", filepath.Join(w.b.Dir, "kube-proxy.log"), nil,
		filepath.Join(w.b.TestbinDir(), "kube-proxy"), "--kubeconfig", w.b.AdminKubeconfig,
		"--hostname-override", bed.NodeName, "--proxy-mode", "iptables",
		"--conntrack-max-per-core", "0", "--conntrack-min", "0",
		"--conntrack-tcp-timeout-established", "0", "--conntrack-tcp-timeout-close-wait", "0",
		"--iptables-min-sync-period", "100ms")
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() {
		p.Stop(10 * time.Second)
		if w.t.Failed() {
			w.t.Logf("kube-proxy log tail:\n%s", p.Tail(40))
		}
	})
	if err := bed.Poll(w.ctx, 200*time.Millisecond, func() (bool, error) {
		if done, err := p.Exited(); done {
			return false, fmt.Errorf("kube-proxy exited: %v\n%s", err, p.Tail(30))
		}
		code, _, err := w.b.HTTPGet(w.ctx, "http://127.0.0.1:10256/healthz")
		return err == nil && code == http.StatusOK, nil
	}); err != nil {
		w.t.Fatalf("kube-proxy not healthy: %v", err)
	}
	return p
}
