package bed

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// netnsPrefix starts the name of every namespace the bed creates; the owning
// process id follows so a later run can remove what a killed run left behind.
const netnsPrefix = "up-"

// Netns is a named network namespace (/run/netns/<Name>) created by the bed.
type Netns struct {
	Name string
}

// randSuffix returns n random hex characters.
func randSuffix(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// NewNetns creates a namespace named up-<pid>-<role>-<random> with its loopback
// up. The caller owns it and must Delete it.
func NewNetns(role string) (*Netns, error) {
	name := fmt.Sprintf("%s%d-%s-%s", netnsPrefix, os.Getpid(), role, randSuffix(6))
	if err := runIP("netns", "add", name); err != nil {
		return nil, err
	}
	n := &Netns{Name: name}
	if err := runIP("-n", name, "link", "set", "lo", "up"); err != nil {
		_ = n.Delete()
		return nil, err
	}
	return n, nil
}

// Delete removes the namespace. Processes still inside keep it alive, so
// callers stop them first.
func (n *Netns) Delete() error {
	return runIP("netns", "del", n.Name)
}

// IP runs `ip -n <ns> args...`.
func (n *Netns) IP(args ...string) error {
	return runIP(append([]string{"-n", n.Name}, args...)...)
}

// IPBatch runs several `ip` commands in one exec (`ip -n <ns> -batch -`).
func (n *Netns) IPBatch(lines ...string) error {
	cmd := exec.Command("ip", "-n", n.Name, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s -batch %q: %w: %s", n.Name, lines, err, bytes.TrimSpace(out))
	}
	return nil
}

// Do runs fn on an OS thread switched into the namespace. Sockets created and
// processes started by fn belong to the namespace.
func (n *Netns) Do(fn func() error) error {
	target, err := os.Open("/run/netns/" + n.Name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", n.Name, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own netns: %w", err)
	}
	defer orig.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", n.Name, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime discards it when this
		// goroutine ends instead of reusing a thread in the wrong namespace.
		return errors.Join(ferr, fmt.Errorf("setns back from %s: %w", n.Name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// DialContext dials addr (an IP literal and port) from inside the namespace.
func (n *Netns) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Start starts cmd inside the namespace. The child dies with the test process
// (Pdeathsig) and gets its own process group.
func (n *Netns) Start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	cmd.SysProcAttr.Setpgid = true
	return n.Do(cmd.Start)
}

// Output runs argv inside the namespace and returns its combined output.
func (n *Netns) Output(ctx context.Context, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := n.Start(cmd); err != nil {
		return "", fmt.Errorf("start %q in %s: %w", argv, n.Name, err)
	}
	if err := cmd.Wait(); err != nil {
		return buf.String(), fmt.Errorf("%q in %s: %w: %s", argv, n.Name, err, bytes.TrimSpace(buf.Bytes()))
	}
	return buf.String(), nil
}

func runIP(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// sweepStaleNetns deletes namespaces named by earlier bed runs whose process
// is gone (a run killed by a test timeout cannot run its cleanup).
func sweepStaleNetns() {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), netnsPrefix)
		if !ok {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat("/proc/" + pidStr); err == nil {
			continue // its owner still runs
		}
		_ = runIP("netns", "del", e.Name())
	}
}
