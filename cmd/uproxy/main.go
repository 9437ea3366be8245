// Command uproxy is a node-local Kubernetes service proxy: kube-proxy's legacy
// userspace mode, done right. It wires watch/ (desired state), proxy/ (the
// data plane) and iptables/ (portal rules) together and serves /healthz,
// /livez, /metrics, /debug/services and (with --profiling) /debug/pprof.
package main

func main() {}
