package iptables

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when goroutines leak (listeners and
// inNetNS threads in the real tests, none in the unit tests).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
