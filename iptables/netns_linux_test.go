package iptables

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/uproxy/uproxy/svc"
)

// requireRoot skips (or, in CI, fails) when the real-iptables tests cannot
// run: they need root, ip(8) and the iptables tools.
func requireRoot(t testing.TB) {
	t.Helper()
	strict := os.Getenv("CI") == "true" || os.Getenv("UPROXY_REQUIRE_ROOT") == "1"
	missing := ""
	if os.Geteuid() != 0 {
		missing = "not root"
	}
	for _, b := range []string{"ip", "iptables", "iptables-restore", "iptables-save", "ip6tables", "ip6tables-restore", "ip6tables-save"} {
		if _, err := exec.LookPath(b); err != nil && missing == "" {
			missing = b + " not found"
		}
	}
	if missing == "" {
		return
	}
	if strict {
		t.Fatalf("real iptables test needs root and iptables: %s (CI=true or UPROXY_REQUIRE_ROOT=1)", missing)
	}
	t.Skipf("real iptables test needs root and iptables: %s", missing)
}

// run runs a command (argument vector, no shell) and fails the test on error.
func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// testbed is two network namespaces the test creates: "node" runs the
// rules and the listeners, "client" plays a pod on another host, routed to
// the service ranges through the node. Nothing touches the root namespace.
type testbed struct {
	node, client     string
	nodeIP, nodeIP6  netip.Addr
	clientIP         netip.Addr
	nodeDev, cltDev  string
	serviceV4, svcV6 string
}

func newTestbed(t testing.TB) *testbed {
	t.Helper()
	requireRoot(t)
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	sfx := hex.EncodeToString(b)
	tb := &testbed{
		node: "uproxy-ipt-" + sfx, client: "uproxy-ipt-" + sfx + "-c",
		nodeIP: netip.MustParseAddr("10.200.0.1"), nodeIP6: netip.MustParseAddr("fd00:200::1"),
		clientIP: netip.MustParseAddr("10.200.0.2"),
		nodeDev:  "upn" + sfx, cltDev: "upc" + sfx,
	}
	run(t, "ip", "netns", "add", tb.node)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", tb.node).Run() })
	run(t, "ip", "netns", "add", tb.client)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", tb.client).Run() })
	n, c := []string{"ip", "-n", tb.node}, []string{"ip", "-n", tb.client}
	// The veth pair is created inside the node namespace, its peer moved
	// straight into the client namespace.
	run(t, append(n, "link", "add", tb.nodeDev, "type", "veth", "peer", "name", tb.cltDev, "netns", tb.client)...)
	run(t, append(n, "addr", "add", "10.200.0.1/24", "dev", tb.nodeDev)...)
	run(t, append(n, "addr", "add", "fd00:200::1/64", "dev", tb.nodeDev, "nodad")...)
	run(t, append(c, "addr", "add", "10.200.0.2/24", "dev", tb.cltDev)...)
	run(t, append(c, "addr", "add", "fd00:200::2/64", "dev", tb.cltDev, "nodad")...)
	for _, ns := range [][]string{n, c} {
		run(t, append(ns, "link", "set", "lo", "up")...)
	}
	run(t, append(n, "link", "set", tb.nodeDev, "up")...)
	run(t, append(c, "link", "set", tb.cltDev, "up")...)
	// Pods elsewhere reach service IPs through the node; the node itself
	// needs a route for them too (OUTPUT's DNAT happens after routing).
	run(t, append(c, "route", "add", "10.96.0.0/12", "via", "10.200.0.1")...)
	run(t, append(c, "-6", "route", "add", "fd00:96::/64", "via", "fd00:200::1")...)
	run(t, append(n, "route", "add", "10.96.0.0/12", "dev", tb.nodeDev)...)
	run(t, append(n, "-6", "route", "add", "fd00:96::/64", "dev", tb.nodeDev)...)
	return tb
}

// echoListener is a TCP listener inside a namespace standing in for the
// proxy: it reads what a client sends and answers "ok:" + it.
type echoListener struct {
	ln   net.Listener
	port uint16
	wg   sync.WaitGroup
}

func listenIn(t testing.TB, ns string) *echoListener {
	t.Helper()
	var ln net.Listener
	if err := inNetNS(ns, func() (err error) {
		ln, err = net.Listen("tcp", ":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	e := &echoListener{ln: ln, port: uint16(ln.Addr().(*net.TCPAddr).Port)}
	e.wg.Add(1)
	go e.serve()
	t.Cleanup(func() { ln.Close(); e.wg.Wait() })
	return e
}

// serve accepts until the listener closes; each connection is answered and
// closed by its own goroutine.
func (e *echoListener) serve() {
	defer e.wg.Done()
	for {
		c, err := e.ln.Accept()
		if err != nil {
			return
		}
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			buf, _ := io.ReadAll(io.LimitReader(c, 64))
			_, _ = c.Write(append([]byte("ok:"), buf...))
		}()
	}
}

// exchange dials addr from inside ns, sends a token, half-closes and
// returns the answer.
func exchange(ns, addr string) (string, error) { return exchangeTimeout(ns, addr, 3*time.Second) }

// unreachable reports whether a connection to addr from ns fails (quickly).
func unreachable(ns, addr string) bool {
	_, err := exchangeTimeout(ns, addr, 500*time.Millisecond)
	return err != nil
}

func exchangeTimeout(ns, addr string, timeout time.Duration) (string, error) {
	var answer []byte
	err := inNetNS(ns, func() error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "hello "+addr); err != nil {
			return err
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
		answer, err = io.ReadAll(c)
		return err
	})
	return string(answer), err
}

func saveAll(t testing.TB, ns, backend string) string {
	return run(t, "ip", "netns", "exec", ns, "iptables-"+backend+"-save") + run(t, "ip", "netns", "exec", ns, "ip6tables-"+backend+"-save")
}

func TestRealIptables(t *testing.T) {
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			requireRoot(t)
			if _, err := exec.LookPath("iptables-" + backend + "-restore"); err != nil {
				t.Skipf("no iptables-%s: %v", backend, err)
			}
			testRealIptables(t, backend)
		})
	}
}

func testRealIptables(t *testing.T, backend string) {
	tb := newTestbed(t)
	ctx := context.Background()
	cfg := Config{
		BindAddr: netip.IPv4Unspecified(), NodeIPs: []netip.Addr{tb.nodeIP, tb.nodeIP6},
		NetNS: tb.node, Backend: backend,
		CheckPeriod: time.Nanosecond, // every no-op sync checks: this test tampers between syncs
	}
	p, err := New(cfg, testLog(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ln := listenIn(t, tb.node)
	portals := svcPortals{{"10.96.0.10", "fd00:96::10", 80, 30080}}.build(ln.port)
	if err := p.SyncPortals(ctx, portals); err != nil {
		t.Fatalf("SyncPortals: %v", err)
	}

	natS := run(t, "ip", "netns", "exec", tb.node, "iptables-"+backend, "-t", "nat", "-S")
	t.Logf("iptables -t nat -S (backend %s):\n%s", backend, natS)
	pp := fmt.Sprint(ln.port)
	for _, want := range []string{
		"-N KUBE-PORTALS-CONTAINER", "-N KUBE-PORTALS-HOST", "-N KUBE-NODEPORT-CONTAINER", "-N KUBE-NODEPORT-HOST",
		`-A PREROUTING -m comment --comment "handle ClusterIPs; NOTE: this must be before the NodePort rules" -j KUBE-PORTALS-CONTAINER`,
		`-A OUTPUT -m addrtype --dst-type LOCAL -m comment --comment "handle service NodePorts; NOTE: this must be the last rule in the chain" -j KUBE-NODEPORT-HOST`,
		`-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j REDIRECT --to-ports ` + pp,
		`-A KUBE-PORTALS-HOST -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j DNAT --to-destination 10.200.0.1:` + pp,
		`-A KUBE-NODEPORT-CONTAINER -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j REDIRECT --to-ports ` + pp,
		`-A KUBE-NODEPORT-HOST -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j DNAT --to-destination 10.200.0.1:` + pp,
	} {
		if !strings.Contains(natS, want+"\n") {
			t.Errorf("missing from iptables -t nat -S: %s", want)
		}
	}
	if first := strings.SplitN(strings.SplitAfter(natS, "-A PREROUTING ")[1], "\n", 2)[0]; !strings.HasSuffix(first, "-j KUBE-PORTALS-CONTAINER") {
		t.Errorf("first PREROUTING rule is %q, want the portal jump", first)
	}
	filterS := run(t, "ip", "netns", "exec", tb.node, "iptables-"+backend, "-S", chainNodePortNonLocal)
	if !strings.Contains(filterS, "--dport "+pp+" -m conntrack --ctstate DNAT -j ACCEPT") ||
		!strings.Contains(filterS, "! -i lo -p tcp -m comment --comment \"default/web:http\" -m tcp --dport "+pp+" -m conntrack ! --ctstate DNAT -j DROP") {
		t.Errorf("filter rule missing:\n%s", filterS)
	}
	v6S := run(t, "ip", "netns", "exec", tb.node, "ip6tables-"+backend, "-t", "nat", "-S", chainPortalsHost)
	if !strings.Contains(v6S, "-d fd00:96::10/128") || !strings.Contains(v6S, "--to-destination [fd00:200::1]:"+pp) {
		t.Errorf("ip6tables rules missing:\n%s", v6S)
	}

	reach := func(step string) {
		t.Helper()
		for _, c := range []struct{ from, ns, addr string }{
			{"client pod", tb.client, "10.96.0.10:80"},
			{"client pod", tb.client, "[fd00:96::10]:80"},
			{"client pod", tb.client, "10.200.0.1:30080"},
			{"client pod", tb.client, "[fd00:200::1]:30080"},
			{"node itself", tb.node, "10.96.0.10:80"},
			{"node itself", tb.node, "[fd00:96::10]:80"},
			{"node itself", tb.node, "10.200.0.1:30080"},
			{"node itself", tb.node, "[fd00:200::1]:30080"},
		} {
			got, err := exchange(c.ns, c.addr)
			if want := "ok:hello " + c.addr; err != nil || got != want {
				t.Errorf("%s: %s -> %s: got %q, %v; want %q", step, c.from, c.addr, got, err, want)
			}
		}
	}
	reach("after the first sync")
	// The proxy port itself serves the node, but nobody outside it: only
	// what a portal rule redirected gets through KUBE-NODEPORT-NON-LOCAL.
	for _, addr := range []string{"10.200.0.1:" + pp, "[fd00:200::1]:" + pp} {
		if !unreachable(tb.client, addr) {
			t.Errorf("client pod reached the proxy port directly at %s", addr)
		}
		if got, err := exchange(tb.node, addr); err != nil || got != "ok:hello "+addr {
			t.Errorf("node itself -> %s: got %q, %v", addr, got, err)
		}
	}

	// A sync with nothing to change writes nothing.
	restores := sumRestores(p)
	if err := p.SyncPortals(ctx, portals); err != nil {
		t.Fatal(err)
	}
	if n := sumRestores(p); n != restores {
		t.Errorf("no-op sync ran iptables-restore %v times", n-restores)
	}

	// Someone deletes our jumps and flushes a chain by hand.
	ipt := []string{"ip", "netns", "exec", tb.node, "iptables-" + backend, "-t", "nat"}
	run(t, append(ipt, "-D", "PREROUTING", "-m", "comment", "--comment", "handle ClusterIPs; NOTE: this must be before the NodePort rules", "-j", chainPortalsContainer)...)
	run(t, append(ipt, "-F", chainPortalsHost)...)
	run(t, "ip", "netns", "exec", tb.node, "ip6tables-"+backend, "-t", "nat", "-F", chainPortalsContainer)
	if !unreachable(tb.client, "10.96.0.10:80") {
		t.Error("ClusterIP still reachable with the jump deleted: the test would not notice a missing repair")
	}
	if err := p.SyncPortals(ctx, portals); err != nil {
		t.Fatalf("repair sync: %v", err)
	}
	if got := repairs(p); got != 3 {
		t.Errorf("repairs = %v, want 3 (the IPv4 jump, the IPv4 host rule, the IPv6 container rule)", got)
	}
	reach("after the repair")

	// A restarted uproxy takes its proxy ports back and rewrites nothing.
	p2, err := New(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	ports, err := p2.InstalledProxyPorts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ports[portals[0].Port.Name] != ln.port || ports[portals[1].Port.Name] != ln.port || len(ports) != 2 {
		t.Errorf("InstalledProxyPorts = %v, want default/web:http and its IPv6 twin = %d", ports, ln.port)
	}
	if err := p2.SyncPortals(ctx, portals); err != nil {
		t.Fatal(err)
	}
	if n := sumRestores(p2); n != 0 {
		t.Errorf("first sync after restart ran iptables-restore %v times", n)
	}

	// --cleanup leaves nothing of ours, and is idempotent.
	for range 2 {
		if err := Cleanup(ctx, cfg, testLog(t)); err != nil {
			t.Fatalf("Cleanup: %v", err)
		}
	}
	if all := saveAll(t, tb.node, backend); strings.Contains(all, "KUBE-") {
		t.Errorf("left after Cleanup:\n%s", all)
	}
	if !unreachable(tb.client, "10.96.0.10:80") {
		t.Error("ClusterIP still answered after Cleanup")
	}
}

// svcPortal is a dual-stack TCP service "default/web:http" for the real
// tests: two portals, one per family as watch/ hands them over (the test's
// one dual-stack listener serves both proxy ports' worth of traffic).
type svcPortal struct {
	v4, v6         string
	port, nodePort uint16
}

type svcPortals []svcPortal

func (ps svcPortals) build(proxyPort uint16) []svc.Portal {
	var out []svc.Portal
	for _, p := range ps {
		for _, ip := range []string{p.v4, p.v6} {
			out = append(out, web(proxyPort, func(sp *svc.Port) {
				sp.ClusterIPs = addrs(ip)
				sp.Name.Family = svc.FamilyOf(sp.ClusterIPs[0])
				sp.Port, sp.NodePort = p.port, p.nodePort
			}))
		}
	}
	return out
}

func sumRestores(p *Programmer) float64 {
	n := 0.0
	for _, f := range families {
		for _, r := range []string{"success", "failure"} {
			n += testutil.ToFloat64(p.m.restores.WithLabelValues(f.String(), r))
		}
	}
	return n
}

func repairs(p *Programmer) float64 {
	return testutil.ToFloat64(p.m.repairs.WithLabelValues("ipv4")) + testutil.ToFloat64(p.m.repairs.WithLabelValues("ipv6"))
}

func TestRealRestoreErrorNamesLine(t *testing.T) {
	tb := newTestbed(t)
	r := execRunner{netns: tb.node}
	input := "*nat\n:KUBE-PORTALS-HOST - [0:0]\n-A KUBE-PORTALS-HOST -p tcp -j NO-SUCH-CHAIN\nCOMMIT\n"
	err := r.restore(context.Background(), v4, []byte(input))
	if err == nil {
		t.Fatal("restore of a rule jumping to a missing chain succeeded")
	}
	for _, want := range []string{"iptables-restore --noflush", "NO-SUCH-CHAIN", "input line"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	t.Logf("restore error: %v", err)
}
