package proxy

import (
	"runtime/debug"
	"sync/atomic"
	"time"
)

// UDP sessions come and go in bursts (a DNS storm, a flood up to
// --udp-max-sessions), each holding ~5 KiB of heap and goroutine stack while
// open. When a burst ends nothing allocates, so no GC runs (until the
// runtime's forced one, 2 minutes later) and the dead sessions' memory stays
// in the process: measured in the bed, the leak test's 10,000 sessions
// (~4,000 open at once with --udp-timeout 10s) left RSS +28-30 MiB above the
// baseline 30 s later; in a unit experiment 4,000 sessions left 37.9 MB RSS
// for 40 s with no GC, 19.3 MB after one debug.FreeOSMemory. So after a
// burst of at least udpMemBurst sessions has dropped to an eighth of its
// peak, uproxy runs one GC and returns free memory to the OS, at most once
// per udpMemGap. A steady load never triggers it.
const (
	udpMemBurst = 1024
	udpMemGap   = 10 * time.Second
)

// udpMem tracks UDP sessions of the whole process (memory is the
// process's).
var udpMem struct {
	open      atomic.Int64 // sessions open, all ports
	peak      atomic.Int64 // most open since the last release
	releaseAt atomic.Int64 // mono() of the last release
	releases  atomic.Uint64
}

// udpMemOpened counts a new session.
func udpMemOpened() {
	n := udpMem.open.Add(1)
	for {
		pk := udpMem.peak.Load()
		if n <= pk || udpMem.peak.CompareAndSwap(pk, n) {
			return
		}
	}
}

// udpMemClosed counts an ended session and reports whether the caller
// should release memory now (it then runs releaseUDPMem, off the data path).
func udpMemClosed() bool {
	n := udpMem.open.Add(-1)
	pk := udpMem.peak.Load()
	last := udpMem.releaseAt.Load()
	if !udpMemDue(pk, n, time.Duration(mono()-last), last == 0) {
		return false
	}
	if !udpMem.peak.CompareAndSwap(pk, n) {
		return false // another closer won
	}
	udpMem.releaseAt.Store(mono())
	return true
}

// udpMemDue is the release rule: a burst of at least udpMemBurst sessions
// has dropped to an eighth of its peak, and the last release is udpMemGap
// ago (or there was none).
func udpMemDue(peak, open int64, sinceLast time.Duration, never bool) bool {
	return peak >= udpMemBurst && open <= peak/8 && (never || sinceLast >= udpMemGap)
}

// releaseUDPMem runs a GC and returns free memory to the OS.
func releaseUDPMem() {
	debug.FreeOSMemory()
	udpMem.releases.Add(1)
}
