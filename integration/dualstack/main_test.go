// Package dualstack checks on a dual-stack integration bed
// (bed.Options.DualStack: IPv4 and IPv6 service ranges, node, pods and
// clients with addresses of both families) that uproxy proxies each IP
// family of a Service on its own, as kube-proxy's metaproxier does: IPv6
// ClusterIP, NodePort and UDP work through ip6tables portal rules, and a
// family's portal only reaches endpoints of its EndpointSlice addressType
// (issue 15 item 3); and that the proxy-port guard and loadBalancerSourceRanges
// hold in IPv6 (issue 15 item 1, security_test.go). Traffic goes only
// between namespaces the bed created.
package dualstack

import (
	"os"
	"testing"

	"github.com/uproxy/uproxy/integration/bed"
)

func TestMain(m *testing.M) { os.Exit(bed.Main(m)) }
