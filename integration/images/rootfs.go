package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// debianSuite is the Debian release of the Dockerfile's runtime stage
// (debian:bookworm-slim).
var debianSuite = "bookworm"

// defaultMirror is where debootstrap and apt fetch packages; the security
// archive is the mirror's URL with "-security" appended.
const defaultMirror = "http://deb.debian.org/debian"

// recipe names the way rootFS builds a root filesystem; change it when
// that changes so that old cache entries are not reused.
const recipe = "r1"

// pathEnv is PATH inside the Debian images (as in debian:bookworm-slim).
const pathEnv = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// slimScript makes a fresh debootstrap tree look like debian:*-slim: no
// documentation, manual pages or translations, now or from later installs.
const slimScript = `
cat > etc/dpkg/dpkg.cfg.d/slim <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
find usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find usr/share/doc -mindepth 1 -type d -empty -delete
rm -rf usr/share/man/* usr/share/info/*
find usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
`

// rootFSMeta is what the cache keeps beside a root filesystem layer.
type rootFSMeta struct {
	Suite    string   `json:"suite"`
	Packages []string `json:"packages"`
	Tools    []string `json:"tools"`
	Digest   string   `json:"digest"`
	DiffID   string   `json:"diffID"`
	Size     int64    `json:"size"`
}

// rootFS returns a layer holding a whole Debian minbase root filesystem of
// debianSuite with packages installed and the apt lists removed, after
// checking that every one of tools is found by `command -v` in it. The layer
// is cached under CacheDir keyed by suite, packages and tools; the debootstrap
// tree they all start from is cached once per suite.
func (b *Builder) rootFS(ctx context.Context, packages, tools []string) (layer, error) {
	packages, tools = slices.Sorted(slices.Values(packages)), slices.Sorted(slices.Values(tools))
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n", recipe, debianSuite, strings.Join(packages, " "), strings.Join(tools, " "))
	dir := filepath.Join(b.cacheDir(), fmt.Sprintf("debian-%s-%s", debianSuite, hex.EncodeToString(h.Sum(nil))[:16]))
	if l, err := cachedRootFS(dir); err == nil {
		return l, nil
	}

	unlock, err := b.lockCache(ctx)
	if err != nil {
		return layer{}, err
	}
	defer unlock()
	if l, err := cachedRootFS(dir); err == nil { // built while we waited
		return l, nil
	}
	start := time.Now()
	base, err := b.debootstrap(ctx)
	if err != nil {
		return layer{}, err
	}
	work, err := os.MkdirTemp(b.cacheDir(), "build-")
	if err != nil {
		return layer{}, err
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return layer{}, err
	}
	if err := run(ctx, "", "tar", "-xpf", base, "--numeric-owner", "-C", root); err != nil {
		return layer{}, err
	}
	b.logf("images: installing %s into a Debian %s root filesystem", strings.Join(packages, " "), debianSuite)
	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return layer{}, err
	}
	if err := os.WriteFile(filepath.Join(root, "etc/resolv.conf"), resolv, 0o644); err != nil {
		return layer{}, err
	}
	script := "export DEBIAN_FRONTEND=noninteractive\n"
	if len(packages) > 0 {
		script += "apt-get update -qq\napt-get install -y -qq --no-install-recommends " + strings.Join(packages, " ") +
			" >/dev/null\napt-get clean\n"
	}
	script += "rm -rf /var/lib/apt/lists/*\nfor t in " + strings.Join(tools, " ") + "; do\n" +
		"  command -v \"$t\" >/dev/null || { echo \"missing $t\" >&2; exit 1; }\ndone\n"
	if err := chroot(ctx, root, script); err != nil {
		return layer{}, fmt.Errorf("install %s: %w", strings.Join(packages, " "), err)
	}
	// Left for the container runtime to provide: /dev nodes, resolv.conf
	// and hostname (debootstrap copies the host's).
	if err := run(ctx, root, "sh", "-ec", "find dev -mindepth 1 -delete; rm -f etc/resolv.conf etc/hostname"); err != nil {
		return layer{}, err
	}

	out := filepath.Join(work, "layer")
	if err := os.Mkdir(out, 0o755); err != nil {
		return layer{}, err
	}
	l, err := tarLayer(ctx, root, filepath.Join(out, "layer.tar.gz"))
	if err != nil {
		return layer{}, err
	}
	meta, err := json.MarshalIndent(rootFSMeta{Suite: debianSuite, Packages: packages, Tools: tools,
		Digest: l.digest, DiffID: l.diffID, Size: l.size}, "", "  ")
	if err != nil {
		return layer{}, err
	}
	if err := os.WriteFile(filepath.Join(out, "layer.json"), meta, 0o644); err != nil {
		return layer{}, err
	}
	if err := os.Rename(out, dir); err != nil {
		return layer{}, err
	}
	b.logf("images: root filesystem %s built in %v (%d MB compressed)", filepath.Base(dir),
		time.Since(start).Round(time.Second), l.size>>20)
	return cachedRootFS(dir)
}

// cachedRootFS returns the layer a cache entry holds.
func cachedRootFS(dir string) (layer, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "layer.json"))
	if err != nil {
		return layer{}, err
	}
	var m rootFSMeta
	if err := json.Unmarshal(raw, &m); err != nil {
		return layer{}, fmt.Errorf("%s: %w", dir, err)
	}
	p := filepath.Join(dir, "layer.tar.gz")
	if st, err := os.Stat(p); err != nil || st.Size() != m.Size {
		return layer{}, fmt.Errorf("%s: layer missing or truncated", dir)
	}
	return layer{path: p, digest: m.Digest, diffID: m.DiffID, size: m.Size}, nil
}

// debootstrap returns the tar of a minbase tree of debianSuite made slim,
// with the suite's updates and security archives in its sources.list, from
// the cache or built (a few minutes). The caller holds the cache lock.
func (b *Builder) debootstrap(ctx context.Context) (string, error) {
	mirror := b.Mirror
	if mirror == "" {
		mirror = defaultMirror
	}
	mirror = strings.TrimSuffix(mirror, "/")
	h := sha256.Sum256([]byte(recipe + "\n" + debianSuite + "\n" + mirror))
	tarball := filepath.Join(b.cacheDir(), fmt.Sprintf("debian-%s-minbase-%s.tar", debianSuite, hex.EncodeToString(h[:])[:16]))
	if _, err := os.Stat(tarball); err == nil {
		return tarball, nil
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return "", errors.New("debootstrap not found: apt-get install debootstrap (scripts/setup.sh installs it)")
	}
	b.logf("images: debootstrap --variant=minbase %s from %s (cold cache: a few minutes)", debianSuite, mirror)
	start := time.Now()
	work, err := os.MkdirTemp(b.cacheDir(), "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	// debootstrap mounts /proc and /sys in the tree: a private mount
	// namespace drops them even if it is killed.
	if err := run(ctx, "", "unshare", "--mount", "--propagation", "private", "--",
		"debootstrap", "--variant=minbase", debianSuite, root, mirror); err != nil {
		return "", fmt.Errorf("debootstrap: %w", err)
	}
	sources := fmt.Sprintf("deb %[1]s %[2]s main\ndeb %[1]s %[2]s-updates main\ndeb %[1]s-security %[2]s-security main\n",
		mirror, debianSuite)
	if err := os.WriteFile(filepath.Join(root, "etc/apt/sources.list"), []byte(sources), 0o644); err != nil {
		return "", err
	}
	if err := run(ctx, root, "sh", "-ec", slimScript); err != nil {
		return "", fmt.Errorf("slim: %w", err)
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		return "", err
	}
	args := []string{"--numeric-owner", "-C", root, "-cf", tarball + ".tmp"}
	for _, e := range entries {
		args = append(args, e.Name())
	}
	if err := run(ctx, "", "tar", args...); err != nil {
		return "", err
	}
	if err := os.Rename(tarball+".tmp", tarball); err != nil {
		return "", err
	}
	b.logf("images: debootstrap %s done in %v", debianSuite, time.Since(start).Round(time.Second))
	return tarball, nil
}

// tarLayer writes the tree at root as a gzip layer at dst (entries named
// without a leading "./", numeric owners, sorted).
func tarLayer(ctx context.Context, root, dst string) (layer, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return layer{}, err
	}
	args := []string{"--numeric-owner", "--sort=name", "-C", root, "-cf", "-"}
	for _, e := range entries {
		args = append(args, e.Name())
	}
	f, err := os.Create(dst)
	if err != nil {
		return layer{}, err
	}
	defer f.Close()
	cmd := command(ctx, "tar", args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return layer{}, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return layer{}, err
	}
	h := sha256.New()
	diffID, cerr := compress(io.MultiWriter(f, h), stdout)
	if werr := cmd.Wait(); werr != nil {
		return layer{}, fmt.Errorf("tar %s: %w: %s", root, werr, stderr.String())
	}
	if cerr != nil {
		return layer{}, cerr
	}
	st, err := f.Stat()
	if err != nil {
		return layer{}, err
	}
	return layer{path: dst, digest: "sha256:" + hex.EncodeToString(h.Sum(nil)), diffID: diffID, size: st.Size()}, f.Close()
}

// chroot runs script with sh in root, with /proc mounted in a private mount
// namespace (so no mount outlives it) and a plain environment.
func chroot(ctx context.Context, root, script string) error {
	cmd := command(ctx, "unshare", "--mount", "--propagation", "private", "--", "sh", "-ec",
		`mount -t proc proc "$1/proc"; exec chroot "$1" /bin/sh -ec "$2"`, "sh", root, script)
	cmd.Env = []string{pathEnv, "HOME=/root", "LANG=C.UTF-8"}
	return runCmd(cmd)
}

// lockCache takes the cache's build lock (an flock, so that concurrent test
// binaries build each entry once) and sweeps build directories a killed
// builder left behind.
func (b *Builder) lockCache(ctx context.Context) (func(), error) {
	if err := os.MkdirAll(b.cacheDir(), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(b.cacheDir(), ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for logged := false; ; {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		if !logged {
			b.logf("images: waiting for another builder's lock on %s", f.Name())
			logged = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	stale, _ := filepath.Glob(filepath.Join(b.cacheDir(), "build-*"))
	for _, d := range stale {
		_ = os.RemoveAll(d)
	}
	return func() { f.Close() }, nil
}
