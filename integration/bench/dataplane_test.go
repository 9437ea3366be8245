package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/uproxy/uproxy/integration/bed"
)

// closeHeader makes wrk open a new connection per request.
var closeHeader = []string{"-H", "Connection: close"}

// Ports of the comparison proxies on the node address.
const (
	haproxyTCPPort  = 18080
	haproxyHTTPPort = 18081
	bulkBytes       = 64 << 20
)

// world is the data-plane bench's share of the bed.
type world struct {
	t          *testing.T
	b          *bed.Bed
	ctx        context.Context
	ns         string
	podIP      string
	clusterIP  string
	client     *bed.Client
	proxy      *bed.Uproxy
	urls       map[string]string // target → base URL (no path)
	dnsServers map[string]string // target → server IP (port 53)
	res        *Results
}

func benchDataPlane(t *testing.T, b *bed.Bed, res *Results) {
	w := newWorld(t, b, res)
	w.proxy = b.StartUproxy(t, bed.UproxyOptions{MinSyncPeriod: time.Second, Args: []string{"--profiling"}})
	w.waitTargets(Targets)
	// Idle first: uproxy's fd and RSS baseline is then not inflated by
	// buffers the throughput runs leave behind.
	t.Run("idle", w.benchIdle)
	t.Run("keepalive", func(t *testing.T) { w.benchWrk(t, "keep-alive", nil, res.KeepAlive) })
	t.Run("close", func(t *testing.T) { w.benchWrk(t, "close", closeHeader, res.Close) })
	t.Run("bulk", w.benchBulk)
	t.Run("dns", w.benchDNS)
	t.Run("profile", w.benchProfile)
	t.Run("endpoints", func(t *testing.T) { w.benchEndpointChange(t) })
}

// newWorld deploys the bench's echo pod, its service (HTTP 80, DNS 53),
// dnsmasq, HAProxy and the client namespace; it does not start uproxy.
func newWorld(t *testing.T, b *bed.Bed, res *Results) *world {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	t.Cleanup(cancel)
	w := &world{t: t, b: b, ctx: ctx, res: res}
	w.ns = b.Namespace(t, "bench")
	d := bed.EchoDeployment("bench", 1, corev1.ContainerPort{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP})
	if _, err := b.Client.AppsV1().Deployments(w.ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := b.WaitDeployment(ctx, w.ns, "bench"); err != nil {
		t.Fatal(err)
	}
	svc, err := b.Client.CoreV1().Services(w.ns).Create(ctx, bed.ServiceFor("bench",
		bed.TCPPort("http", 80, 8080), udpPort("dns", 53, 53)), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.WaitEndpoints(ctx, w.ns, "bench", 1); err != nil {
		t.Fatal(err)
	}
	var pod string
	pod, w.podIP = podInfo(t, b, w.ns, "bench")
	w.clusterIP = svc.Spec.ClusterIP
	w.startDNSMasq(pod)
	w.startHAProxy()
	w.client = b.NewClient(t)
	for _, kv := range []string{"net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65535"} {
		if _, err := w.client.NS.Output(ctx, "sysctl", "-q", "-w", kv); err != nil {
			t.Fatal(err)
		}
	}
	w.urls = map[string]string{
		Direct:      fmt.Sprintf("http://%s:8080", w.podIP),
		Uproxy:      fmt.Sprintf("http://%s:80", w.clusterIP),
		HAProxyTCP:  fmt.Sprintf("http://%s:%d", bed.NodeIP, haproxyTCPPort),
		HAProxyHTTP: fmt.Sprintf("http://%s:%d", bed.NodeIP, haproxyHTTPPort),
	}
	w.dnsServers = map[string]string{Direct: w.podIP, Uproxy: w.clusterIP}
	return w
}

// waitTargets waits until each target answers the echo's hello.
func (w *world) waitTargets(targets []string) {
	for _, target := range targets {
		wctx, wcancel := context.WithTimeout(w.ctx, 20*time.Second)
		_, err := w.client.WaitHello(wctx, w.urls[target]+"/")
		wcancel()
		if err != nil {
			w.t.Fatalf("%s: %v", target, err)
		}
	}
}

// startDNSMasq runs dnsmasq in the pod's namespace, answering
// bench.uproxy A from its --address table (no upstream).
func (w *world) startDNSMasq(pod string) {
	t := w.t
	podNS, err := w.b.PodNetns(w.ns, pod)
	if err != nil {
		t.Fatal(err)
	}
	p, err := bed.StartProc(podNS, "dnsmasq", w.b.LogPath("dnsmasq.log"), nil, "dnsmasq", "--keep-in-foreground",
		"--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--user=root", "--port=53",
		"--pid-file="+w.b.LogPath("dnsmasq.pid"), "--address=/bench.uproxy/10.1.2.3", "--log-facility=-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(5 * time.Second) })
}

// startHAProxy runs HAProxy in the node namespace with both configurations.
func (w *world) startHAProxy() {
	t := w.t
	cfg := fmt.Sprintf(`global
    nbthread 2
    maxconn 6000
    ulimit-n 19000
defaults
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    option splice-auto
frontend ftcp
    mode tcp
    bind %[1]s:%[2]d
    default_backend btcp
backend btcp
    mode tcp
    server pod %[4]s:8080
frontend fhttp
    mode http
    option http-keep-alive
    bind %[1]s:%[3]d
    default_backend bhttp
backend bhttp
    mode http
    http-reuse always
    server pod %[4]s:8080
`, bed.NodeIP, haproxyTCPPort, haproxyHTTPPort, w.podIP)
	path := w.b.LogPath("haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	w.res.Commands = append(w.res.Commands, "# haproxy -db -f haproxy.cfg (node namespace):", strings.TrimSpace(cfg))
	p, err := bed.StartProc(w.b.Node, "haproxy", w.b.LogPath("haproxy.log"), nil, "haproxy", "-db", "-f", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(5 * time.Second) })
}

// run runs argv in the client namespace and fails the test on a non-zero exit.
func (w *world) run(t *testing.T, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, 2*time.Minute)
	defer cancel()
	r := w.client.Run(ctx, "", argv...)
	if !r.OK() {
		t.Fatalf("%q: %s", argv, r)
	}
	return r.Out
}

func (w *world) command(argv ...string) {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = a
		if strings.ContainsAny(a, " ?&") {
			q[i] = "'" + a + "'"
		}
	}
	w.res.Commands = append(w.res.Commands, strings.Join(q, " "))
}

// benchWrk: 3 interleaved wrk runs per target after a warm-up.
func (w *world) benchWrk(t *testing.T, kind string, extra []string, into map[string][]WrkResult) {
	argv := func(target, dur string) []string { return w.wrkArgv(target, dur, extra...) }
	for _, target := range Targets {
		w.run(t, argv(target, "2s")...)
	}
	w.command(argv("<target>", "10s")...)
	for run := 1; run <= 3; run++ {
		for _, target := range Targets {
			out := w.run(t, argv(target, "10s")...)
			r, err := ParseWrk(out)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s %s run %d: %.0f req/s p50 %v p99 %v errors %d", kind, target, run, r.ReqPerSec, r.P50, r.P99, r.Errors)
			into[target] = append(into[target], r)
			sleepCtx(w.ctx, time.Second)
		}
	}
}

// benchBulk: 5 interleaved 64 MiB downloads per target.
func (w *world) benchBulk(t *testing.T) {
	argv := w.bulkArgv
	w.command(argv("<target>")...)
	for run := 1; run <= 5; run++ {
		for _, target := range Targets {
			speed, size, err := ParseCurlSpeed(w.run(t, argv(target)...))
			if err != nil {
				t.Fatal(err)
			}
			if size != bulkBytes {
				t.Fatalf("%s: downloaded %d bytes, want %d", target, size, bulkBytes)
			}
			t.Logf("bulk %s run %d: %.0f MB/s", target, run, speed/1e6)
			w.res.Bulk[target] = append(w.res.Bulk[target], speed)
		}
	}
}

// benchDNS: dnsperf against dnsmasq, directly and through the ClusterIP.
func (w *world) benchDNS(t *testing.T) {
	for _, target := range []string{Direct, Uproxy} {
		ctx, cancel := context.WithTimeout(w.ctx, 10*time.Second)
		for ctx.Err() == nil {
			if r := w.client.Dig(ctx, w.dnsServers[target], 53, "bench.uproxy"); r.OK() && strings.TrimSpace(r.Out) == "10.1.2.3" {
				break
			}
			sleepCtx(ctx, 200*time.Millisecond)
		}
		if ctx.Err() != nil {
			t.Fatalf("dnsmasq never answered through %s", target)
		}
		cancel()
	}
	argv := func(target, secs string) []string { return w.dnsperfArgv(t, target, secs) }
	for _, target := range []string{Direct, Uproxy} {
		w.run(t, argv(target, "2")...)
	}
	w.command(argv("<target>", "10")...)
	for run := 1; run <= 3; run++ {
		for _, target := range []string{Direct, Uproxy} {
			r, err := ParseDNSPerf(w.run(t, argv(target, "10")...))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("dns %s run %d: %.0f qps sent %d lost %d", target, run, r.QPS, r.Sent, r.Lost)
			w.res.DNS[target] = append(w.res.DNS[target], r)
			sleepCtx(w.ctx, time.Second)
		}
	}
}

// benchProfile takes an 8 s CPU profile of uproxy during a keep-alive wrk
// run and keeps `go tool pprof -top`.
func (w *world) benchProfile(t *testing.T) {
	bin, _ := bed.UproxyBinary()
	load, top := w.profileUnder(t, w.wrkArgv(Uproxy, "12s"), bin, "bench-uproxy-keepalive.pprof", 25)
	if wr, err := ParseWrk(load); err == nil {
		w.res.Notes = append(w.res.Notes, fmt.Sprintf("While profiling (profiler on): uproxy keep-alive %.0f req/s, p99 %v.", wr.ReqPerSec, wr.P99))
	}
	w.res.Commands = append(w.res.Commands, "curl http://127.0.0.1:10249/debug/pprof/profile?seconds=8 (node namespace, during wrk -c32 keep-alive) > bin/bench-uproxy-keepalive.pprof",
		"go tool pprof -top -nodecount=25 bin/uproxy bin/bench-uproxy-keepalive.pprof")
	w.res.Profile = top
	t.Logf("profile:\n%s", top)
}

// profileUnder runs the load argv in the client namespace and, 2 s into it,
// takes an 8 s CPU profile of the running uproxy into bin/<file>. It returns
// the load's output and `go tool pprof -top -nodecount=<nodes> <binary>`.
func (w *world) profileUnder(t *testing.T, load []string, binary, file string, nodes int) (string, string) {
	done := make(chan string, 1)
	go func() {
		ctx, cancel := context.WithTimeout(w.ctx, time.Minute)
		defer cancel()
		done <- w.client.Run(ctx, "", load...).Out
	}()
	sleepCtx(w.ctx, 2*time.Second)
	prof, err := w.fetch(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=8", bed.MetricsAddr), 30*time.Second)
	out := <-done
	if err != nil {
		t.Fatalf("profile: %v", err)
	}
	root, _ := bed.RepoRoot()
	path := filepath.Join(root, "bin", file)
	if err := os.WriteFile(path, prof, 0o644); err != nil {
		t.Fatal(err)
	}
	top, err := exec.Command("go", "tool", "pprof", "-top", fmt.Sprintf("-nodecount=%d", nodes), binary, path).CombinedOutput()
	if err != nil {
		t.Fatalf("pprof: %v: %s", err, top)
	}
	return out, string(top)
}

// wrkArgv is the bench's wrk run against target: 2 threads, 32
// connections, latency statistics; extra goes before the URL.
func (w *world) wrkArgv(target, dur string, extra ...string) []string {
	a := append([]string{"wrk", "-t2", "-c32", "-d" + dur, "--latency"}, extra...)
	return append(a, w.urls[target]+"/")
}

// bulkArgv downloads bulkBytes from target with curl and prints speed and
// size.
func (w *world) bulkArgv(target string) []string {
	return []string{"curl", "-sS", "--max-time", "60", "-o", "/dev/null", "-w", "%{speed_download} %{size_download}",
		fmt.Sprintf("%s/bytes?n=%d", w.urls[target], bulkBytes)}
}

// dnsperfArgv runs dnsperf for secs against target's DNS server: 4
// sockets, up to 64 queries in flight, the one bench.uproxy A query.
func (w *world) dnsperfArgv(t *testing.T, target, secs string) []string {
	qfile := w.b.LogPath("dns-queries.txt")
	if err := os.WriteFile(qfile, []byte("bench.uproxy A\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{"dnsperf", "-s", w.dnsServers[target], "-p", "53", "-d", qfile, "-l", secs, "-c", "4", "-q", "64", "-t", "2"}
}
