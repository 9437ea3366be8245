// Package bed is uproxy's integration test bed: a real control plane
// (etcd, kube-apiserver, kube-controller-manager built by `make testbin`) and
// a node made of network namespaces, all inside one "node" namespace the bed
// creates. A node agent in the test process plays scheduler and kubelet: it
// binds pods, gives each one a namespace on the node bridge running the
// project's echoserver, reports it Ready, drains it on deletion and injects
// faults. Clients are namespaces on the same bridge running the real curl,
// nc and dig. StartUproxy runs bin/uproxy in the node namespace.
//
// Nothing is ever sent outside these namespaces and no iptables rule is
// added to the root namespace; everything is removed on Close or t.Cleanup.
// The bed does not do DNS, volumes, images, probes or more than one node.
package bed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/kubernetes"
)

// Addresses of the bed's node.
const (
	NodeName   = "node1"
	NodeIP     = "10.244.0.1"
	PodCIDR    = "10.244.0.0/24"
	BridgeName = "upbr0"

	// IPv6 addresses of a dual-stack bed (Options.DualStack), all ULA and
	// only inside the bed's namespaces.
	NodeIP6      = "fd00:10:244::1"
	PodCIDR6     = "fd00:10:244::/64"
	ServiceCIDR6 = "fd00:10:96::/112"
)

// Options configure a bed. Zero values pick the defaults.
type Options struct {
	// RepoRoot is the uproxy checkout (default: found from the working dir).
	RepoRoot string
	// TestbinDir holds etcd, kube-apiserver, kube-controller-manager
	// (default RepoRoot/integration/testbin/bin).
	TestbinDir string
	// Echoserver is the pod backend binary (default: built into the bed dir).
	Echoserver string
	// Logf receives progress lines (default: discarded).
	Logf func(format string, args ...any)
	// KeepDir keeps the bed directory (logs) after Close.
	KeepDir bool
	// Kubelet makes the node real: kube-scheduler, containerd, CNI and a
	// kubelet run pods as containers (see node_runtime.go) instead of the
	// node agent playing kubelet with namespaces.
	Kubelet bool
	// DualStack gives the bed IPv6 as well (agent mode only): the API
	// server allocates cluster IPs from both ServiceCIDR and ServiceCIDR6,
	// the node, pods and clients get IPv6 addresses (NodeIP6, PodCIDR6)
	// besides their IPv4 ones, and the Node object lists both InternalIPs.
	DualStack bool
}

// Bed is a running control plane plus node. Its methods are safe for use by
// one test at a time (tests share a bed sequentially).
type Bed struct {
	opts Options
	// Dir holds logs, certificates and kubeconfigs.
	Dir string
	// Node is the node namespace: bridge, control plane, uproxy.
	Node *Netns
	// Client is an admin clientset (it dials through the node namespace).
	Client kubernetes.Interface
	// AdminKubeconfig and ProxyKubeconfig are kubeconfig files valid inside
	// the node namespace; the proxy one authenticates as system:kube-proxy
	// (bound to the built-in system:node-proxier role).
	AdminKubeconfig, ProxyKubeconfig string
	// Agent is the node agent.
	Agent *Agent

	etcdDir                         string
	etcd, apiserver, kcm, scheduler *Proc
	// runtime is the kubelet node's containerd and kubelet (Kubelet mode).
	runtime   *nodeRuntime
	cancel    context.CancelFunc
	clientIPs *ipPool
}

// New starts a bed. Call Close when done (also on failure paths).
func New(ctx context.Context, opts Options) (_ *Bed, err error) {
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.RepoRoot == "" {
		if opts.RepoRoot, err = RepoRoot(); err != nil {
			return nil, err
		}
	}
	if opts.TestbinDir == "" {
		opts.TestbinDir = filepath.Join(opts.RepoRoot, "integration", "testbin", "bin")
	}
	sweepStaleNetns()
	dir, err := os.MkdirTemp("", "uproxy-bed-")
	if err != nil {
		return nil, err
	}
	b := &Bed{opts: opts, Dir: dir, clientIPs: newIPPool(200, 250)}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n(bed logs in %s)", err, dir)
			b.opts.KeepDir = true
			b.Close()
		}
	}()
	start := time.Now()
	if opts.Echoserver == "" {
		b.opts.Echoserver = b.path("echoserver")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", b.opts.Echoserver, "./integration/echoserver")
		cmd.Dir = opts.RepoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build echoserver: %w: %s", err, out)
		}
	}
	if err := b.setupNode(); err != nil {
		return nil, err
	}
	if err := b.startControlPlane(ctx); err != nil {
		return nil, err
	}
	if opts.Kubelet {
		if err = startNodeRuntime(ctx, b); err != nil {
			return nil, err
		}
	} else {
		actx, cancel := context.WithCancel(context.Background())
		b.cancel = cancel
		if b.Agent, err = startAgent(actx, b); err != nil {
			return nil, err
		}
	}
	opts.Logf("bed: control plane and node up in %v (dir %s, node netns %s)", time.Since(start).Round(time.Millisecond), dir, b.Node.Name)
	return b, nil
}

func (b *Bed) path(name string) string { return filepath.Join(b.Dir, name) }

// enableIPv6 switches IPv6 on in namespace n (a kernel may start new
// namespaces with it disabled) before its interfaces are created, plus the
// extra sysctls given. Without IPv6 a dual-stack bed fails: it never skips.
func enableIPv6(n *Netns, extra ...string) error {
	args := append([]string{"sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0"}, extra...)
	if _, err := n.Output(context.Background(), args...); err != nil {
		return fmt.Errorf("dual-stack bed: enabling IPv6 in %s: %w", n.Name, err)
	}
	return nil
}

// podIP6 is the IPv6 address of the pod or client with IPv4 address
// podIP(octet) in a dual-stack bed.
func podIP6(octet int) string { return fmt.Sprintf("fd00:10:244::%d", octet) }

// setupNode creates the node namespace: bridge 10.244.0.1/24, default route
// on the bridge (node-IP detection), ip_forward on. br_netfilter is switched
// off in the namespace (when the kernel has it): clients reach service IPs
// routed through the bridge address, so nat PREROUTING sees them without it,
// and the bed proves that.
func (b *Bed) setupNode() error {
	n, err := NewNetns("node")
	if err != nil {
		return err
	}
	b.Node = n
	lines := []string{
		// A fixed MAC: a bridge without one takes the lowest MAC of its
		// ports and changes it as pods come and go, which leaves clients'
		// ARP entries for the node pointing at a pod's veth (SYNs vanish).
		"link add " + BridgeName + " address " + macFor(1) + " type bridge",
		"addr add " + NodeIP + "/24 dev " + BridgeName,
		"link set " + BridgeName + " up",
		"route add default dev " + BridgeName,
	}
	if b.opts.DualStack {
		if b.opts.Kubelet {
			return errors.New("DualStack is for the agent bed only")
		}
		if err := enableIPv6(n, "net.ipv6.conf.all.forwarding=1"); err != nil {
			return err
		}
		lines = append(lines, "addr add "+NodeIP6+"/64 dev "+BridgeName+" nodad", "route add ::/0 dev "+BridgeName)
	}
	if err := n.IPBatch(lines...); err != nil {
		return err
	}
	_, err = n.Output(context.Background(), "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	if err != nil {
		return err
	}
	if b.opts.Kubelet {
		// As on minikube and kubeadm nodes (a kubeadm preflight check):
		// kube-proxy's iptables mode needs bridged pod-to-pod replies to
		// pass through iptables to be un-NATed.
		_, err = n.Output(context.Background(), "sysctl", "-q", "-w",
			"net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1")
		if err != nil {
			return fmt.Errorf("the kubelet node needs br_netfilter (modprobe br_netfilter): %w", err)
		}
		return nil
	}
	_, err = n.Output(context.Background(), "sysctl", "-q", "-e", "-w",
		"net.bridge.bridge-nf-call-iptables=0", "net.bridge.bridge-nf-call-ip6tables=0")
	return err
}

// Close stops the agent (and every pod), the control plane and deletes the
// node namespace with all iptables rules in it.
func (b *Bed) Close() error {
	var errs []error
	if b.Agent != nil {
		b.Agent.stop()
	}
	if b.cancel != nil {
		b.cancel()
	}
	if b.runtime != nil {
		if err := b.runtime.stop(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range []*Proc{b.scheduler, b.kcm, b.apiserver, b.etcd} {
		if p != nil {
			p.Stop(10 * time.Second)
		}
	}
	if b.Node != nil {
		if err := b.Node.Delete(); err != nil {
			errs = append(errs, err)
		}
	}
	if b.etcdDir != "" {
		_ = os.RemoveAll(b.etcdDir)
	}
	if !b.opts.KeepDir {
		_ = os.RemoveAll(b.Dir)
	}
	return errors.Join(errs...)
}

// Logs returns the last lines of the control-plane logs (for failures).
func (b *Bed) Logs(n int) string {
	var sb strings.Builder
	procs := []*Proc{b.etcd, b.apiserver, b.kcm, b.scheduler}
	if b.runtime != nil {
		procs = append(procs, b.runtime.containerd, b.runtime.kubelet)
	}
	for _, p := range procs {
		if p != nil {
			fmt.Fprintf(&sb, "--- %s (%s)\n%s\n", p.Name, p.LogPath, p.Tail(n))
		}
	}
	return sb.String()
}

// RepoRoot finds the uproxy module root from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/uproxy/uproxy\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("uproxy repository root (go.mod) not found above the working directory")
		}
		dir = parent
	}
}

func mustQuantity(s string) resource.Quantity { return resource.MustParse(s) }
