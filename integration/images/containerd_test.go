package images

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// testbin is where integration/testbin/build.sh puts binaries.
var testbin = filepath.Join("..", "testbin", "bin")

// requireBuild skips (fails in CI) without root or the tools images need.
func requireBuild(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFatal(t, "building images needs root (debootstrap, chroot)")
	}
	for _, tool := range []string{"debootstrap", "gcc", "tar", "unshare", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFatal(t, "building images needs %s on PATH (scripts/setup.sh installs it)", tool)
		}
	}
}

// goBuild builds a static binary of pkg (relative to the repo root) into dir.
func goBuild(t *testing.T, dir, pkg string) string {
	t.Helper()
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./"+pkg)
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// buildAll builds the five images the way the bed does and checks each
// archive with tar -tf.
func buildAll(t *testing.T, ctx context.Context) []Image {
	t.Helper()
	coredns := filepath.Join(testbin, "coredns")
	if _, err := os.Stat(coredns); err != nil {
		skipOrFatal(t, "%s missing: run `make testbin`", coredns)
	}
	bins := t.TempDir()
	uproxy, echo := goBuild(t, bins, "cmd/uproxy"), goBuild(t, bins, "integration/echoserver")
	b := &Builder{Dir: t.TempDir(), Logf: t.Logf}
	steps := []struct {
		name  string
		build func() (Image, error)
	}{
		{"uproxy", func() (Image, error) { return b.Uproxy(ctx, uproxy, "test") }},
		{"pause", func() (Image, error) { return b.Pause(ctx) }},
		{"echoserver", func() (Image, error) { return b.Echo(ctx, echo, "test") }},
		{"client", func() (Image, error) { return b.Client(ctx) }},
		{"coredns", func() (Image, error) { return b.CoreDNS(ctx, coredns) }},
	}
	var imgs []Image
	for _, s := range steps {
		start := time.Now()
		img, err := s.build()
		if err != nil {
			t.Fatalf("build %s: %v", s.name, err)
		}
		st, err := os.Stat(img.Archive)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("built %s (%d MB) in %v", img.Name, st.Size()>>20, time.Since(start).Round(time.Millisecond))
		list, err := exec.Command("tar", "-tf", img.Archive).CombinedOutput()
		if err != nil {
			t.Fatalf("tar -tf %s: %v\n%s", img.Archive, err, list)
		}
		for _, want := range []string{"oci-layout", "index.json"} {
			if !slices.Contains(strings.Fields(string(list)), want) {
				t.Fatalf("%s lacks %s:\n%s", img.Archive, want, list)
			}
		}
		imgs = append(imgs, img)
	}
	return imgs
}

// TestImagesInContainerd builds every image, imports them into a throwaway
// containerd, checks their names and runs each once.
func TestImagesInContainerd(t *testing.T) {
	requireBuild(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	imgs := buildAll(t, ctx)

	c := startContainerd(t, ctx)
	start := time.Now()
	if err := Import(ctx, c.ctr, c.address, imgs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("imported %d images in %v", len(imgs), time.Since(start).Round(time.Millisecond))
	names := strings.Fields(c.run(t, ctx, "images", "ls", "-q"))
	for _, img := range imgs {
		if !slices.Contains(names, img.Name) {
			t.Errorf("containerd has %v, not %s", names, img.Name)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	byName := map[string]string{}
	for _, img := range imgs {
		byName[strings.SplitN(strings.TrimPrefix(img.Name, "docker.io/library/"), ":", 2)[0]] = img.Name
	}
	cases := map[string]struct {
		image string
		args  []string
		want  string
	}{
		"uproxy runs iptables": {byName["uproxy"], []string{"iptables", "--version"}, "iptables v1."},
		"uproxy binary":        {byName["uproxy"], []string{"/usr/local/bin/uproxy", "--version"}, "uproxy"},
		"uproxy user":          {byName["uproxy"], []string{"id", "-u"}, "65532"},
		"pause":                {byName["registry.k8s.io/pause"], []string{"/pause", "-v"}, "pause.c v3.10.2"},
		"coredns":              {byName["registry.k8s.io/coredns/coredns"], []string{"/coredns", "-version"}, "CoreDNS-1.14.2"},
		"client tools":         {byName["client"], []string{"sh", "-c", "curl --version && dig -v 2>&1 && command -v nc"}, "/usr/bin/nc"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			out := c.run(t, ctx, append(c.runArgs(name, "--rm", tc.image, c.id(name)), tc.args...)...)
			if !strings.Contains(out, tc.want) {
				t.Fatalf("output lacks %q:\n%s", tc.want, out)
			}
			t.Logf("%s: %s", strings.Join(tc.args, " "), tail(out, 300))
		})
	}
	t.Run("echoserver answers /catalogdetail", func(t *testing.T) {
		testEcho(t, ctx, c, byName["echoserver"])
	})
}

// testEcho runs the echoserver image in the host network namespace as a pod
// would run it (POD_NAME and POD_IP from the downward API, --http from args)
// and asks for the seed's path.
func testEcho(t *testing.T, ctx context.Context, c *containerd, image string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	id := c.id("echo")
	c.run(t, ctx, c.runArgs("echo", "-d", "--net-host", "--env", "POD_NAME=proddetail-1", "--env", "POD_IP=10.244.1.7",
		image, id, "/echoserver", "--http="+addr)...)
	t.Cleanup(func() {
		c.run(t, ctx, "tasks", "kill", "--signal", "SIGTERM", id)
		// The task ends with exit 0 on SIGTERM; delete waits for it.
		for i := 0; i < 50; i++ {
			if err := exec.CommandContext(ctx, c.ctr, c.args("tasks", "delete", id)...).Run(); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		c.run(t, ctx, "containers", "delete", id)
	})
	var body string
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/catalogdetail")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %s: %s", resp.Status, b)
			}
			body = string(b)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("echoserver never answered on %s: %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if want := "Hello! I am Pod: proddetail-1 10.244.1.7"; !strings.HasPrefix(body, want) {
		t.Fatalf("answer %q, want %q", body, want)
	}
}

// containerd is a throwaway containerd of one test.
type containerd struct {
	ctr, address string
	// dir holds ctr's FIFOs and runc's state (by default in /run/containerd).
	dir string
	// tag makes container IDs and cgroup paths unique to this process.
	tag string
}

func (c *containerd) args(args ...string) []string {
	return append([]string{"--address", c.address, "--namespace", "k8s.io"}, args...)
}

func (c *containerd) id(name string) string {
	return fmt.Sprintf("%s-%s", c.tag, strings.ReplaceAll(name, " ", "-"))
}

// runArgs starts a `ctr run` of the container name with the test's cgroup
// parent (removed by the cleanup), FIFO directory and runc root, then args.
func (c *containerd) runArgs(name string, args ...string) []string {
	return append([]string{"run", "--cgroup", "/" + c.tag + "/" + c.id(name), "--fifo-dir", filepath.Join(c.dir, "fifo"),
		"--runc-root", filepath.Join(c.dir, "runc")}, args...)
}

// run runs ctr and returns its output; failing is fatal.
func (c *containerd) run(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, c.ctr, c.args(args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
