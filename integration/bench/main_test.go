package bench

import (
	"os"
	"os/exec"
	"testing"

	"github.com/uproxy/uproxy/integration/bed"
)

func TestMain(m *testing.M) { os.Exit(bed.Main(m)) }

// benchTools are run by the heavy tests, on the host or in the bed's
// namespaces.
var benchTools = []string{"wrk", "curl", "dig", "dnsperf", "dnsmasq", "haproxy", "iptables-save"}

// requireBench skips unless UPROXY_BENCH is set (make bench) and -short is
// off; asked for explicitly, missing tools are a failure.
func requireBench(t *testing.T) {
	t.Helper()
	if testing.Short() || os.Getenv("UPROXY_BENCH") == "" {
		t.Skip("set UPROXY_BENCH=1 (make bench)")
	}
	for _, tool := range benchTools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("make bench needs %s on PATH (Debian: apt-get install wrk curl dnsutils dnsperf dnsmasq-base haproxy iptables)", tool)
		}
	}
}
