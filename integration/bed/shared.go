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

// shared is the bed of this test binary, started by the first test that
// asks for it and closed by Main.
var shared struct {
	once sync.Once
	bed  *Bed
	err  error
}

// Shared returns the test binary's shared bed, starting it on first use.
// Tests using it run one at a time and each works in its own Kubernetes
// namespace (see Namespace). The bed is torn down by Main.
func Shared(t testing.TB) *Bed {
	t.Helper()
	Require(t)
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		start := time.Now()
		shared.bed, shared.err = New(ctx, Options{Logf: func(f string, a ...any) {
			fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05.000 ")+f+"\n", a...)
		}})
		if shared.err == nil {
			fmt.Printf("BED: up in %v\n", time.Since(start).Round(time.Millisecond))
		}
	})
	if shared.err != nil {
		t.Fatalf("bed: %v", shared.err)
	}
	return shared.bed
}

// Main runs the tests and tears the shared bed down afterwards; call it from
// TestMain: func TestMain(m *testing.M) { os.Exit(bed.Main(m)) }.
func Main(m *testing.M) int {
	code := m.Run()
	if shared.bed != nil {
		if code != 0 {
			shared.bed.opts.KeepDir = true
			fmt.Fprintf(os.Stderr, "bed: logs kept in %s\n", shared.bed.Dir)
		}
		if err := shared.bed.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "bed: close: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}
