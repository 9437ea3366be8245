package proxy

import (
	"net"
	"testing"
)

// TestTCPListenerCounts: sock_diag sees a lone listener once and a port two
// SO_REUSEPORT listeners share twice.
func TestTCPListenerCounts(t *testing.T) {
	lone, err := listenTCP(t.Context(), false, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lone.Close()
	a, err := listenTCP(t.Context(), true, ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := listenTCP(t.Context(), true, a.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	counts, err := tcpListenerCounts()
	if err != nil {
		t.Fatal(err)
	}
	port := func(ln *net.TCPListener) uint16 { return uint16(ln.Addr().(*net.TCPAddr).Port) }
	if counts[port(lone)] != 1 || counts[port(a)] != 2 {
		t.Errorf("lone listener counted %d times (want 1), shared port %d times (want 2)", counts[port(lone)], counts[port(a)])
	}
}
