package images

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// kubeVersion is the k8s.io/kubernetes module integration/testbin/kube
// builds from; its build/pause/linux/pause.c is the pause binary's source.
const kubeVersion = "v1.36.3"

// Pause builds PauseName: pause.c from the k8s.io/kubernetes module (in the
// Go module cache once make testbin has run) compiled with gcc -static, as
// upstream's image: /pause, user 65535:65535.
func (b *Builder) Pause(ctx context.Context) (Image, error) {
	src, err := pauseSource(ctx)
	if err != nil {
		return Image{}, fmt.Errorf("pause image: %w", err)
	}
	if err := os.MkdirAll(b.Dir, 0o755); err != nil {
		return Image{}, err
	}
	bin, err := os.CreateTemp(b.Dir, "pause-*.bin")
	if err != nil {
		return Image{}, err
	}
	bin.Close()
	defer os.Remove(bin.Name())
	// Upstream's flags (build/pause/Makefile), VERSION without the git rev.
	tag := PauseName[strings.LastIndex(PauseName, ":")+1:]
	if err := run(ctx, "", "gcc", "-Os", "-Wall", "-Werror", "-static", "-DVERSION=v"+tag+"-"+kubeVersion,
		"-o", bin.Name(), src); err != nil {
		return Image{}, fmt.Errorf("pause image: %w", err)
	}
	return b.build(PauseName, "pause", nil, bin.Name(), "/pause", true,
		imageConfig{User: "65535:65535", Entrypoint: []string{"/pause"}})
}

// pauseSource finds pause.c in the Go module cache.
func pauseSource(ctx context.Context) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "env", "GOMODCACHE")
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local") // no toolchain download for a path
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMODCACHE: %w", err)
	}
	src := filepath.Join(strings.TrimSpace(string(out)), "k8s.io", "kubernetes@"+kubeVersion, "build", "pause", "linux", "pause.c")
	if _, err := os.Stat(src); err != nil {
		return "", fmt.Errorf("%w (the module is downloaded by `make testbin`)", err)
	}
	return src, nil
}
