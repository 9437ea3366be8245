// Package watch produces uproxy's desired state and feeds it to the proxy.
//
// An event's way: a Source (KubeSource: client-go informers for Services,
// EndpointSlices and this node's Node; FileSource: manifest files, reloaded on
// change) calls the Tracker's handlers. Handlers only convert and record
// (previous, current) per Service and per EndpointSlice, then request a sync
// through a 1-buffered channel. The Runner is the one goroutine that applies
// recorded changes: endpoint-only changes go to svc.Sink.UpdateEndpoints at
// once, service/port changes to svc.Sink.SyncPorts rate-limited like
// kube-proxy's runner (two back to back, then one per MinSyncPeriod), and a
// full SyncPorts runs at least every SyncPeriod so that tampered rules are
// repaired.
//
// The Runner also keeps a state checkpoint (checkpoint.go): after changes it
// hands a snapshot of what the sink was given to a writer goroutine, which
// writes it atomically at most once a second; a restarted uproxy serves a
// loaded checkpoint (Runner.StartFrom) until the source has synced, and the
// source's state then replaces it entirely.
//
// The package converts API objects into the small value types of package svc
// (the proxy never sees client-go types) and applies kube-proxy's rules:
// headless, ExternalName and IP-less Services are skipped, the
// service.kubernetes.io/service-proxy-name label selects who proxies a
// Service, endpoints are ready or serving-and-terminating (KEP-1669), and
// internalTrafficPolicy Local keeps only this node's endpoints.
//
// It does not proxy traffic, program iptables, or choose between ready and
// terminating endpoints: that is the balancer's job in proxy/.
package watch
