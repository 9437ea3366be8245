package bed

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// strict reports whether missing prerequisites must fail rather than skip.
func strict() bool {
	return os.Getenv("CI") == "true" || os.Getenv("UPROXY_REQUIRE_ROOT") == "1"
}

// skipOrFatal skips, or fails under CI=true / UPROXY_REQUIRE_ROOT=1.
func skipOrFatal(t testing.TB, format string, args ...any) {
	t.Helper()
	if strict() {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// Tools the bed and its scenarios run.
var tools = []string{"ip", "iptables", "iptables-save", "sysctl", "curl", "nc", "dig", "go"}

// Require checks root, tools and the control-plane binaries.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFatal(t, "integration bed needs root (network namespaces, iptables)")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFatal(t, "integration bed needs %s on PATH (scripts/setup.sh installs it)", tool)
		}
	}
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(root, "integration", "testbin", "bin", c)); err != nil {
			skipOrFatal(t, "control plane binary %s missing: run `make testbin`", c)
		}
	}
}

// nodeTools and nodeBinaries are what the kubelet node needs on top.
var (
	nodeTools    = []string{"runc", "unshare", "nsenter", "debootstrap", "gcc", "mount"}
	nodeBinaries = []string{"kube-scheduler", "kubelet", "kube-proxy", "kubectl", "containerd",
		"containerd-shim-runc-v2", "ctr", "bridge", "host-local", "loopback", "portmap", "coredns"}
)

// RequireNode checks what Require checks plus the kubelet node's tools and
// binaries (`make testbin` builds them).
func RequireNode(t testing.TB) {
	t.Helper()
	Require(t)
	for _, tool := range nodeTools {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFatal(t, "kubelet node needs %s on PATH (scripts/setup.sh installs it)", tool)
		}
	}
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range nodeBinaries {
		if _, err := os.Stat(filepath.Join(root, "integration", "testbin", "bin", c)); err != nil {
			skipOrFatal(t, "kubelet node binary %s missing: run `make testbin`", c)
		}
	}
}

// sharedBed is a bed of this test binary, started by the first test that
// asks for it and closed by Main.
type sharedBed struct {
	once sync.Once
	bed  *Bed
	err  error
}

// shared is the namespace bed, sharedNode the kubelet node bed, sharedDual
// the dual-stack namespace bed.
var shared, sharedNode, sharedDual sharedBed

// start starts the bed once with opts.
func (s *sharedBed) start(t testing.TB, opts Options, timeout time.Duration) *Bed {
	t.Helper()
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		start := time.Now()
		opts.Logf = func(f string, a ...any) {
			fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05.000 ")+f+"\n", a...)
		}
		s.bed, s.err = New(ctx, opts)
		if s.err == nil {
			fmt.Printf("BED: up in %v\n", time.Since(start).Round(time.Millisecond))
		}
	})
	if s.err != nil {
		t.Fatalf("bed: %v", s.err)
	}
	return s.bed
}

// SharedNode returns the test binary's kubelet node bed (Options.Kubelet),
// starting it on first use; Main tears it down. Tests using it run one at a
// time, each in its own Kubernetes namespace.
func SharedNode(t testing.TB) *Bed {
	t.Helper()
	RequireNode(t)
	return sharedNode.start(t, Options{Kubelet: true}, 10*time.Minute)
}

// Shared returns the test binary's shared bed, starting it on first use.
// Tests using it run one at a time and each works in its own Kubernetes
// namespace (see Namespace). The bed is torn down by Main.
func Shared(t testing.TB) *Bed {
	t.Helper()
	Require(t)
	return shared.start(t, Options{}, 3*time.Minute)
}

// SharedDualStack returns the test binary's dual-stack bed
// (Options.DualStack), starting it on first use; Main tears it down. Tests
// using it run one at a time, each in its own Kubernetes namespace.
func SharedDualStack(t testing.TB) *Bed {
	t.Helper()
	Require(t)
	return sharedDual.start(t, Options{DualStack: true}, 3*time.Minute)
}

// Main runs the tests and tears the shared bed down afterwards; call it from
// TestMain: func TestMain(m *testing.M) { os.Exit(bed.Main(m)) }.
func Main(m *testing.M) int {
	code := m.Run()
	for _, b := range []*Bed{shared.bed, sharedNode.bed, sharedDual.bed} {
		if b == nil {
			continue
		}
		if code != 0 {
			b.opts.KeepDir = true
			fmt.Fprintf(os.Stderr, "bed: logs kept in %s\n", b.Dir)
		}
		if err := b.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "bed: close: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}
