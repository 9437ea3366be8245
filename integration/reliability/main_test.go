// Package reliability checks on the integration bed (integration/bed) that
// uproxy survives what issue 9 lists: fd exhaustion, slow and hostile
// clients, a UDP flood, an API server outage, iptables tampering, restarts
// and overlapping instances, and that 100,000 connections and 10,000 UDP
// sessions leave no goroutines, fds or memory behind; and, for issue 15
// item 1, that proxy ports serve only as portals and loadBalancerSourceRanges
// hold (security_test.go). It also holds the
// static "no shell runs iptables" check of the production sources.
//
// Every test prints one SUMMARY line with its figures. The long ones (the
// leak run) are skipped under -short; `make test` runs without -short.
// Traffic goes only between namespaces the bed created.
package reliability

import (
	"os"
	"testing"

	"github.com/uproxy/uproxy/integration/bed"
)

func TestMain(m *testing.M) { os.Exit(bed.Main(m)) }
