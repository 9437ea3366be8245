package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"

	"github.com/uproxy/uproxy/svc"
)

// portListener is what one service port listens on; the Proxier owns it
// (under Proxier.mu). In iptables mode it is one socket on
// BindAddr:proxyPort; in direct mode one per local portal address (and one
// on BindAddr:NodePort).
type portListener struct {
	proto     svc.Protocol
	key       string // listen identity: a different key replaces the listener
	proxyPort uint16 // iptables mode: the proxy port; direct mode: the service port
	fromAlloc bool   // proxyPort came from the allocator: release it on close
	addrs     []string
	tcp       []*net.TCPListener
	tcpFirst  map[*net.TCPListener]bool // first of its reuseport group (tcpJoinGroup, markAlone)
	udp       []*udpServer
	socks     []keptSocket // every socket, for the SocketKeeper
}

// needsListener: a port is served when it has a portal address or a node
// port, and a protocol we proxy.
func needsListener(sp svc.Port) bool {
	return (sp.Protocol == svc.TCP || sp.Protocol == svc.UDP) &&
		(len(sp.ClusterIPs)+len(sp.ExternalIPs)+len(sp.LoadBalancerIPs) > 0 || sp.NodePort != 0)
}

// listenerKey is what decides whether a changed port keeps its listener.
func (p *Proxier) listenerKey(sp svc.Port) string {
	if p.cfg.Mode == ModeIPTables {
		return string(sp.Protocol)
	}
	return string(sp.Protocol) + " " + strings.Join(p.directAddrs(sp), ",")
}

// directAddrs are a port's listen addresses in direct mode.
func (p *Proxier) directAddrs(sp svc.Port) []string {
	var out []string
	for _, ip := range directPortalAddrs(sp) {
		out = append(out, netip.AddrPortFrom(ip, sp.Port).String())
	}
	if directNodePort(sp) {
		out = append(out, nodePortAddr(p.cfg.BindAddr, sp.Name.Family, sp.NodePort))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// reconcileLocked gives ps the listener sp needs, keeping the current one
// when its key is unchanged.
func (p *Proxier) reconcileLocked(ps *portState, sp svc.Port) error {
	if !needsListener(sp) {
		if ps.lst != nil {
			p.closeListenerLocked(ps, "no portal address")
		}
		if sp.Protocol != svc.TCP && sp.Protocol != svc.UDP {
			return fmt.Errorf("protocol %q is not proxied", sp.Protocol)
		}
		return nil
	}
	key := p.listenerKey(sp)
	if ps.lst != nil && ps.lst.key == key {
		return nil
	}
	if ps.lst != nil {
		p.closeListenerLocked(ps, "listener changed")
	}
	var l *portListener
	var err error
	if p.cfg.Mode == ModeIPTables {
		l, err = p.openProxyPortLocked(ps, sp.Protocol)
	} else {
		l, err = p.openDirectLocked(ps, sp)
	}
	if err != nil {
		return err
	}
	l.key = key
	ps.lst = l
	p.keepSockets(l)
	for _, ln := range l.tcp {
		p.wg.Add(1)
		go p.acceptLoop(ps, ln)
	}
	for _, u := range l.udp {
		p.wg.Add(1)
		go u.serve()
	}
	ps.log.Info().Str("protocol", string(sp.Protocol)).Strs("listen", l.addrs).Uint16("proxy_port", l.proxyPort).
		Msg("listening")
	return nil
}

// closeListenerLocked closes a port's listener and frees its proxy port.
// Established TCP connections are not touched; UDP sessions end.
func (p *Proxier) closeListenerLocked(ps *portState, why string) {
	l := ps.lst
	ps.lst = nil
	p.dropSockets(l)
	l.close(p) // each accept loop sees net.ErrClosed and ends
	if l.fromAlloc && p.alloc != nil {
		p.alloc.release(int(l.proxyPort))
	}
	ps.log.Info().Strs("listen", l.addrs).Str("reason", why).Msg("stopped listening")
}

// openProxyPortLocked opens an iptables-mode listener: the preferred port of
// a previous run first, then allocator ports (or a kernel-chosen one when the
// range is empty). With ReusePort a fresh port is first bound without
// SO_REUSEPORT, so uproxy never shares a port some other socket holds; a
// preferred port is bound with it at once (the previous instance may still
// hold it).
func (p *Proxier) openProxyPortLocked(ps *portState, proto svc.Protocol) (*portListener, error) {
	pref := p.cfg.PreferredPorts[ps.name]
	if pref != 0 && p.portFree(pref) {
		if p.alloc == nil || p.alloc.allocate(int(pref)) {
			l, err := p.bindLocked(ps, proto, pref, false)
			if err == nil {
				l.fromAlloc = p.alloc != nil
				return l, nil
			}
			if p.alloc != nil {
				p.alloc.release(int(pref))
			}
			ps.log.Info().Uint16("port", pref).Err(err).Msg("previous proxy port unavailable, allocating another")
		}
	}
	if p.alloc == nil {
		return p.bindLocked(ps, proto, 0, true)
	}
	var busy []int
	defer func() {
		for _, port := range busy {
			p.alloc.release(port)
		}
	}()
	for {
		port, err := p.alloc.allocateNext()
		if err != nil {
			return nil, fmt.Errorf("%w (%s, %d ports busy outside uproxy)", err, p.cfg.PortRange, len(busy))
		}
		l, err := p.bindLocked(ps, proto, uint16(port), true)
		if err == nil {
			l.fromAlloc = true
			return l, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			p.alloc.release(port)
			return nil, err
		}
		busy = append(busy, port)
	}
}

// portFree reports whether no other port of ours uses proxy port n.
func (p *Proxier) portFree(n uint16) bool {
	for _, ps := range p.ports {
		if ps.lst != nil && ps.lst.proxyPort == n && p.cfg.Mode == ModeIPTables {
			return false
		}
	}
	return true
}

// bindLocked opens one listener on BindAddr:port (0: kernel-chosen).
func (p *Proxier) bindLocked(ps *portState, proto svc.Protocol, port uint16, fresh bool) (*portListener, error) {
	addr := listenAddr(p.cfg.BindAddr, port)
	if fresh && p.cfg.ReusePort {
		// Prove the port is ours alone, then bind it shareable.
		probe, err := p.openOne(ps, proto, addr, false)
		if err != nil {
			return nil, err
		}
		port = probe.port()
		probe.close(p)
		addr = listenAddr(p.cfg.BindAddr, port)
	}
	one, err := p.openOne(ps, proto, addr, p.cfg.ReusePort)
	if err != nil {
		return nil, err
	}
	if p.cfg.ReusePort {
		one.joinGroup(ps, fresh) // a fresh port was proven free: alone
	}
	l := &portListener{proto: proto, proxyPort: one.port()}
	l.add(one)
	return l, nil
}

// openDirectLocked opens direct-mode listeners on every portal address; an
// address that is not local is logged once and skipped.
func (p *Proxier) openDirectLocked(ps *portState, sp svc.Port) (*portListener, error) {
	l := &portListener{proto: sp.Protocol, proxyPort: sp.Port}
	var errs []error
	for _, addr := range p.directAddrs(sp) {
		one, err := p.openOne(ps, sp.Protocol, addr, p.cfg.ReusePort)
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			if k := ps.label + " " + addr; !p.skipLogged[k] {
				p.skipLogged[k] = true
				ps.log.Warn().Str("portal", addr).Msg("portal address is not local; skipped in direct mode")
			}
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if p.cfg.ReusePort {
			one.joinGroup(ps, false)
		}
		l.add(one)
	}
	if err := errors.Join(errs...); err != nil {
		l.close(p)
		return nil, err
	}
	return l, nil
}

// oneListener is a single TCP listener or UDP server.
type oneListener struct {
	tcp   *net.TCPListener
	udp   *udpServer
	key   string // SocketKeeper key: protocol and the listen address asked for
	first bool   // TCP: first of its reuseport group (joinGroup)
}

// joinGroup records whether o's socket is the first of its reuseport group
// and removes a steering program left on a group it joined
// (reuseport_steer_linux.go); alone: its port was proven free.
func (o *oneListener) joinGroup(ps *portState, alone bool) {
	if o.udp != nil {
		o.udp.joinGroup(alone)
		return
	}
	o.first = tcpJoinGroup(ps, o.tcp, alone)
}

func (o oneListener) port() uint16 {
	if o.tcp != nil {
		return o.tcp.Addr().(*net.TCPAddr).AddrPort().Port()
	}
	return o.udp.conn.LocalAddr().(*net.UDPAddr).AddrPort().Port()
}

func (o oneListener) close(p *Proxier) {
	if o.tcp != nil {
		_ = o.tcp.Close()
	} else {
		o.udp.close()
	}
	p.fds.other.Add(-1)
}

func (p *Proxier) openOne(ps *portState, proto svc.Protocol, addr string, reuse bool) (oneListener, error) {
	var o oneListener
	kept := p.takeSocket(proto, addr, reuse)
	if proto == svc.UDP {
		var c *net.UDPConn
		var err error
		if kept != nil {
			c, err = udpFromKept(kept, reuse, addr)
		} else {
			c, err = listenUDP(p.ctx, reuse, addr)
		}
		if err != nil {
			return oneListener{}, err
		}
		if o.udp, err = newUDPServer(p, ps, c); err != nil {
			_ = c.Close() // never served
			return oneListener{}, err
		}
	} else {
		var ln *net.TCPListener
		var err error
		if kept != nil {
			ln, err = tcpFromKept(kept, reuse, addr)
		} else {
			ln, err = listenTCP(p.ctx, reuse, addr)
		}
		if err != nil {
			return oneListener{}, err
		}
		o.tcp = ln
	}
	if kept != nil {
		ps.log.Info().Str("listen", addr).Str("protocol", string(proto)).
			Msg("took back the socket a previous run left with the fd holder")
	}
	o.key = socketKey(proto, addr, o.port())
	p.fds.other.Add(1) // released by oneListener.close
	return o, nil
}

func (l *portListener) add(o oneListener) {
	if o.tcp != nil {
		l.tcp = append(l.tcp, o.tcp)
		if o.first {
			if l.tcpFirst == nil {
				l.tcpFirst = map[*net.TCPListener]bool{}
			}
			l.tcpFirst[o.tcp] = true
		}
		l.addrs = append(l.addrs, o.tcp.Addr().String())
		l.socks = append(l.socks, keptSocket{key: o.key, c: o.tcp})
	} else {
		l.udp = append(l.udp, o.udp)
		l.addrs = append(l.addrs, o.udp.conn.LocalAddr().String())
		l.socks = append(l.socks, keptSocket{key: o.key, c: o.udp.conn})
	}
}

// close closes every listener of l.
func (l *portListener) close(p *Proxier) {
	for _, ln := range l.tcp {
		oneListener{tcp: ln}.close(p)
	}
	for _, u := range l.udp {
		oneListener{udp: u}.close(p)
	}
}
