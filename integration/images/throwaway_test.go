package images

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// containerdConfig is a containerd that touches nothing outside its
// directories: no CRI (the test needs only images and ctr run), no NRI, no
// /opt/containerd, shim sockets in a short private directory.
const containerdConfig = `version = 3
root = %[1]q
state = %[2]q
temp = %[3]q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt"]

[grpc]
  address = %[4]q

[ttrpc]
  address = %[4]q

[plugins."io.containerd.shim.v1.manager"]
  socket_dir = %[5]q
`

// startContainerd starts containerd from integration/testbin in a private
// mount namespace (its overlay mounts never reach the host's table) with
// root, state and socket in temporary directories. The cleanup kills its
// tasks, containerd, any shim left (by PID), checks for leaked mounts and
// removes the test's cgroups.
func startContainerd(t *testing.T, ctx context.Context) *containerd {
	t.Helper()
	bin, err := filepath.Abs(testbin)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "ctr"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			skipOrFatal(t, "%s missing: run `make testbin`", filepath.Join(bin, b))
		}
	}
	if _, err := exec.LookPath("runc"); err != nil {
		skipOrFatal(t, "runc not on PATH (apt-get install runc)")
	}
	dir := t.TempDir()
	// Shim sockets need a directory of at most 42 characters.
	sockDir, err := os.MkdirTemp("/tmp", "ctd-s-")
	if err != nil {
		t.Fatal(err)
	}
	address := filepath.Join(dir, "containerd.sock")
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, containerdConfig, filepath.Join(dir, "root"),
		filepath.Join(dir, "state"), filepath.Join(dir, "tmp"), address, sockDir), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "containerd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--",
		filepath.Join(bin, "containerd"), "--config", cfg)
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH")) // the shim is found on PATH
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	c := &containerd{ctr: filepath.Join(bin, "ctr"), address: address, dir: dir, tag: fmt.Sprintf("uproxy-images-%d", os.Getpid())}
	t.Cleanup(func() {
		c.stop(t, cmd, exited, dir, sockDir)
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("containerd log (end):\n%s", tail(string(b), 4000))
			}
		}
	})

	deadline := time.Now().Add(30 * time.Second)
	for {
		err := exec.CommandContext(ctx, c.ctr, "--address", address, "version").Run()
		if err == nil {
			return c
		}
		select {
		case <-exited:
			t.Fatalf("containerd exited at start (log in %s)", logPath)
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd not serving on %s after 30 s: %v", address, err)
		}
	}
}

// stop ends everything startContainerd started; see there.
func (c *containerd) stop(t *testing.T, cmd *exec.Cmd, exited chan struct{}, dir, sockDir string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctr := func(args ...string) string {
		out, _ := exec.CommandContext(ctx, c.ctr, c.args(args...)...).Output()
		return string(out)
	}
	for _, id := range strings.Fields(ctr("tasks", "ls", "-q")) {
		ctr("tasks", "kill", "--signal", "SIGKILL", id)
		for i := 0; i < 50 && ctr("tasks", "delete", id) == ""; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, id := range strings.Fields(ctr("containers", "ls", "-q")) {
		ctr("containers", "delete", id)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
	for _, pid := range shimPIDs(c.address) {
		t.Logf("killing shim %d left by containerd", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, m := range mountsUnder(dir, sockDir) {
		t.Errorf("mount %s leaked into the host's mount table; unmounting", m)
		_ = syscall.Unmount(m, syscall.MNT_DETACH)
	}
	// runc removes each container's cgroup; the parent is ours.
	parents, _ := filepath.Glob("/sys/fs/cgroup/*/" + c.tag)
	parents = append(parents, "/sys/fs/cgroup/"+c.tag)
	for _, p := range parents {
		if err := syscall.Rmdir(p); err != nil && !os.IsNotExist(err) {
			t.Errorf("cgroup %s: %v", p, err)
		}
	}
	_ = os.RemoveAll(sockDir)
}

// shimPIDs finds containerd-shim-runc-v2 processes serving address.
func shimPIDs(address string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if !strings.HasSuffix(args[0], "containerd-shim-runc-v2") || !strings.Contains(string(b), "\x00"+address+"\x00") {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(filepath.Base(filepath.Dir(p)), "%d", &pid); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// mountsUnder lists the host's mount points below any of dirs, deepest first.
func mountsUnder(dirs ...string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var found []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		for _, d := range dirs {
			if strings.HasPrefix(fields[4], d+"/") {
				found = append([]string{fields[4]}, found...)
			}
		}
	}
	return found
}
