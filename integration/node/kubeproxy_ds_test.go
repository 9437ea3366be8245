package node

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
)

// kubeadmProxyDaemonSet is kubeadm's kube-proxy DaemonSet (its service
// account bound to system:node-proxier, the kube-proxy ConfigMap mounted at
// /var/lib/kube-proxy, --config and --hostname-override) with the image
// switched to uproxy. The command changes too: the uproxy image has no
// /usr/local/bin/kube-proxy.
const kubeadmProxyDaemonSet = `apiVersion: v1
kind: ServiceAccount
metadata:
  name: kube-proxy
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kubeadm:node-proxier
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:node-proxier
subjects:
- kind: ServiceAccount
  name: kube-proxy
  namespace: kube-system
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-proxy
  namespace: kube-system
  labels: {k8s-app: kube-proxy}
spec:
  selector:
    matchLabels: {k8s-app: kube-proxy}
  template:
    metadata:
      labels: {k8s-app: kube-proxy}
    spec:
      hostNetwork: true
      priorityClassName: system-node-critical
      serviceAccountName: kube-proxy
      tolerations:
      - operator: Exists
      containers:
      - name: kube-proxy
        image: uproxy:dev
        imagePullPolicy: IfNotPresent
        command:
        - /usr/local/bin/uproxy
        - --config=/var/lib/kube-proxy/config.conf
        - --hostname-override=$(NODE_NAME)
        env:
        - name: NODE_NAME
          valueFrom:
            fieldRef: {fieldPath: spec.nodeName}
        securityContext:
          privileged: true
          runAsUser: 0 # kube-proxy's image runs as root; uproxy's defaults to 65532
        volumeMounts:
        - {mountPath: /var/lib/kube-proxy, name: kube-proxy}
        - {mountPath: /run/xtables.lock, name: xtables-lock}
        - {mountPath: /lib/modules, name: lib-modules, readOnly: true}
      volumes:
      - name: kube-proxy
        configMap: {name: kube-proxy}
      - name: xtables-lock
        hostPath: {path: /run/xtables.lock, type: FileOrCreate}
      - name: lib-modules
        hostPath: {path: /lib/modules}
`

// TestKubeProxyDaemonSetSwitchesToUproxy: kubeadm's kube-proxy DaemonSet
// and ConfigMap, unchanged but for the image (and its command), run uproxy:
// --config reads kubeadm's config.conf (its kubeconfig, ports and periods),
// the fields that do not apply to uproxy are reported once, and the seed's
// service works by name.
func TestKubeProxyDaemonSetSwitchesToUproxy(t *testing.T) {
	w := newWorld(t, "workshop", 5*time.Minute)
	if exists, _ := w.uproxyDeployedAs(); exists {
		w.removeUproxy()
	}
	w.uproxyImage("dev")
	w.apply(kubeadmProxyDaemonSet)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if out, err := w.b.Kubectl(ctx, kubeadmProxyDaemonSet, "delete", "--ignore-not-found", "--wait=true", "-f", "-"); err != nil {
			t.Errorf("%v\n%s", err, out)
		}
		bin, _ := bed.UproxyBinary()
		if out, err := w.b.Node.Output(ctx, bin, "--cleanup"); err != nil {
			t.Errorf("uproxy --cleanup: %v\n%s", err, out)
		}
	})
	w.waitRollout("kube-system", "ds/kube-proxy", 2*time.Minute)
	w.waitCoreDNS()
	c := w.seed("client", 2)
	s := bed.StartLoop(w.ctx, c, bed.LoopOptions{URL: seedURL, Workers: 2, Requests: 100}).Wait()
	logs := w.kubectl("-n", "kube-system", "logs", "ds/kube-proxy")
	var warning string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "do not apply to uproxy") {
			warning = l
		}
	}
	health := w.nodeGet("http://127.0.0.1:10256/healthz")
	summary("kube-proxy-ds-switch", "%v; warning: %s; healthz %s", s, warning, strings.TrimSpace(health))
	if s.Failures != 0 {
		t.Errorf("%d failed:\n%s", s.Failures, s.FailureDetail())
	}
	if !strings.Contains(warning, "clusterCIDR") || strings.Count(logs, "do not apply to uproxy") != 1 {
		t.Errorf("want one warning naming clusterCIDR, got:\n%s", logs)
	}
}
