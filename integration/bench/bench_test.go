package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/uproxy/uproxy/integration/bed"
)

// TestBench is `make bench`: every measure in one run on one bed, then
// BENCHMARKS.md and docs/bench.svg at the repo root. A phase that fails is
// reported as not measured; the report is still written.
func TestBench(t *testing.T) {
	requireBench(t)
	b := bed.Shared(t)
	root, err := bed.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	res := NewResults()
	res.Machine = machine(root)
	res.Notes = append(res.Notes,
		"Topology: client namespace → node namespace (bridge 10.244.0.1/24) → pod namespace running the project's Go echoserver (HTTP `/` hello, `/bytes?n=N`) and dnsmasq. direct = client → pod IP; uproxy = client → ClusterIP, redirected by uproxy's iptables portal (nat PREROUTING) to its listener in the node namespace; HAProxy listens on the node address 10.244.0.1 (no iptables in the way).",
		"HAProxy 2.6 runs in the node namespace with nbthread 2 and option splice-auto, in two configurations at once: haproxy-tcp (mode tcp: an L4 relay like uproxy) and haproxy-http (mode http, keep-alive on both sides, http-reuse always). HAProxy does not proxy UDP, so DNS is direct vs uproxy only.",
		"wrk -t2 -c32 -d10s --latency per run, 3 runs per target, targets interleaved run by run after a 2 s warm-up each; Connection: close runs likewise (the client namespace has tcp_tw_reuse=1 and ip_local_port_range 1024-65535, so the client does not run out of ports). Bulk: 5 curl downloads of 64 MiB per target, interleaved. DNS: dnsperf -c 4 -q 64 -l 10 (4 sockets, up to 64 queries in flight) against dnsmasq (--address, no upstream), 3 runs per target.",
		"uproxy runs as built by `make build` with --profiling and otherwise default flags (--iptables-min-sync-period 1s); everything (client tools, proxies, echoserver, control plane) shares the machine's 2 cores, so each proxy also competes with its load generator for CPU.",
	)
	t.Run("dataplane", func(t *testing.T) { benchDataPlane(t, b, res) })
	t.Run("controlplane", func(t *testing.T) { benchControlPlane(t, b, res) })

	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		res.Notes = append(res.Notes, fmt.Sprintf("Load: /proc/loadavg was %s before and %s after the run. Other sessions' builds and tests share this 2-core machine, so runs vary by up to 3× between rounds; the targets are interleaved within each round so that a ratio compares targets under similar load, and the per-run figures below show the spread.", res.Machine.LoadBefore, strings.TrimSpace(string(b))))
	}
	var md, svg strings.Builder
	if err := res.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if err := res.WriteSVG(&svg); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "BENCHMARKS.md"), []byte(md.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "docs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "docs", "bench.svg"), []byte(svg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, g := range res.Goals() {
		fmt.Printf("GOAL %-45s %-30s %-8v %s\n", g.Measure, g.Goal, g.Met, g.Measured)
	}
}

// machine describes the host (best effort: unknown fields stay empty).
func machine(root string) Machine {
	m := Machine{NProc: runtime.NumCPU(), GoVersion: runtime.Version()}
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		m.Kernel = strings.TrimSpace(string(out))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.LoadBefore = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command("haproxy", "-v").Output(); err == nil {
		m.HAProxyVersion, _, _ = strings.Cut(string(out), "\n")
	}
	cmd := exec.Command("git", "describe", "--always", "--dirty")
	cmd.Dir = root
	if out, err := cmd.Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	return m
}

// podInfo returns the name and IP of the single ready pod of app.
func podInfo(t *testing.T, b *bed.Bed, ns, app string) (string, string) {
	t.Helper()
	pods, err := b.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.PodIP != "" {
			return p.Name, p.Status.PodIP
		}
	}
	t.Fatalf("no pod of app=%s with an IP", app)
	return "", ""
}

func udpPort(name string, port, target int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: corev1.ProtocolUDP, Port: port, TargetPort: intstr.FromInt32(target)}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
