package proxy

import (
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// fdBudget is admission control against the process's open-file limit, as
// HAProxy derives maxconn from ulimit -n: a TCP connection is accepted only
// when its two fds (client and endpoint) fit under RLIMIT_NOFILE with
// headroom left for accept itself, dials in flight, splice pipes, probes,
// the Go runtime and the binary's own servers. Connections beyond it are
// reset at once (shed) instead of meeting EMFILE later, so a client never
// waits in the backlog of a process that has no fd to accept it with.
//
// The limit is read on every accept (one getrlimit), so a limit lowered
// while running (prlimit) takes effect at once.
type fdBudget struct {
	base     int64        // fds open when the Proxier was made (runtime, logs, the binary's files)
	other    atomic.Int64 // listeners and UDP session sockets open
	headroom int          // Config.FDHeadroom; <0: admission off
}

// minFDHeadroom and maxFDHeadroom clamp the default headroom, limit/200.
const (
	minFDHeadroom = 32
	maxFDHeadroom = 256
)

func newFDBudget(headroom int) *fdBudget {
	b := &fdBudget{headroom: headroom, base: 16}
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		b.base = int64(len(ents))
	}
	return b
}

// admit reports whether one more TCP connection fits when conns are open
// (each holding up to two fds). The caller already holds the new
// connection's client fd; it is counted as part of the new connection.
func (b *fdBudget) admit(conns int64) bool {
	if b.headroom < 0 {
		return true
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur == unix.RLIM_INFINITY || lim.Cur > 1<<40 {
		return true
	}
	limit := int64(lim.Cur)
	head := int64(b.headroom)
	if head == 0 {
		head = min(max(limit/200, minFDHeadroom), maxFDHeadroom)
	}
	used := b.base + b.other.Load() + 2*conns
	return used+2+head <= limit
}
