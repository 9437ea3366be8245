package proxy

import (
	"errors"
	"math/rand/v2"
)

// errPortsExhausted is returned when every port of the range is in use.
var errPortsExhausted = errors.New("proxy port range exhausted")

// portAllocator hands out ports of a non-empty PortRange. It starts at a
// random offset and walks the range, like legacy kube-proxy's range
// allocator. It is not safe for concurrent use; the Proxier calls it under
// its mutex.
type portAllocator struct {
	r    PortRange
	used []bool // used[i] is port r.Base+i
	n    int    // ports in use
	next int    // offset to try first
}

func newPortAllocator(r PortRange) *portAllocator {
	return &portAllocator{r: r, used: make([]bool, r.Size), next: rand.IntN(r.Size)}
}

// allocateNext returns a free port and marks it used.
func (a *portAllocator) allocateNext() (int, error) {
	if a.n == a.r.Size {
		return 0, errPortsExhausted
	}
	for i := range a.r.Size {
		off := (a.next + i) % a.r.Size
		if !a.used[off] {
			a.used[off] = true
			a.n++
			a.next = (off + 1) % a.r.Size
			return a.r.Base + off, nil
		}
	}
	return 0, errPortsExhausted
}

// allocate marks a specific port used; it reports false when the port is
// outside the range or already used.
func (a *portAllocator) allocate(port int) bool {
	if !a.r.Contains(port) || a.used[port-a.r.Base] {
		return false
	}
	a.used[port-a.r.Base] = true
	a.n++
	return true
}

// release frees a port; releasing a port twice or outside the range is a no-op.
func (a *portAllocator) release(port int) {
	if a.r.Contains(port) && a.used[port-a.r.Base] {
		a.used[port-a.r.Base] = false
		a.n--
	}
}
