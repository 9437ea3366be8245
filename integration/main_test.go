// Package integration replays the seed tutorials and uproxy's promises on the
// bed (integration/bed): a real control plane, pods as network namespaces,
// real iptables and curl. Each scenario prints one SUMMARY line it asserts on.
package integration

import (
	"os"
	"testing"

	"github.com/uproxy/uproxy/integration/bed"
)

func TestMain(m *testing.M) { os.Exit(bed.Main(m)) }
