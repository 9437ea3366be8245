package iptables

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Rule ownership between overlapping instances.
//
// During a surge rollout two uproxy instances run on one node and both sync
// the portal rules. A Service created meanwhile gets a proxy port in each;
// each would write its own port into the Service's rules and, at its next
// check, "repair" the other's, and when the old instance exits the rule may
// point at its closed port until the new one's next check. So the rules
// have one writer: the newest instance.
//
// Ownership is an abstract unix socket in the node's network namespace
// (Config.OwnerSocket): the owner listens on it. A starting instance that
// finds the name taken connects; the owner (if the peer runs as the same
// user) stops writing rules (its syncs only record the desired portals),
// closes its listener, answers one byte and keeps the connection. The new
// instance then listens and writes. Should the new instance go away while
// the old one runs (the connection ends), the old one takes the name back
// and writes its last desired portals at once.

// ownerHandshakeTimeout bounds the wait for the current owner's answer.
const ownerHandshakeTimeout = 2 * time.Second

// TakeOwnership makes p the writer of the portal rules and keeps watching
// for a newer instance until ctx ends (then it lets the name go). Call it
// once, before the first SyncPortals. Without Config.OwnerSocket it does
// nothing. On error p still writes rules, as every instance did before.
func (p *Programmer) TakeOwnership(ctx context.Context) error {
	if p.cfg.OwnerSocket == "" {
		return nil
	}
	ln, err := net.Listen("unix", p.cfg.OwnerSocket)
	if errors.Is(err, syscall.EADDRINUSE) {
		ln, err = p.askToYield(ctx)
	}
	if err != nil {
		return fmt.Errorf("portal rule ownership (%s): %w", p.cfg.OwnerSocket, err)
	}
	p.ownerWG.Add(1)
	go p.ownRules(ctx, ln.(*net.UnixListener))
	return nil
}

// askToYield connects to the current owner, waits for its answer (it has
// stopped writing and closed its listener) and listens in its place. The
// connection stays open until ctx ends: its end tells the old instance
// that this one is gone.
func (p *Programmer) askToYield(ctx context.Context) (net.Listener, error) {
	var d net.Dialer
	hctx, cancel := context.WithTimeout(ctx, ownerHandshakeTimeout)
	defer cancel()
	c, err := d.DialContext(hctx, "unix", p.cfg.OwnerSocket)
	if err != nil {
		return nil, err
	}
	deadline, _ := hctx.Deadline()
	_ = c.SetReadDeadline(deadline)
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("the current owner did not yield: %w", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	context.AfterFunc(ctx, func() { _ = c.Close() })
	ln, err := net.Listen("unix", p.cfg.OwnerSocket)
	if err != nil {
		return nil, err
	}
	p.log.Info().Msg("took the portal rules over from the running uproxy instance; it stops writing them")
	return ln, nil
}

// ownRules serves the owner socket until ctx ends: a newer instance that
// connects gets the rules; when it goes away, p takes them back.
func (p *Programmer) ownRules(ctx context.Context, ln *net.UnixListener) {
	defer p.ownerWG.Done()
	for {
		stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
		c, err := p.acceptNewer(ln)
		stop()
		_ = ln.Close()
		if err != nil {
			return // ctx ended (or the listener failed: keep writing)
		}
		// Yielded: wait for the newer instance to go away.
		stopc := context.AfterFunc(ctx, func() { _ = c.Close() })
		_, _ = io.Copy(io.Discard, c)
		stopc()
		_ = c.Close()
		if ctx.Err() != nil {
			return
		}
		if ln = p.retakeOwnership(ctx); ln == nil {
			return
		}
	}
}

// acceptNewer accepts connections until one comes from a process of our
// own user, then yields to it: stops writing rules, closes ln and answers.
func (p *Programmer) acceptNewer(ln *net.UnixListener) (*net.UnixConn, error) {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			return nil, err
		}
		if uid, ok := peerUID(c); !ok || uid != os.Getuid() {
			p.log.Warn().Int("uid", uid).Msg("ignored a portal rule ownership request from another user")
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.yielded = true
		p.mu.Unlock()
		_ = ln.Close() // before answering: the newer instance listens next
		if _, err := c.Write([]byte{1}); err != nil {
			p.log.Warn().Err(err).Msg("portal rule ownership handshake failed")
		}
		p.log.Info().Msg("a newer uproxy instance took the portal rules over; this one stops writing them")
		return c, nil
	}
}

// retakeOwnership listens on the owner socket again (retrying each second
// while another instance holds it) and, once it does, writes the last
// desired portals. It returns nil when ctx ends first.
func (p *Programmer) retakeOwnership(ctx context.Context) *net.UnixListener {
	for {
		ln, err := net.Listen("unix", p.cfg.OwnerSocket)
		if err == nil {
			p.mu.Lock()
			p.yielded = false
			for _, st := range p.fams {
				st.known = false // the other instance wrote meanwhile
			}
			err := p.syncLocked(ctx, p.desired)
			p.mu.Unlock()
			p.log.Info().Err(err).Msg("the newer uproxy instance went away; this one writes the portal rules again")
			return ln.(*net.UnixListener)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// peerUID returns the user of the process at the other end of c.
func peerUID(c *net.UnixConn) (int, bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, false
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return -1, false
	}
	return int(cred.Uid), true
}
