package proxy

import (
	"fmt"
	"net/netip"
	"time"
)

// How UDP listeners close at shutdown without losing the replies uproxy
// still relays (issue 14).
//
// A client datagram uproxy forwarded is answered through the listen socket
// (replies leave from the portal address, udppktinfo.go), so closing that
// socket at once loses every answer still on its way. Instead, unless
// Config.NoUDPReplyDrain:
//
//   - handoff (the fd holder keeps the socket for the next run): serve stops
//     reading (stopReading) so new datagrams stay queued in the socket,
//     which the next run takes back; the sessions keep relaying replies
//     until none awaits one, at most HandoffDrain; then the socket closes
//     (the holder keeps its copy: dropSockets does nothing while closing).
//   - no other instance shares the port: the same, at most udpDrainMax;
//     what queues meanwhile is lost as it was before.
//   - exactly one other instance shares it (a surge rollout) and this
//     socket was first in the group: new datagrams are steered to the other
//     socket (udpsteer_linux.go); serve keeps reading until the queue is
//     empty and no session awaits a reply, at most udpDrainMax.
//   - otherwise (shared, steering impossible): close at once, as before.

// udpDrainMax bounds how long a UDP listener stays open at a shutdown that
// is not a handoff. A DNS answer normally takes milliseconds; a client
// retries a lost one after seconds anyway.
const udpDrainMax = time.Second

// aLongTimeAgo is a read deadline that has passed: reads return at once.
var aLongTimeAgo = time.Unix(1, 0)

// stopReading makes serve return without ending the sessions; datagrams
// that arrive stay in the socket's queue.
func (s *udpServer) stopReading() {
	s.stopped.Store(true)
	_ = s.conn.SetReadDeadline(aLongTimeAgo)
}

// awaiting counts the sessions that forwarded a client datagram and got no
// reply since.
func (s *udpServer) awaiting() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, sess := range s.sessions {
		if sess.unanswered.Load() > 0 {
			n++
		}
	}
	return n
}

// udpDrain is the UDP ports a shutdown keeps open for their replies.
type udpDrain struct {
	ports    []*portState
	deadline int64 // mono(): close them by then
}

// serversLocked lists the UDP servers of d's ports still open. Callers
// hold p.mu.
func (d *udpDrain) serversLocked() []*udpServer {
	var out []*udpServer
	for _, ps := range d.ports {
		if ps.lst != nil {
			out = append(out, ps.lst.udp...)
		}
	}
	return out
}

// done reports whether d's ports can close: no session awaits a reply, no
// datagram waits in a socket still read (a steered one), or time is up.
func (p *Proxier) udpDrainDone(d *udpDrain) bool {
	if len(d.ports) == 0 || mono() >= d.deadline {
		return true
	}
	p.mu.Lock()
	servers := d.serversLocked()
	p.mu.Unlock()
	for _, s := range servers {
		if s.awaiting() > 0 || !s.stopped.Load() && s.queued() {
			return false
		}
	}
	return true
}

// closeUDPDrain closes d's ports, logging how many replies that cut.
func (p *Proxier) closeUDPDrain(d *udpDrain, why string) {
	if len(d.ports) == 0 {
		return
	}
	p.mu.Lock()
	cut := 0
	for _, s := range d.serversLocked() {
		cut += s.awaiting()
	}
	for _, ps := range d.ports {
		if ps.lst != nil {
			p.closeListenerLocked(ps, why)
		}
	}
	p.mu.Unlock()
	d.ports = nil
	p.log.Info().Int("awaiting_reply", cut).Msg("UDP listeners closed at shutdown after their replies (sessions still awaiting one are cut)")
}

// handOffLocked closes the listeners at a handoff (the fd holder keeps
// the sockets for the next run): TCP ones at once, UDP ones stop reading
// and join udp, to close once their replies were relayed. Callers hold
// p.mu.
func (p *Proxier) handOffLocked(udp *udpDrain) {
	for _, ps := range p.ports {
		if ps.lst == nil {
			continue
		}
		if len(ps.lst.udp) > 0 && !p.cfg.NoUDPReplyDrain {
			for _, s := range ps.lst.udp {
				s.stopReading()
			}
			udp.ports = append(udp.ports, ps)
			continue
		}
		p.closeListenerLocked(ps, "shutdown; the fd holder keeps the socket for the next run")
	}
}

// stopUDPLocked starts closing a UDP port at a shutdown that is not a
// handoff (counts: unconnected UDP sockets per address, nil when unknown).
// It reports whether the port stays open for the drain; when it does not
// the caller closes it at once, and err says why when steering failed.
// Callers hold p.mu.
func (p *Proxier) stopUDPLocked(ps *portState, counts map[netip.AddrPort]int) (drain bool, err error) {
	if p.cfg.NoUDPReplyDrain || counts == nil {
		return false, nil
	}
	shared := false
	for _, s := range ps.lst.udp {
		shared = shared || counts[s.local] > 1
	}
	if !shared {
		for _, s := range ps.lst.udp {
			s.stopReading()
		}
		return true, nil
	}
	for _, s := range ps.lst.udp {
		if n := counts[s.local]; n != 2 {
			return false, fmt.Errorf("%d sockets share %s: only a group of two is steered (udpsteer_linux.go)", n, s.local)
		}
		if err := s.steerAway(); err != nil {
			return false, err
		}
	}
	return true, nil
}
