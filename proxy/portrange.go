package proxy

import (
	"fmt"
	"strconv"
	"strings"
)

// PortRange is a range of proxy ports, kube-proxy's --proxy-port-range. The
// zero value (Size 0) means "let the kernel choose".
type PortRange struct {
	Base int // first port
	Size int // number of ports; 0: kernel-chosen
}

// Empty reports whether the range leaves the choice to the kernel.
func (r PortRange) Empty() bool { return r.Size == 0 }

// Contains reports whether port is inside the range.
func (r PortRange) Contains(port int) bool { return port >= r.Base && port < r.Base+r.Size }

// String renders the range as "A-B", or "" when empty.
func (r PortRange) String() string {
	if r.Empty() {
		return ""
	}
	return fmt.Sprintf("%d-%d", r.Base, r.Base+r.Size-1)
}

// ParsePortRange parses kube-proxy's --proxy-port-range: "A-B" (inclusive),
// "A+N" (A through A+N), a single port "A", or "" / "0-0" for kernel-chosen
// ports. Ports must be 1..65535.
func ParsePortRange(s string) (PortRange, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "0-0" {
		return PortRange{}, nil
	}
	port := func(part, what string) (int, error) {
		n, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil {
			return 0, fmt.Errorf("port range %q: %s %q is not a number", s, what, part)
		}
		if n < 1 || n > 65535 {
			return 0, fmt.Errorf("port range %q: %s %d is outside 1-65535", s, what, n)
		}
		return n, nil
	}
	if a, b, ok := strings.Cut(s, "+"); ok {
		lo, err := port(a, "first port")
		if err != nil {
			return PortRange{}, err
		}
		n, err := strconv.Atoi(strings.TrimSpace(b))
		if err != nil || n < 0 {
			return PortRange{}, fmt.Errorf("port range %q: offset %q is not a non-negative number", s, b)
		}
		if lo+n > 65535 {
			return PortRange{}, fmt.Errorf("port range %q: last port %d is above 65535", s, lo+n)
		}
		return PortRange{Base: lo, Size: n + 1}, nil
	}
	if a, b, ok := strings.Cut(s, "-"); ok {
		lo, err := port(a, "first port")
		if err != nil {
			return PortRange{}, err
		}
		hi, err := port(b, "last port")
		if err != nil {
			return PortRange{}, err
		}
		if hi < lo {
			return PortRange{}, fmt.Errorf("port range %q: last port %d is below first port %d", s, hi, lo)
		}
		return PortRange{Base: lo, Size: hi - lo + 1}, nil
	}
	lo, err := port(s, "port")
	if err != nil {
		return PortRange{}, fmt.Errorf("%w (want A-B, A+N, A or empty)", err)
	}
	return PortRange{Base: lo, Size: 1}, nil
}
