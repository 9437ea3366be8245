package svc

import "context"

// Sink receives the desired state from watch/. The proxy (proxy.Proxier)
// implements it. watch/ calls it from ONE goroutine only, so implementations
// need no locking against concurrent calls of their own methods.
type Sink interface {
	// SyncPorts makes the running listeners and portal rules match ports
	// exactly: ports not listed are removed, new ones added, changed ones
	// replaced. It is the "rule change" path, rate-limited by the caller
	// (--iptables-min-sync-period) and repeated every --iptables-sync-period.
	SyncPorts(ctx context.Context, ports []Port) error

	// UpdateEndpoints replaces the endpoint sets of the ports named in eps; a
	// nil or empty slice means the port has no endpoints. Ports not in eps
	// keep what they have. It never reprograms portal rules and is applied
	// immediately (no rate limit). Endpoints for a port not (yet) synced by
	// SyncPorts are remembered and used when the port appears.
	//
	// watch/ passes endpoints that are Ready, or Serving and Terminating;
	// endpoints that are neither are dropped before they get here. Choosing
	// ready over serving-terminating is the balancer's job.
	UpdateEndpoints(eps map[PortName][]Endpoint)
}

// Portal is a service port as the proxy serves it: what the portal rules need
// to steer ClusterIP/ExternalIP/LoadBalancer/NodePort traffic to the local
// listener on ProxyPort.
type Portal struct {
	Port      Port
	ProxyPort uint16
}

// PortalSyncer programs portal rules (iptables/ implements it; the direct
// portal mode has none). SyncPortals gets the complete set every time.
type PortalSyncer interface {
	SyncPortals(ctx context.Context, portals []Portal) error
}
