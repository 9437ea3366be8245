package svc

// Traffic is what a service port's external traffic policy asks of the
// proxy (kube-proxy's ServicePort.ExternalPolicyLocal, HealthCheckNodePort).
//
// Cluster traffic is what reaches a ClusterIP; external traffic is what
// reaches an ExternalIP, a load-balancer IP or the NodePort.
// internalTrafficPolicy Local (Port.InternalLocal) applies to cluster
// traffic only, externalTrafficPolicy Local (ExternalLocal) to external
// traffic only. When the two differ, and the port has an external
// destination, the cluster and external endpoint sets differ and watch/
// hands the proxy two ports with the same addresses:
//
//   - Name.External false, Split true: the cluster listener, for ClusterIP
//     traffic and for external destinations reached from the node itself
//     (kube-proxy's "route LOCAL traffic for external destinations" to the
//     cluster endpoints);
//   - Name.External true, Split true: the external listener, for external
//     destinations reached from pods and other hosts.
//
// Each has its own listener (proxy port) and balancer, so choosing the set
// costs nothing per connection.
type Traffic struct {
	// ExternalLocal is externalTrafficPolicy: Local on an externally
	// reachable Service (NodePort, LoadBalancer, or externalIPs).
	ExternalLocal bool
	// HealthCheckNodePort is spec.healthCheckNodePort of a LoadBalancer
	// Service with externalTrafficPolicy Local; 0 when it needs none.
	HealthCheckNodePort uint16
	// Split marks one of the two ports of a split service port (see above).
	Split bool
}

// ServesCluster reports whether p's listener takes traffic for its cluster
// IPs (and, in iptables mode, external destinations from the node itself).
func (p Port) ServesCluster() bool { return !p.Name.External }

// ServesExternal reports whether p's listener takes external traffic from
// pods and other hosts.
func (p Port) ServesExternal() bool { return !p.Traffic.Split || p.Name.External }
