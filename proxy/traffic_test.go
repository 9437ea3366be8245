package proxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/uproxy/uproxy/svc"
)

// splitPair is a service port split by its traffic policies: the cluster
// listener's port and its External twin.
func splitPair(sp svc.Port) (cluster, external svc.Port) {
	sp.Traffic = svc.Traffic{ExternalLocal: true, Split: true}
	external = sp
	external.Name.External = true
	return sp, external
}

// TestSplitPortListeners: the two ports of a split service port get their
// own listener (proxy port) and endpoint set in iptables mode, and both
// reach the portal syncer.
func TestSplitPortListeners(t *testing.T) {
	p, fp := newProxier(t, Config{})
	sp := tcpPort(pn("web", "http"), 80)
	sp.NodePort = 30080
	cluster, external := splitPair(sp)
	mustSync(t, p, cluster, external)
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{
		cluster.Name:  ready(newBackend(t, "everywhere", "who").addr()),
		external.Name: ready(newBackend(t, "local", "who").addr()),
	})
	if id := who(t, addrOf(p, cluster.Name)); id != "everywhere" {
		t.Errorf("cluster listener answered by %q, want the cluster set's endpoint", id)
	}
	if id := who(t, addrOf(p, external.Name)); id != "local" {
		t.Errorf("external listener answered by %q, want the external set's endpoint", id)
	}
	var text strings.Builder
	p.Describe(&text)
	for _, want := range []string{`Name:\s+default/web:http/external\n`, `External Traffic Policy:\s+Local\n`, `Serves:\s+external traffic`, `Serves:\s+cluster traffic`} {
		if !regexp.MustCompile(want).MatchString(text.String()) {
			t.Errorf("/debug/services lacks %q:\n%s", want, text.String())
		}
	}
	portals := fp.last()
	if len(portals) != 2 || portals[0].ProxyPort == portals[1].ProxyPort {
		t.Fatalf("portals %+v: want two with distinct proxy ports", portals)
	}
	// External traffic with no local endpoint is refused, cluster traffic
	// is still served.
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{external.Name: nil})
	if err := answerErr(addrOf(p, external.Name)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("external listener without endpoints: got %v, want a reset", err)
	}
	if id := who(t, addrOf(p, cluster.Name)); id != "everywhere" {
		t.Errorf("cluster listener answered by %q after the external set emptied", id)
	}
}

// TestSplitPortDirectMode: in direct mode the cluster listener binds the
// cluster IP, the external one the external IP (and the NodePort).
func TestSplitPortDirectMode(t *testing.T) {
	p, _ := newProxier(t, Config{Mode: ModeDirect})
	port := freePortNum(t)
	sp := directPort(pn("web", "http"), svc.TCP, "127.0.0.77", port)
	sp.ExternalIPs = []netip.Addr{netip.MustParseAddr("127.0.0.78")}
	cluster, external := splitPair(sp)
	mustSync(t, p, cluster, external)
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{
		cluster.Name:  ready(newBackend(t, "everywhere", "who").addr()),
		external.Name: ready(newBackend(t, "local", "who").addr()),
	})
	for addr, want := range map[string]string{"127.0.0.77": "everywhere", "127.0.0.78": "local"} {
		if id := who(t, netip.AddrPortFrom(netip.MustParseAddr(addr), port).String()); id != want {
			t.Errorf("%s answered by %q, want %q", addr, id, want)
		}
	}
}

// answerErr connects to addr and reads: the error that ends the read (nil
// when data came).
func answerErr(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = io.ReadAll(c)
	return err
}
