package iptables

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// inNetNS runs fn with the calling thread in the named network namespace
// (/run/netns/NAME, as `ip netns add` creates it), or directly when name is
// "". Processes fn starts (exec.Cmd) and sockets it opens belong to that
// namespace.
//
// We switch a thread rather than prefixing commands with `ip netns exec`
// because go-iptables builds its own argument vectors and cannot be
// prefixed; one mechanism then covers go-iptables, iptables-restore/-save and
// the netlink conntrack socket.
//
// fn runs on a fresh goroutine whose OS thread is locked and never unlocked:
// when the goroutine ends, the Go runtime destroys the thread, so no other
// goroutine can ever be scheduled on a thread left in the namespace, and
// there is no "switch back" step that could fail.
func inNetNS(name string, fn func() error) error {
	if name == "" {
		return fn()
	}
	if strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return fmt.Errorf("netns %q: invalid name", name)
	}
	errc := make(chan error, 1)
	go runInNetNS(filepath.Join("/run/netns", name), fn, errc)
	return <-errc
}

// runInNetNS is the body of inNetNS's goroutine (named for stack dumps).
func runInNetNS(path string, fn func() error, errc chan<- error) {
	runtime.LockOSThread() // never unlocked, see inNetNS
	f, err := os.Open(path)
	if err != nil {
		errc <- fmt.Errorf("netns: %w", err)
		return
	}
	err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
	f.Close()
	if err != nil {
		errc <- fmt.Errorf("netns %s: setns: %w", path, err)
		return
	}
	errc <- fn()
}
