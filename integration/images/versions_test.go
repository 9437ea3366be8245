package images

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// skipOrFatal skips, or fails under CI=true / UPROXY_REQUIRE_ROOT=1 (as
// integration/bed does): in CI a missing tool or privilege is a failure.
func skipOrFatal(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" || os.Getenv("UPROXY_REQUIRE_ROOT") == "1" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// requiredVersion returns the version of module in a testbin module's go.mod.
func requiredVersion(t *testing.T, testbinModule, module string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "testbin", testbinModule, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*(?:require\s+)?` + regexp.QuoteMeta(module) + `\s+(v\S+)`).FindSubmatch(raw)
	if m == nil {
		t.Fatalf("testbin/%s/go.mod does not require %s", testbinModule, module)
	}
	return string(m[1])
}

// TestVersionsFollowTestbin checks the names and sources pinned here against
// the versions integration/testbin builds.
func TestVersionsFollowTestbin(t *testing.T) {
	if got := requiredVersion(t, "kube", "k8s.io/kubernetes"); got != kubeVersion {
		t.Errorf("testbin builds k8s.io/kubernetes %s, pause.c is taken from %s: update kubeVersion", got, kubeVersion)
	}
	if got := requiredVersion(t, "coredns", "github.com/coredns/coredns"); !strings.HasSuffix(CoreDNSName, ":"+got) {
		t.Errorf("testbin builds coredns %s, the image is named %s: update CoreDNSName", got, CoreDNSName)
	}
}

// TestPauseIsContainerdSandboxImage checks PauseName against the default
// sandbox image of the containerd testbin builds (from its module source).
func TestPauseIsContainerdSandboxImage(t *testing.T) {
	v := requiredVersion(t, "containerd", "github.com/containerd/containerd/v2")
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(strings.TrimSpace(string(out)), "github.com", "containerd", "containerd", "v2@"+v,
		"internal", "cri", "config", "config.go")
	raw, err := os.ReadFile(src)
	if err != nil {
		skipOrFatal(t, "containerd %s source not in the module cache (make testbin downloads it): %v", v, err)
	}
	m := regexp.MustCompile(`DefaultSandboxImage\s*=\s*"([^"]+)"`).FindSubmatch(raw)
	if m == nil {
		t.Fatalf("no DefaultSandboxImage in %s", src)
	}
	if string(m[1]) != PauseName {
		t.Errorf("containerd %s's sandbox image is %s, the pause image is named %s: update PauseName", v, m[1], PauseName)
	}
}
