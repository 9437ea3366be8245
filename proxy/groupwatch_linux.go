package proxy

import (
	"net"
	"time"
)

// How a listener that joined another instance's reuseport group learns
// that it became first (reuseport_steer_linux.go).
//
// In a rollout every instance but a node's first joins the previous one's
// group (at index 1) and is left alone in it (at index 0) when that one
// exits; from then on it stays at index 0, since only sockets that join
// after it can take a leaving one's slot. Without noticing, it could never
// steer at its own shutdown, so every other rollout would drop SYNs again.
// watchGroups asks sock_diag every groupWatchEvery, while some listener has
// not been seen first, how many sockets share its port: one (itself) means
// it is alone, so at index 0 for the rest of its life. A next instance that
// joins within groupWatchEvery of the previous one leaving is missed: the
// listener then stays not first and falls back to the SYN filter, never to
// a wrong index. TCP listeners: markAlone; UDP listeners: refreshUDPGroups
// (udpsteer_linux.go); each asks sock_diag only while one of its own kind
// is not first.

// groupWatchEvery is how often watchGroups looks. A rollout's next instance
// starts long after the previous one exits; the bed's surges, within 0.3-1 s.
const groupWatchEvery = 100 * time.Millisecond

// watchGroups marks first the listeners left alone in their reuseport
// groups, until the Proxier stops.
func (p *Proxier) watchGroups() {
	defer p.wg.Done()
	t := time.NewTicker(groupWatchEvery)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
			p.markAlone()
			p.refreshUDPGroups()
		}
	}
}

// markAlone counts the listeners on the ports of TCP listeners not yet first
// (outside p.mu) and marks first those alone on theirs.
func (p *Proxier) markAlone() {
	p.mu.Lock()
	pending := p.tcpNotFirstLocked()
	p.mu.Unlock()
	if !pending {
		return
	}
	tcounts, _ := tcpListenerCounts() // nil on error: nobody is marked
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return
	}
	for _, ps := range p.ports {
		l := ps.lst
		if l == nil {
			continue
		}
		for _, ln := range l.tcp {
			if !l.tcpFirst[ln] && tcounts[ln.Addr().(*net.TCPAddr).AddrPort().Port()] == 1 {
				if l.tcpFirst == nil {
					l.tcpFirst = map[*net.TCPListener]bool{}
				}
				l.tcpFirst[ln] = true
				ps.log.Debug().Str("listen", ln.Addr().String()).Msg("alone in its reuseport group: first from now on")
			}
		}
	}
}

// tcpNotFirstLocked reports whether some TCP listener is not first in its
// group. Callers hold p.mu.
func (p *Proxier) tcpNotFirstLocked() bool {
	if p.closing || !p.cfg.ReusePort {
		return false
	}
	for _, ps := range p.ports {
		l := ps.lst
		if l == nil {
			continue
		}
		for _, ln := range l.tcp {
			if !l.tcpFirst[ln] {
				return true
			}
		}
	}
	return false
}
