package reliability

import (
	"os"
	"testing"
)

// knownFailing skips a test that fails today on a bug filed as an issue, unless
// UPROXY_KNOWN_FAILING=1 asks to see it fail. The skip message names the bug, so
// a skipped run never reads as a pass.
func knownFailing(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("UPROXY_KNOWN_FAILING") != "1" {
		t.Skipf("KNOWN FAILING (set UPROXY_KNOWN_FAILING=1 to run): %s", why)
	}
}
