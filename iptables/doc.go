// Package iptables programs uproxy's portal rules: the nat rules that steer
// traffic for a service's ClusterIPs, ExternalIPs, LoadBalancer ingress IPs
// and NodePort to the local listener the proxy opened for it. It implements
// svc.PortalSyncer.
//
// # Layout
//
// The chains are the ones legacy userspace kube-proxy used, so that
// `iptables -t nat -S` reads the same and one --cleanup removes both
// (see chains.go):
//
//	nat    PREROUTING (first) -> KUBE-PORTALS-CONTAINER   traffic from pods/outside: REDIRECT (or DNAT to the bind IP)
//	nat    OUTPUT     (first) -> KUBE-PORTALS-HOST        traffic from the node itself: DNAT to nodeIP:proxyPort
//	nat    PREROUTING (last, -m addrtype --dst-type LOCAL) -> KUBE-NODEPORT-CONTAINER
//	nat    OUTPUT     (last, -m addrtype --dst-type LOCAL) -> KUBE-NODEPORT-HOST
//	filter INPUT      (first, new) -> KUBE-NODEPORT-NON-LOCAL  proxy ports: ACCEPT portal traffic (DNAT), DROP other traffic from outside the node
//	filter INPUT, FORWARD, OUTPUT (first, new) -> UPROXY-LB-FIREWALL  DROP LB IP traffic from sources outside loadBalancerSourceRanges
//	mangle INPUT      (first) -> UPROXY-PORT-WAIT         DROP new connections to a proxy port nothing listens on
//
// UPROXY-PORT-WAIT is uproxy's own: while uproxy restarts, a client's SYN to
// a portal is dropped (and retransmitted a second later, to the next
// instance) instead of reset; see portWaitRules.
//
// The proxy listens on every address, so KUBE-NODEPORT-NON-LOCAL makes a
// proxy port reachable only as a portal: see proxyPortRules. A Service with
// loadBalancerSourceRanges gets its LB IP portal rules once per range
// (-s CIDR), and UPROXY-LB-FIREWALL drops what they did not redirect, as
// kube-proxy's KUBE-PROXY-FIREWALL: see lbSources and lbFirewallRule.
//
// Every rule carries `-m comment --comment "ns/name:port"`; that comment is
// how InstalledProxyPorts gives a restarted uproxy its proxy ports back.
//
// # How a sync writes
//
// SyncPortals gets the complete set of portals. It renders the desired rule
// text per IP family and compares it with what it last wrote. Changes go out
// as ONE `iptables-restore --noflush` per family (ip6tables-restore for IPv6):
// chains that changed a lot are redeclared (flushed and rewritten atomically),
// chains that changed a little get `-D`/`-A` lines, chains that did not change
// are not mentioned; missing jumps from the built-in chains are added in the
// same batch. Other tables' and chains' rules are never touched.
//
// A sync whose desired rules equal what we last wrote performs no write.
// To notice rules or jumps that someone else deleted or changed, it may
// perform one read-only exec per family, `iptables-save`: when the last read
// is older than Config.CheckPeriod/2 (so, with CheckPeriod set to the
// caller's --iptables-sync-period, on every periodic sync, and at most once
// per half period during bursts). Only if the read differs from what we wrote
// does it write the repair (counted in uproxy_iptables_repairs_total). So
// "a sync whose desired rules equal the installed ones execs nothing" holds
// for writes, and for reads within half a check period of the last one; the
// periodic tamper check is a read, by design. Syncs that do change rules
// skip the read unless the last one is older than CheckPeriod, so tampering
// is repaired within one period even while services churn.
//
// # Two instances
//
// While two uproxy instances overlap (a DaemonSet surge) only the newest
// writes rules: TakeOwnership (owner.go) hands the rules over through an
// abstract unix socket, and the older instance's syncs only record what
// they would write, until it exits (or the newer one goes away first).
//
// What it does not do: it opens no sockets for the portals (proxy/ listens),
// it never flushes rules at start-up (a restarted uproxy re-reads its proxy
// ports first, see InstalledProxyPorts), and it never touches tables or
// chains other than the seven above and the jumps into them.
package iptables
