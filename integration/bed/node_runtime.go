package bed

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The kubelet node's pod network: a CNI bridge of its own in the node
// namespace (never the bed's client bridge), pods on 10.244.1.0/24.
const (
	CNIBridge  = "upcni0"
	PodSubnet  = "10.244.1.0/24"
	PodGateway = "10.244.1.1"
	ClusterDNS = "10.96.0.10"
	// SandboxImage is containerd 2.4's default sandbox (pause) image; the
	// bed builds it and imports it under this name.
	SandboxImage = "registry.k8s.io/pause:3.10.2"
)

// nodeRuntime is the kubelet node: containerd and kubelet in the node network
// namespace and in a mount namespace of their own, so that their mounts
// (overlay snapshots, pod network namespaces, volume tmpfs) and the paths
// they hard-code (/var/lib/kubelet, /var/lib/cni, /var/log/containers, /run)
// never touch the host's. What cannot be kept private, the cgroup trees, lives
// under one cgroup root named after the test process, removed by stop.
type nodeRuntime struct {
	b   *Bed
	dir string // the node's state: containerd root and state, kubelet root, logs
	// Address is containerd's socket (reachable from the host mount namespace).
	Address    string
	cgroupRoot string   // "/uproxy-bed-<pid>", in every v1 hierarchy
	cgroupDirs []string // <hierarchy mount>/<cgroupRoot>, made by startNodeRuntime
	mountNS    string   // containerd's mount namespace, e.g. "mnt:[4026532612]"

	containerd, kubelet *Proc
}

// startNodeRuntime starts containerd and kubelet, sets b.runtime and waits
// until the Node is Ready. On error the caller's Close stops what was
// started.
func startNodeRuntime(ctx context.Context, b *Bed) error {
	sweepStaleCgroups()
	r := &nodeRuntime{b: b, dir: b.path("node"), cgroupRoot: fmt.Sprintf("/%s%d", cgroupPrefix, os.Getpid())}
	r.Address = filepath.Join(r.dir, "containerd.sock")
	b.runtime = r // Close stops what this starts, also on error
	for _, d := range []string{"containerd/root", "containerd/state", "containerd/tmp", "cni/net.d", "cni/ipam",
		"kubelet/root", "kubelet/certs", "kubelet/volume-plugins", "podlogs", "varlog", "sysctl"} {
		if err := os.MkdirAll(filepath.Join(r.dir, d), 0o755); err != nil {
			return err
		}
	}
	// A bridge with a fixed MAC (see setupNode) and the pods' gateway
	// address; the bridge plugin adopts it.
	if err := b.Node.IPBatch(
		"link add "+CNIBridge+" address 0a:58:0a:f4:01:01 type bridge",
		"addr add "+PodGateway+"/24 dev "+CNIBridge,
		"link set "+CNIBridge+" up",
	); err != nil {
		return err
	}
	if err := r.makeCgroups(); err != nil {
		return err
	}
	if err := r.writeConfigs(); err != nil {
		return err
	}
	if err := r.startContainerd(ctx); err != nil {
		return err
	}
	if err := b.importBaseImages(ctx); err != nil {
		return err
	}
	if err := r.startKubelet(ctx); err != nil {
		return err
	}
	if err := b.installAddons(ctx); err != nil {
		return err
	}
	return nil
}

func (r *nodeRuntime) path(elem ...string) string {
	return filepath.Join(append([]string{r.dir}, elem...)...)
}

// kernelTunables are the values kubelet insists on (it rewrites them when
// they differ). The machine is shared, so the node's private mount namespace
// gets files holding these values bind-mounted over the /proc/sys entries:
// kubelet reads what it wants and writes nothing to the host.
var kernelTunables = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

// mountScript moves itself into the node's cgroups (so containerd, its shims
// and every container are found there by stop, or by the next run's sweep if
// this one is killed), prepares the private mount namespace and execs
// containerd.
func (r *nodeRuntime) mountScript() (string, error) {
	var sb strings.Builder
	sb.WriteString("set -e\n")
	for _, d := range r.cgroupDirs {
		fmt.Fprintf(&sb, "echo $$ > %s/runtime/cgroup.procs\n", d)
	}
	// Paths kubelet and CNI hard-code, private to the node.
	sb.WriteString("mount -t tmpfs -o mode=755 uproxy-node-varlib /var/lib\n")
	sb.WriteString("mount -t tmpfs -o mode=755 uproxy-node-run /run\n")
	fmt.Fprintf(&sb, "mount --bind %s /var/log\n", r.path("varlog"))
	// No DNS in the node namespace: look-ups fail at once instead of
	// timing out against the host's resolver.
	resolv := r.path("resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		return "", err
	}
	fmt.Fprintf(&sb, "mount --bind %s /etc/resolv.conf\n", resolv)
	for key, val := range kernelTunables {
		f := r.path("sysctl", strings.ReplaceAll(key, "/", "."))
		if err := os.WriteFile(f, []byte(val+"\n"), 0o644); err != nil {
			return "", err
		}
		fmt.Fprintf(&sb, "mount --bind %s /proc/sys/%s\n", f, key)
	}
	fmt.Fprintf(&sb, "exec %s --config %s\n", filepath.Join(r.b.opts.TestbinDir, "containerd"), r.path("containerd.toml"))
	return sb.String(), nil
}

func (r *nodeRuntime) startContainerd(ctx context.Context) error {
	script, err := r.mountScript()
	if err != nil {
		return err
	}
	// PATH: the runc shim finds containerd-shim-runc-v2 next to containerd
	// or on PATH; runc is Debian's (/usr/sbin).
	env := []string{"PATH=" + r.b.opts.TestbinDir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	r.containerd, err = StartProc(r.b.Node, "containerd", r.b.path("containerd.log"), env,
		"unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = poll(ctx, 100*time.Millisecond, func() (bool, error) {
		if done, werr := r.containerd.Exited(); done {
			return false, fmt.Errorf("containerd exited (%v): %s", werr, r.containerd.Tail(20))
		}
		_, err := r.Ctr(ctx, "version")
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("containerd not serving: %w\n%s", err, r.containerd.Tail(20))
	}
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", r.containerd.Pid()))
	if err != nil {
		return err
	}
	r.mountNS = ns
	return nil
}

// Ctr runs ctr against the node's containerd in the k8s.io namespace.
func (r *nodeRuntime) Ctr(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(r.b.opts.TestbinDir, "ctr"),
		append([]string{"--address", r.Address, "--namespace", "k8s.io"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func (r *nodeRuntime) startKubelet(ctx context.Context) error {
	var err error
	r.kubelet, err = StartProc(r.b.Node, "kubelet", r.b.path("kubelet.log"), nil,
		"nsenter", fmt.Sprintf("--mount=/proc/%d/ns/mnt", r.containerd.Pid()), "--",
		filepath.Join(r.b.opts.TestbinDir, "kubelet"),
		"--config", r.path("kubelet.yaml"), "--kubeconfig", r.b.AdminKubeconfig,
		"--hostname-override", NodeName, "--node-ip", NodeIP,
		"--root-dir", r.path("kubelet/root"), "--cert-dir", r.path("kubelet/certs"), "--v", "1")
	if err != nil {
		return err
	}
	return r.b.WaitNodeReady(ctx, 90*time.Second)
}

// WaitNodeReady waits until the kubelet's Node reports Ready.
func (b *Bed) WaitNodeReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	err := poll(ctx, 200*time.Millisecond, func() (bool, error) {
		if r := b.runtime; r != nil && r.kubelet != nil {
			if done, werr := r.kubelet.Exited(); done {
				return false, fmt.Errorf("kubelet exited (%v): %s", werr, r.kubelet.Tail(30))
			}
		}
		n, err := b.Client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				last = fmt.Sprintf("Ready=%s %s: %s", c.Status, c.Reason, c.Message)
				return c.Status == corev1.ConditionTrue, nil
			}
		}
		last = "no Ready condition"
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("node %s not Ready (%s): %w", NodeName, last, err)
	}
	return nil
}

// makeCgroups creates the node's cgroup root in every cgroup hierarchy
// (kubelet's cgroupfs driver needs it to exist; cpuset needs cpus and mems).
func (r *nodeRuntime) makeCgroups() error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		d := filepath.Join(m, r.cgroupRoot)
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("cgroup root: %w", err)
		}
		r.cgroupDirs = append(r.cgroupDirs, d)
		if err := os.Mkdir(filepath.Join(d, "runtime"), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("cgroup: %w", err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(m, f)); err == nil {
				for _, dst := range []string{d, filepath.Join(d, "runtime")} {
					if err := os.WriteFile(filepath.Join(dst, f), v, 0o644); err != nil {
						return fmt.Errorf("cgroup %s: %w", f, err)
					}
				}
			}
		}
	}
	return nil
}

// cgroupPrefix starts the name of the node's cgroup root; the owning test
// process's pid follows.
const cgroupPrefix = "uproxy-bed-"

// sweepStaleCgroups kills what a killed earlier run left in its node
// cgroups (containerd, shims, containers) and removes them. The mount
// namespace, pod network namespaces and mounts go with the processes.
func sweepStaleCgroups() {
	mounts, _ := cgroupMounts()
	for _, m := range mounts {
		dirs, _ := filepath.Glob(filepath.Join(m, cgroupPrefix+"*"))
		for _, d := range dirs {
			pid := strings.TrimPrefix(filepath.Base(d), cgroupPrefix)
			if _, err := os.Stat("/proc/" + pid); err == nil || pid == strconv.Itoa(os.Getpid()) {
				continue // its owner still runs
			}
			killCgroupTree([]string{d})
			_ = removeCgroupTree(d)
		}
	}
}

// cgroupMounts lists the mount points of the cgroup (v1) and cgroup2
// hierarchies.
func cgroupMounts() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "36 35 98:0 / /sys/fs/cgroup/cpu rw,relatime shared:1 - cgroup cgroup rw,cpu"
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fs := strings.Fields(post)
		fields := strings.Fields(pre)
		if len(fs) > 0 && (fs[0] == "cgroup" || fs[0] == "cgroup2") && len(fields) > 4 {
			out = append(out, fields[4])
		}
	}
	return out, sc.Err()
}

// stop ends the node: kubelet, every container process (by cgroup), then
// containerd and the shims left in its mount namespace, and removes the
// cgroup trees. The mount namespace, and with it every pod network namespace
// and mount, disappears with its last process.
func (r *nodeRuntime) stop() error {
	var errs []error
	if r.kubelet != nil {
		r.kubelet.Stop(10 * time.Second)
	}
	// Containers, shims and containerd: all in the node's cgroups.
	r.killCgroupProcs()
	if r.containerd != nil {
		r.containerd.Stop(10 * time.Second)
	}
	if r.mountNS != "" { // a shim that escaped the cgroups
		for range 50 {
			pids := pidsInMountNS(r.mountNS)
			if len(pids) == 0 {
				break
			}
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	r.killCgroupProcs()
	for _, d := range r.cgroupDirs {
		if err := removeCgroupTree(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killCgroupProcs SIGKILLs every process in the node's cgroup trees until
// none is left (at most ~5 s).
func (r *nodeRuntime) killCgroupProcs() { killCgroupTree(r.cgroupDirs) }

// killCgroupTree SIGKILLs every process in the cgroup trees until none is
// left (at most ~5 s).
func killCgroupTree(roots []string) {
	for range 50 {
		n := 0
		for _, d := range roots {
			_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
				if err != nil || e.IsDir() || e.Name() != "cgroup.procs" {
					return nil
				}
				b, _ := os.ReadFile(p)
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						_ = syscall.Kill(pid, syscall.SIGKILL)
						n++
					}
				}
				return nil
			})
		}
		if n == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pidsInMountNS lists the processes whose mount namespace is ns.
func pidsInMountNS(ns string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if l, err := os.Readlink("/proc/" + e.Name() + "/ns/mnt"); err == nil && l == ns {
			pids = append(pids, pid)
		}
	}
	return pids
}

// removeCgroupTree removes a cgroup directory and its children, deepest
// first (cgroup directories are removed with rmdir, their files go with them).
func removeCgroupTree(root string) error {
	var dirs []string
	_ = filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
		if err == nil && e.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	var last error
	for i := len(dirs) - 1; i >= 0; i-- {
		for try := 0; ; try++ {
			err := syscall.Rmdir(dirs[i])
			if err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			if try == 20 {
				last = fmt.Errorf("remove cgroup %s: %w", dirs[i], err)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return last
}
