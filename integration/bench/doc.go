// Package bench is uproxy's `make bench`: on the integration bed (a real
// control plane, pods as network namespaces) it measures, side by side in
// one run, a direct connection to the pod, uproxy (client → ClusterIP via
// the iptables portal) and HAProxy (node-local, 2 threads, splice-auto) with
// wrk, curl and dnsperf, plus idle-connection cost and control-plane
// latencies, and writes BENCHMARKS.md and docs/bench.svg at the repo root.
//
// The heavy tests run only with UPROXY_BENCH=1 (make bench) and not with
// -short. The package's other files parse tool output and render the report;
// their unit tests always run.
//
// It does not tune the host, pin CPUs or compare against kube-proxy's other
// modes.
package bench
