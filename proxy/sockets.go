package proxy

import (
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/uproxy/uproxy/svc"
)

// SocketKeeper keeps copies of the listening sockets outside the process so
// that they outlive it (package fdhold): connections and datagrams that
// arrive while uproxy restarts wait in the kernel for the next run, which
// takes the sockets back. The proxier calls it under its lock, so every
// method only records; none may block on I/O.
type SocketKeeper interface {
	// Take returns the socket a previous run kept under key, or nil; the
	// caller owns it.
	Take(key string) *os.File
	// Keep records that c is listening under key.
	Keep(key string, c syscall.Conn)
	// Drop records that the listener under key closed for good.
	Drop(key string)
	// Settle is called after each full sync: sockets of a previous run that
	// no port took by then are released.
	Settle()
	// HolderStays reports whether the holder will keep the sockets after
	// this process exits: it is reachable and did not hang up within wait.
	HolderStays(wait time.Duration) bool
}

// socketKey names a listener for the SocketKeeper: protocol and listen
// address with the port actually bound (addr may ask for port 0).
func socketKey(proto svc.Protocol, addr string, port uint16) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	return string(proto) + " " + net.JoinHostPort(host, strconv.Itoa(int(port)))
}

// takeSocket returns the kept socket for proto on addr, if any. Only a
// shareable (SO_REUSEPORT) bind takes one: a probe bind that proves a fresh
// port free must never consume a kept socket.
func (p *Proxier) takeSocket(proto svc.Protocol, addr string, reuse bool) *os.File {
	if p.cfg.Sockets == nil || !reuse {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	n, perr := strconv.ParseUint(port, 10, 16)
	if err != nil || perr != nil || n == 0 {
		return nil
	}
	return p.cfg.Sockets.Take(socketKey(proto, addr, uint16(n)))
}

// keptSocket is one listener's socket under its SocketKeeper key.
type keptSocket struct {
	key string
	c   syscall.Conn
}

// keepSockets hands l's sockets to the SocketKeeper.
func (p *Proxier) keepSockets(l *portListener) {
	if p.cfg.Sockets == nil {
		return
	}
	for _, s := range l.socks {
		p.cfg.Sockets.Keep(s.key, s.c)
	}
}

// dropSockets tells the SocketKeeper that l closed for good; not at
// shutdown. A SIGTERM may be the pod going away (then the fd holder gets
// its own SIGTERM at the same time and closes its copies) or only uproxy's
// container restarting (a failed liveness probe): then the held sockets
// keep queueing for the next run, which removes the SYN filter the
// graceful close left.
func (p *Proxier) dropSockets(l *portListener) {
	if p.cfg.Sockets == nil || p.closing {
		return
	}
	for _, s := range l.socks {
		p.cfg.Sockets.Drop(s.key)
	}
}
