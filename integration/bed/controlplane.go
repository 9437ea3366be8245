package bed

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Control-plane addresses inside the node namespace.
const (
	apiPort        = "6443"
	apiHost        = "127.0.0.1:" + apiPort
	etcdClientURL  = "http://127.0.0.1:2379"
	etcdPeerURL    = "http://127.0.0.1:2380"
	serviceCIDR    = "10.96.0.0/12"
	adminToken     = "uproxy-bed-admin-token"
	proxyToken     = "uproxy-bed-kube-proxy-token"
	tlsServerName  = "localhost" // in the apiserver's self-signed cert; 127.0.0.1 is not
	readyzDeadline = 90 * time.Second
)

// startControlPlane starts etcd, kube-apiserver and kube-controller-manager in
// the node namespace and waits until the API server is ready.
func (b *Bed) startControlPlane(ctx context.Context) error {
	if err := b.writeAuthFiles(); err != nil {
		return err
	}
	bin := b.opts.TestbinDir
	etcdDir, err := os.MkdirTemp(shmOr(b.Dir), "etcd-")
	if err != nil {
		return err
	}
	b.etcdDir = etcdDir
	b.etcd, err = StartProc(b.Node, "etcd", b.path("etcd.log"), nil,
		filepath.Join(bin, "etcd"), "--name", "default", "--data-dir", etcdDir,
		"--listen-client-urls", etcdClientURL, "--advertise-client-urls", etcdClientURL,
		"--listen-peer-urls", etcdPeerURL, "--initial-advertise-peer-urls", etcdPeerURL,
		"--initial-cluster", "default="+etcdPeerURL, "--unsafe-no-fsync", "--log-level", "warn")
	if err != nil {
		return err
	}
	if err := b.StartAPIServer(); err != nil {
		return err
	}
	if err := b.WaitAPIReady(ctx); err != nil {
		return err
	}
	kcmArgs := []string{filepath.Join(bin, "kube-controller-manager"), "--kubeconfig", b.AdminKubeconfig,
		"--controllers", "endpointslice,deployment,replicaset,serviceaccount",
		"--leader-elect=false", "--use-service-account-credentials=false", "--secure-port", "0",
		"--concurrent-deployment-syncs", "5", "--concurrent-replicaset-syncs", "5",
		"--concurrent-service-endpoint-syncs", "5"}
	if b.opts.Kubelet {
		// Real pods need what a cluster's controller manager gives them:
		// DaemonSets, the kube-root-ca.crt ConfigMap their service-account
		// volume mounts, namespace deletion and garbage collection.
		kcmArgs[4] = "endpointslice,deployment,replicaset,daemonset,serviceaccount," +
			"root-ca-cert-publisher,garbagecollector,namespace,nodelifecycle"
		kcmArgs = append(kcmArgs, "--root-ca-file", b.path("certs/apiserver.crt"),
			"--concurrent-daemonset-syncs", "2")
	}
	b.kcm, err = StartProc(b.Node, "kube-controller-manager", b.path("kube-controller-manager.log"), nil, kcmArgs...)
	if err != nil {
		return err
	}
	if b.opts.Kubelet {
		b.scheduler, err = StartProc(b.Node, "kube-scheduler", b.path("kube-scheduler.log"), nil,
			filepath.Join(bin, "kube-scheduler"), "--kubeconfig", b.AdminKubeconfig,
			"--leader-elect=false", "--secure-port", "0")
		if err != nil {
			return err
		}
	}
	cs, err := kubernetes.NewForConfig(b.restConfig())
	if err != nil {
		return err
	}
	b.Client = cs
	if b.opts.Kubelet {
		return nil // the kubelet registers the node
	}
	return b.createNode(ctx)
}

// StartAPIServer (re)starts kube-apiserver; StopAPIServer stops it (API outage
// tests, issue 9). The bed's clients reconnect by themselves.
func (b *Bed) StartAPIServer() error {
	p, err := StartProc(b.Node, "kube-apiserver", b.path("kube-apiserver.log"), nil,
		filepath.Join(b.opts.TestbinDir, "kube-apiserver"),
		"--etcd-servers", etcdClientURL,
		// 0.0.0.0 inside the node namespace: the default/kubernetes service
		// endpoint 10.244.0.1:6443 is then real; nothing outside the bed's
		// namespaces can reach it.
		"--bind-address", "0.0.0.0", "--secure-port", apiPort, "--advertise-address", NodeIP,
		"--cert-dir", b.path("certs"), "--token-auth-file", b.path("tokens.csv"),
		"--authorization-mode", "Node,RBAC", "--service-cluster-ip-range", b.serviceCIDRs(),
		"--service-account-key-file", b.path("sa.pub"), "--service-account-signing-key-file", b.path("sa.key"),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--enable-priority-and-fairness=false", "--profiling=false", "--endpoint-reconciler-type", "lease",
		// kubectl logs/exec reach the kubelet by its node IP (no DNS in the
		// node namespace).
		"--kubelet-preferred-address-types", "InternalIP",
		// As kubeadm: kube-proxy's DaemonSet runs privileged.
		"--allow-privileged=true")
	if err != nil {
		return err
	}
	b.apiserver = p
	return nil
}

// serviceCIDRs is --service-cluster-ip-range: IPv4, and IPv6 in a
// dual-stack bed (a Service asking for PreferDualStack gets an IP of each).
// The agent bed needs no node IPAM (--allocate-node-cidrs): the bed writes
// the Node's podCIDRs itself.
func (b *Bed) serviceCIDRs() string {
	if b.opts.DualStack {
		return serviceCIDR + "," + ServiceCIDR6
	}
	return serviceCIDR
}

// StopAPIServer SIGTERMs kube-apiserver and waits for it.
func (b *Bed) StopAPIServer() {
	if b.apiserver != nil {
		b.apiserver.Stop(10 * time.Second)
	}
}

// WaitAPIReady polls /readyz until it answers "ok".
func (b *Bed) WaitAPIReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyzDeadline)
	defer cancel()
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext:     b.Node.DialContext,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // only readiness; the clients verify
	}}
	defer hc.CloseIdleConnections()
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+apiHost+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := hc.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && string(body) == "ok" {
				return nil
			}
			last = fmt.Sprintf("status %d: %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		if done, werr := b.apiserver.Exited(); done {
			return fmt.Errorf("kube-apiserver exited (%v); log:\n%s", werr, b.apiserver.Tail(30))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready after %v (last: %s); log:\n%s", readyzDeadline, last, b.apiserver.Tail(30))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (b *Bed) writeAuthFiles() error {
	tokens := fmt.Sprintf("%s,admin,admin,\"system:masters\"\n%s,system:kube-proxy,kube-proxy\n", adminToken, proxyToken)
	if err := os.WriteFile(b.path("tokens.csv"), []byte(tokens), 0o600); err != nil {
		return err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	priv := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	pub := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	if err := os.WriteFile(b.path("sa.key"), priv, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(b.path("sa.pub"), pub, 0o644); err != nil {
		return err
	}
	b.AdminKubeconfig = b.path("admin.kubeconfig")
	b.ProxyKubeconfig = b.path("kube-proxy.kubeconfig")
	if err := writeKubeconfig(b.AdminKubeconfig, b.path("certs/apiserver.crt"), adminToken); err != nil {
		return err
	}
	return writeKubeconfig(b.ProxyKubeconfig, b.path("certs/apiserver.crt"), proxyToken)
}

// writeKubeconfig writes a kubeconfig for the API server on the node's
// loopback, verifying its self-signed certificate by name.
func writeKubeconfig(path, caFile, token string) error {
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: bed
  cluster:
    server: https://%s
    certificate-authority: %s
    tls-server-name: %s
users:
- name: bed
  user:
    token: %s
contexts:
- name: bed
  context:
    cluster: bed
    user: bed
current-context: bed
`, apiHost, caFile, tlsServerName, token)
	return os.WriteFile(path, []byte(kc), 0o600)
}

// restConfig is the admin config for clients in the test process: they dial
// through the node namespace.
func (b *Bed) restConfig() *rest.Config {
	return &rest.Config{
		Host:            "https://" + apiHost,
		BearerToken:     adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAFile: b.path("certs/apiserver.crt"), ServerName: tlsServerName},
		Dial:            b.Node.DialContext,
		QPS:             200,
		Burst:           400,
		Timeout:         30 * time.Second,
	}
}

// createNode registers the node the agent plays the kubelet for.
func (b *Bed) createNode(ctx context.Context) error {
	cs := b.Client
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: NodeName, Labels: map[string]string{
			"kubernetes.io/hostname": NodeName, "kubernetes.io/os": "linux",
		}},
		Spec: corev1.NodeSpec{PodCIDR: PodCIDR, PodCIDRs: []string{PodCIDR}},
	}
	if b.opts.DualStack {
		node.Spec.PodCIDRs = append(node.Spec.PodCIDRs, PodCIDR6)
	}
	created, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create node: %w", err)
	}
	now := metav1.Now()
	created.Status = corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: NodeIP}, {Type: corev1.NodeHostName, Address: NodeName}},
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "uproxy bed node agent", LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		Capacity: corev1.ResourceList{corev1.ResourcePods: mustQuantity("200")},
	}
	if b.opts.DualStack {
		created.Status.Addresses = append(created.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: NodeIP6})
	}
	created.Status.Allocatable = created.Status.Capacity
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("node status: %w", err)
	}
	return nil
}

// shmOr returns /dev/shm (etcd on tmpfs is much faster here) or dir.
func shmOr(dir string) string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		return "/dev/shm"
	}
	return dir
}
