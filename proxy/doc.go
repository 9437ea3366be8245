// Package proxy is uproxy's data plane: one listener per service port (TCP
// accept loop or UDP session table), a balancer per port (round robin or
// ClientIP affinity over ready endpoints, serving-terminating ones as a
// fallback, ejected ones skipped), dialing with retry on another endpoint and
// an adaptive timeout, zero-copy relaying (splice) with half-close, and
// passive health checking (ejection with exponential backoff, readmission by
// an active probe).
//
// A packet's way through the package: listener (tcp.go, udp.go) → balancer
// (balancer.go) → dial (dial.go) → relay (splice.go; UDP datagrams in
// recvmmsg/sendmmsg batches, udpbatch.go); failures feed health.go.
// An event's way: SyncPorts (proxier.go) reconciles listeners (ports.go)
// and then hands the complete portal set to the svc.PortalSyncer;
// UpdateEndpoints swaps a port's endpoint set atomically (balancer.go) and
// never touches portal rules.
//
// What it does not do: it programs no iptables rules (iptables/ does, through
// svc.PortalSyncer), reads no API objects (watch/ converts them into svc
// values), and proxies neither SCTP nor anything above L4.
//
// The package is Linux-only (SO_REUSEPORT, TCP_INFO, splice, recvmmsg).
package proxy
