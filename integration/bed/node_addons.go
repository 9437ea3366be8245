package bed

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/uproxy/uproxy/integration/images"
)

// The kubelet node plays a kubeadm (or minikube) node: what kubeadm installs
// besides the control plane is what users of the README's guide have, and
// what uproxy's DaemonSet relies on.

// kubeadmProxyConfigMap is kube-system/kube-proxy as kubeadm writes it:
// config.conf (kube-proxy's KubeProxyConfiguration) and a kubeconfig naming
// the API server's real address, authenticating with the pod's own
// service-account token. uproxy's DaemonSet mounts it, so uproxy never needs
// a Service (its own portal) to reach the API server.
func kubeadmProxyConfigMap() string {
	return `apiVersion: v1
kind: ConfigMap
metadata:
  name: kube-proxy
  namespace: kube-system
  labels:
    app: kube-proxy
data:
  config.conf: |-
    apiVersion: kubeproxy.config.k8s.io/v1alpha1
    kind: KubeProxyConfiguration
    bindAddress: 0.0.0.0
    bindAddressHardFail: false
    clientConnection:
      acceptContentTypes: ""
      burst: 0
      contentType: ""
      kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
      qps: 0
    clusterCIDR: 10.244.0.0/16
    configSyncPeriod: 0s
    conntrack:
      maxPerCore: null
      min: null
      tcpCloseWaitTimeout: null
      tcpEstablishedTimeout: null
    detectLocalMode: ""
    enableProfiling: false
    healthzBindAddress: ""
    hostnameOverride: ""
    iptables:
      localhostNodePorts: null
      masqueradeAll: false
      masqueradeBit: null
      minSyncPeriod: 0s
      syncPeriod: 0s
    metricsBindAddress: ""
    mode: ""
    nodePortAddresses: null
    oomScoreAdj: null
    portRange: ""
    showHiddenMetricsForVersion: ""
  kubeconfig.conf: |-
    apiVersion: v1
    kind: Config
    clusters:
    - cluster:
        certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
        server: https://` + NodeIP + `:` + apiPort + `
      name: default
    contexts:
    - context:
        cluster: default
        namespace: default
        user: default
      name: default
    current-context: default
    users:
    - name: default
      user:
        tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
`
}

// CoreDNSImage is the name the bed imports its CoreDNS build under.
const CoreDNSImage = "registry.k8s.io/coredns/coredns:v1.14.2"

// coreDNSManifests is kubeadm's CoreDNS addon cut to this node: RBAC, the
// Corefile (cluster.local only: nothing upstream is reachable), one replica
// and the kube-dns Service on 10.96.0.10. CoreDNS reaches the API server
// through the kubernetes Service, so it is Ready only once a service proxy
// (uproxy or kube-proxy) runs on the node.
func coreDNSManifests() string {
	return strings.NewReplacer("CLUSTER_DNS", ClusterDNS, "COREDNS_IMAGE", CoreDNSImage).Replace(`apiVersion: v1
kind: ServiceAccount
metadata:
  name: coredns
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
- apiGroups: [""]
  resources: ["endpoints", "services", "pods", "namespaces"]
  verbs: ["list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
subjects:
- kind: ServiceAccount
  name: coredns
  namespace: kube-system
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: coredns
  namespace: kube-system
data:
  Corefile: |
    .:53 {
        errors
        health {
            lameduck 5s
        }
        ready
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }
        cache 30
        loop
        reload
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
spec:
  replicas: 1
  selector:
    matchLabels:
      k8s-app: kube-dns
  template:
    metadata:
      labels:
        k8s-app: kube-dns
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      tolerations:
      - operator: Exists
      containers:
      - name: coredns
        image: COREDNS_IMAGE
        imagePullPolicy: IfNotPresent
        args: ["-conf", "/etc/coredns/Corefile"]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        - {name: metrics, containerPort: 9153, protocol: TCP}
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
          periodSeconds: 2
        livenessProbe:
          httpGet: {path: /health, port: 8080}
          initialDelaySeconds: 60
          periodSeconds: 10
          failureThreshold: 5
        volumeMounts:
        - {name: config-volume, mountPath: /etc/coredns, readOnly: true}
      volumes:
      - name: config-volume
        configMap:
          name: coredns
          items:
          - {key: Corefile, path: Corefile}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
    kubernetes.io/name: CoreDNS
spec:
  selector:
    k8s-app: kube-dns
  clusterIP: CLUSTER_DNS
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
  - {name: metrics, port: 9153, protocol: TCP}
`)
}

// installAddons applies kubeadm's kube-proxy ConfigMap and CoreDNS.
func (b *Bed) installAddons(ctx context.Context) error {
	for _, m := range []string{kubeadmProxyConfigMap(), coreDNSManifests()} {
		if out, err := b.Kubectl(ctx, m, "apply", "-f", "-"); err != nil {
			return fmt.Errorf("addons: %w\n%s", err, out)
		}
	}
	return nil
}

// Images the kubelet node runs, built locally (nothing can be pulled here)
// and imported into its containerd.
const (
	EchoImage   = "docker.io/library/echoserver:v1"
	EchoImageV2 = "docker.io/library/echoserver:v2"
	ClientImage = "docker.io/library/client:dev"
)

// importBaseImages builds and imports the pause, echoserver (v1 and v2, the
// same binary under two tags for rolling updates), client and CoreDNS
// images.
func (b *Bed) importBaseImages(ctx context.Context) error {
	ib := b.ImageBuilder()
	var imgs []images.Image
	for _, build := range []func() (images.Image, error){
		func() (images.Image, error) { return ib.Pause(ctx) },
		func() (images.Image, error) { return ib.Echo(ctx, b.opts.Echoserver, "v1") },
		func() (images.Image, error) { return ib.Echo(ctx, b.opts.Echoserver, "v2") },
		func() (images.Image, error) { return ib.Client(ctx) },
		func() (images.Image, error) {
			return ib.CoreDNS(ctx, filepath.Join(b.opts.TestbinDir, "coredns"))
		},
	} {
		img, err := build()
		if err != nil {
			return fmt.Errorf("image: %w", err)
		}
		imgs = append(imgs, img)
	}
	return b.ImportImages(ctx, imgs...)
}

// ImageBuilder returns a builder writing archives into the bed directory.
func (b *Bed) ImageBuilder() *images.Builder {
	return &images.Builder{Dir: b.path("images"), Logf: b.opts.Logf}
}

// ImportImages imports image archives into the kubelet node's containerd.
func (b *Bed) ImportImages(ctx context.Context, imgs ...images.Image) error {
	return images.Import(ctx, filepath.Join(b.opts.TestbinDir, "ctr"), b.ContainerdAddress(), imgs...)
}
