// Package images builds the container images the kubelet integration bed
// runs, as OCI image layout archives that `ctr -n k8s.io images import`
// imports under their names (Import runs it). Nothing is pulled: the bed has
// no registry, so every image is assembled here from binaries the build made
// and, for the two that need a distribution, a Debian root filesystem made
// with debootstrap and apt (the Debian archive is reachable; container
// registries are not).
//
//   - Uproxy: the repo's Dockerfile runtime stage, rebuilt without docker:
//     Debian bookworm minbase + iptables, conntrack, ca-certificates, the
//     binary at /usr/local/bin/uproxy, user 65532:65532. dockerfile_test.go
//     keeps the two in step.
//   - Pause: pause.c from k8s.io/kubernetes compiled with gcc -static, named as
//     containerd's default sandbox image.
//   - Echo: the static integration/echoserver binary alone.
//   - Client: Debian minbase + curl, dnsutils, netcat-openbsd; sleeps forever.
//   - CoreDNS: the static coredns from integration/testbin alone.
//
// Debian root filesystems take minutes to build, so they are cached outside
// the checkout (see Builder); everything else is rebuilt on every call in
// seconds. Building needs root (debootstrap, chroot). The package does not
// start containerd or talk to the Kubernetes API.
package images

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
)

// Image is an image archive on disk and the name it is imported under.
type Image struct {
	// Name is the full reference, e.g. docker.io/library/uproxy:dev.
	Name string
	// Archive is the OCI image layout tar.
	Archive string
}

// Builder builds images into Dir, caching Debian root filesystems under
// CacheDir. A Builder's methods may run concurrently (cache entries are
// built under a file lock) but not for the same image.
type Builder struct {
	// Dir receives the archives (created if missing).
	Dir string
	// CacheDir holds the Debian root filesystems, keyed by suite, package
	// list and checked tools. The default, $UPROXY_TESTBIN_CACHE/images or
	// /var/cache/uproxy-testbin/images, is outside the checkout so that a
	// fresh clone on the same machine (CI) reuses it. Entries are never
	// refreshed: delete the directory to pick up Debian updates.
	CacheDir string
	// Mirror is the Debian archive; default http://deb.debian.org/debian.
	Mirror string
	// Logf, if set, reports slow steps (debootstrap, apt).
	Logf func(format string, args ...any)
}

func (b *Builder) cacheDir() string {
	if b.CacheDir != "" {
		return b.CacheDir
	}
	if d := os.Getenv("UPROXY_TESTBIN_CACHE"); d != "" {
		return filepath.Join(d, "images")
	}
	return "/var/cache/uproxy-testbin/images"
}

func (b *Builder) logf(format string, args ...any) {
	if b.Logf != nil {
		b.Logf(format, args...)
	}
}

// What the Dockerfile's runtime stage does, as the builder repeats it.
// dockerfile_test.go parses the Dockerfile and compares.
var (
	uproxyPackages = []string{"iptables", "conntrack", "ca-certificates"}
	// uproxyTools is the Dockerfile's check loop: each must be on PATH.
	uproxyTools = []string{"iptables", "iptables-restore", "iptables-save", "ip6tables", "ip6tables-restore",
		"ip6tables-save", "iptables-nft-restore", "iptables-legacy-restore", "ip6tables-nft-restore",
		"ip6tables-legacy-restore", "conntrack"}
	uproxyBinary = "/usr/local/bin/uproxy"
	uproxyUser   = "65532:65532"
	uproxyExpose = []string{"10256/tcp"}
)

// The client image: a shell with curl, dig and nc.
var (
	clientPackages = []string{"curl", "dnsutils", "netcat-openbsd"}
	clientTools    = []string{"sh", "curl", "dig", "nc", "sleep"}
)

// Names of the images whose version is fixed by something else.
const (
	// PauseName is containerd 2.4's default sandbox image, so that pods
	// start without a pull.
	PauseName = "registry.k8s.io/pause:3.10.2"
	// CoreDNSName carries the version integration/testbin/coredns builds.
	CoreDNSName = "registry.k8s.io/coredns/coredns:v1.14.2"
	// ClientName is the client image's name.
	ClientName = "docker.io/library/client:dev"
)

// tagPattern is the reference grammar's tag.
var tagPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// Uproxy builds docker.io/library/uproxy:<tag>: the Dockerfile's runtime
// stage around binary (bin/uproxy from make build).
func (b *Builder) Uproxy(ctx context.Context, binary, tag string) (Image, error) {
	if !tagPattern.MatchString(tag) {
		return Image{}, fmt.Errorf("uproxy image: bad tag %q", tag)
	}
	rootfs, err := b.rootFS(ctx, uproxyPackages, uproxyTools)
	if err != nil {
		return Image{}, fmt.Errorf("uproxy image: %w", err)
	}
	return b.build("docker.io/library/uproxy:"+tag, "uproxy-"+tag, []layer{rootfs}, binary, uproxyBinary, false,
		uproxyConfig())
}

// uproxyConfig is the uproxy image's configuration: the Dockerfile's USER,
// EXPOSE and ENTRYPOINT, and debian:bookworm-slim's PATH.
func uproxyConfig() imageConfig {
	return imageConfig{User: uproxyUser, ExposedPorts: ports(uproxyExpose), Env: []string{pathEnv},
		Entrypoint: []string{uproxyBinary}}
}

// Echo builds docker.io/library/echoserver:<tag> from the static binary of
// integration/echoserver (bin/echoserver from make build), alone in the
// image as /echoserver. A pod gives it --http=:PORT (or --tcp-echo,
// --udp-echo) as args and POD_NAME, POD_IP from the downward API.
func (b *Builder) Echo(ctx context.Context, binary, tag string) (Image, error) {
	if !tagPattern.MatchString(tag) {
		return Image{}, fmt.Errorf("echoserver image: bad tag %q", tag)
	}
	return b.build("docker.io/library/echoserver:"+tag, "echoserver-"+tag, nil, binary, "/echoserver", true,
		imageConfig{Entrypoint: []string{"/echoserver"}})
}

// CoreDNS builds CoreDNSName from the static binary integration/testbin
// builds, alone in the image as /coredns (entrypoint, so a Deployment's args
// are -conf /etc/coredns/Corefile). It runs as root: upstream's image runs
// as 65532 with a file capability to bind port 53.
func (b *Builder) CoreDNS(ctx context.Context, binary string) (Image, error) {
	return b.build(CoreDNSName, "coredns", nil, binary, "/coredns", true,
		imageConfig{ExposedPorts: ports([]string{"53/tcp", "53/udp", "9153/tcp"}), Entrypoint: []string{"/coredns"}})
}

// Client builds ClientName: Debian minbase with sh, curl, dig and nc; its
// entrypoint sleeps forever (exec into it).
func (b *Builder) Client(ctx context.Context) (Image, error) {
	rootfs, err := b.rootFS(ctx, clientPackages, clientTools)
	if err != nil {
		return Image{}, fmt.Errorf("client image: %w", err)
	}
	img := Image{Name: ClientName, Archive: filepath.Join(b.Dir, "client.tar")}
	if err := b.write(img, []layer{rootfs}, imageConfig{Env: []string{pathEnv},
		Entrypoint: []string{"sleep", "infinity"}}); err != nil {
		return Image{}, fmt.Errorf("client image: %w", err)
	}
	return img, nil
}

// build writes the image name to Dir/<archive>.tar: layers, then one layer
// holding binary at dst (mode 0755). static requires a statically linked
// binary (the image has no libc).
func (b *Builder) build(name, archive string, layers []layer, binary, dst string, static bool, cfg imageConfig) (Image, error) {
	img := Image{Name: name, Archive: filepath.Join(b.Dir, archive+".tar")}
	if static {
		if err := checkStatic(binary); err != nil {
			return Image{}, fmt.Errorf("image %s: %w", name, err)
		}
	}
	data, err := os.ReadFile(binary)
	if err != nil {
		return Image{}, fmt.Errorf("image %s: %w", name, err)
	}
	top, err := filesLayer(file{path: dst, mode: 0o755, data: data})
	if err == nil {
		err = b.write(img, append(layers[:len(layers):len(layers)], top), cfg)
	}
	if err != nil {
		return Image{}, fmt.Errorf("image %s: %w", name, err)
	}
	return img, nil
}

func (b *Builder) write(img Image, layers []layer, cfg imageConfig) error {
	if err := os.MkdirAll(b.Dir, 0o755); err != nil {
		return err
	}
	return writeArchive(img.Archive, img.Name, cfg, layers)
}

// checkStatic fails unless path is an ELF executable without an
// interpreter (a static binary: CGO_ENABLED=0 or gcc -static).
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New(path + " is dynamically linked; the image has no libc (build it with CGO_ENABLED=0)")
		}
	}
	return nil
}

func ports(ps []string) map[string]struct{} {
	m := make(map[string]struct{}, len(ps))
	for _, p := range ps {
		m[p] = struct{}{}
	}
	return m
}
