package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// The health socket (--health-socket) serves /healthz and /livez on a unix
// socket in a directory private to the pod (an emptyDir), for the
// DaemonSet's exec probes (`uproxy probe`). The TCP healthz address is
// shared by every uproxy on the node (hostNetwork, SO_REUSEPORT), so during
// a surge rollout a probe sent there may be answered by the old pod; the
// socket is answered only by this pod's own process.

// maxSocketPath is the longest unix socket path: sun_path is 108 bytes on
// Linux, with a terminating NUL.
const maxSocketPath = 107

// checkSocketPath accepts "" (no health socket) or a file path short enough
// for a unix socket.
func checkSocketPath(p string) error {
	switch {
	case p == "":
		return nil
	case strings.HasPrefix(p, "@"):
		return errors.New("abstract sockets are shared by the network namespace (the node's, with hostNetwork); give a file path")
	case len(p) > maxSocketPath:
		return fmt.Errorf("longer than %d bytes", maxSocketPath)
	case strings.HasSuffix(p, "/"):
		return errors.New("is a directory; give the socket's file path")
	}
	return nil
}

// listenHealthSocket binds a unix socket at path. A socket file that
// nothing answers on (left by a process that died: a container restart keeps
// the pod's emptyDir) is removed first; a socket another process serves, or
// a path that is not a socket, is an error.
func listenHealthSocket(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another process serves on this socket", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%s: checking for a stale socket: %w", path, err)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("removing the stale socket: %w", err)
		}
	}
	return net.Listen("unix", path) // the file is removed again when the listener closes
}
