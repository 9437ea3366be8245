package main

import (
	"net"
	"net/netip"

	"github.com/rs/zerolog"

	"github.com/uproxy/uproxy/healthcheck"
	"github.com/uproxy/uproxy/watch"
)

// newServiceHealth returns the health check node port server
// (healthcheck/), bound as kube-proxy binds it: to the node IPs within
// --nodeport-addresses (the Node's IPs for "primary"), else to every
// address. Its serviceProxyHealthy is /livez's verdict, failing during
// shutdown like /healthz.
func newServiceHealth(opts *options, node string, t *watch.Tracker, h *healthServer, log zerolog.Logger) *healthcheck.Server {
	var bind func() []netip.Addr
	switch {
	case opts.NodePortPrimary:
		bind = func() []netip.Addr { return t.Node().Addresses }
	case len(opts.NodePortAddresses) > 0:
		bind = func() []netip.Addr { return localAddrsIn(opts.NodePortAddresses, log) }
	}
	lc := &net.ListenConfig{Control: reusePort} // as the HTTP servers: a surging instance shares the ports
	return healthcheck.New(healthcheck.Config{NodeName: node, BindIPs: bind, Healthy: h.serviceProxyHealthy, Listen: lc.Listen}, log)
}

// serviceProxyHealthy is kube-proxy's ProxyHealthServer.IsHealthy: the sync
// loop keeps up. uproxy also reports false while shutting down.
func (h *healthServer) serviceProxyHealthy() bool {
	ok, _ := h.live(h.state(), h.now())
	return ok && !h.shuttingDown.Load()
}

// localAddrsIn returns the local addresses within prefixes.
func localAddrsIn(prefixes []netip.Prefix, log zerolog.Logger) []netip.Addr {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		log.Warn().Err(err).Msg("cannot list local addresses; health check node ports listen on all")
		return nil
	}
	var out []netip.Addr
	for _, a := range ifAddrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		for _, p := range prefixes {
			if p.Contains(ip) {
				out = append(out, ip)
				break
			}
		}
	}
	return out
}
