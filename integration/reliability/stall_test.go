package reliability

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
)

// Stall test sizes (issue 15 item 8). A stall seen in 1 of ~4,400 requests
// elsewhere shows ~11 times in 50,000; the whole test takes about 75 s on
// an idle 2-core machine and 90 s with load average 8-12 (the HAProxy
// control adds a fifth of the connections).
const (
	stallConns    = 50000           // new connections through uproxy
	stallEvery    = 4               // every stallEvery-th connection goes to the HAProxy control instead
	stallWorkers  = 8               // parallel client loops
	stallLimit    = time.Second     // a connection slower than this is a stall
	stallMaxTime  = 3 * time.Second // the client gives up, as curl --max-time 3 in the issue
	haproxyPortal = "10.96.250.250" // the control's portal address (in no Service range the bed allocates from)
	haproxyPort   = 18090           // HAProxy's listener in the node namespace
	// stallCurl is how long the real curl loops run after the connection
	// load (4 to each target at once, about 65 requests/s each here).
	stallCurl = 2 * time.Minute
)

// TestNewConnectionsNeverStall: 50,000 new connections (one HTTP request
// each, closed by the client as curl does) through a ClusterIP with 3
// endpoints, from 8 parallel loops: none may take over 1 s. Interleaved with
// them, every 4th connection goes to HAProxy behind the same kind of
// REDIRECT portal in the same node namespace, to the same pods: the
// control. A stall HAProxy shows at the same time is the machine's; one it
// does not show is uproxy's. On failure the test prints each stall's phases
// (connect, first byte), the node's and client's TCP counters (listen
// overflows, SYN retransmissions, PAWS rejects, challenge ACKs) and
// conntrack's statistics, and the drops of UPROXY-PORT-WAIT: the hops a
// stall can come from.
//
// The counters line also gives uproxy's dial retries, early resets and
// endpoint ejections during the load. Knobs for measuring variants (none is
// set in make test):
//   - UPROXY_STALL_DROP_NTH=N drops every N-th SYN to the uproxy portal
//     (mangle PREROUTING, before the REDIRECT): the injected stall the test
//     must catch;
//   - UPROXY_STALL_PODS=N deploys N endpoints instead of 3;
//   - UPROXY_STALL_TWREUSE=1 gives the client tcp_tw_reuse=1 (as the
//     bench's client), so it reuses its ports within seconds;
//   - UPROXY_STALL_SHOW=1 logs every connection slower than 250 ms;
//   - UPROXY_STALL_ENV="K=V ..." adds to uproxy's environment (GOGC=400,
//     GODEBUG=gctrace=1);
//   - UPROXY_STALL_PPROF=FILE writes 20 s of uproxy's CPU profile during
//     the load to FILE;
//   - UPROXY_STALL_NODE_SYSCTL="k=v ..." sets sysctls in the node
//     namespace for the test. With net.ipv4.tcp_tw_reuse=1 uproxy used
//     10.75 CPU-seconds for the load instead of 41 (79 % of them in
//     connect(2), looking for a source port toward endpoints with over
//     14,000 TIME_WAIT sockets each), p99 55 ms instead of 91;
//   - UPROXY_STALL_CURL=D runs the curl loops (below) for D instead of 2 min.
//
// Then, as the issue measured, real curl loops, a new process per request:
// 4 to uproxy and 4 to the HAProxy control at once, for 2 minutes. A request
// stalls when curl's own clock (time_total: from curl's start to its last
// byte) passes 1 s or curl fails (exit 28 at --max-time 3). The wall time
// around the process is reported, not asserted: on this machine 1 process
// in ~2,000 takes over 1 s to start and exit, through HAProxy as often and
// at the same instants as through uproxy, while curl's own total for those
// requests was 0.5-10 ms (48 such requests of 95,162 in one 6-minute run).
func TestNewConnectionsNeverStall(t *testing.T) {
	if testing.Short() {
		t.Skip("long: 66,666 new connections, about 2 minutes (runs without -short, as in make test)")
	}
	w := newWorld(t, "rel-stall", 8*time.Minute)
	npods := 3
	if v, err := strconv.Atoi(os.Getenv("UPROXY_STALL_PODS")); err == nil {
		npods = v
	}
	e := w.deployEcho("echo", int32(npods))
	pods, err := w.b.WaitEndpoints(w.ctx, w.ns, e.name, npods)
	if err != nil {
		t.Fatal(err)
	}
	uopts := bed.UproxyOptions{Env: strings.Fields(os.Getenv("UPROXY_STALL_ENV"))}
	if os.Getenv("UPROXY_STALL_PPROF") != "" {
		uopts.Args = []string{"--profiling"}
	}
	w.b.StartUproxy(t, uopts)
	w.waitServed(e)
	w.startHAProxyPortal(haproxyPortal, haproxyPort, pods, 8080)
	targets := []connTarget{{"uproxy", net.JoinHostPort(e.ip, "80")}, {"haproxy", net.JoinHostPort(haproxyPortal, "80")}}
	if nth := os.Getenv("UPROXY_STALL_DROP_NTH"); nth != "" {
		w.nodeRule("mangle", "PREROUTING", "-d", e.ip+"/32", "-p", "tcp", "--dport", "80", "--syn",
			"-m", "statistic", "--mode", "nth", "--every", nth, "--packet", "0", "-j", "DROP")
	}

	// 50,000 connections to one portal within TIME_WAIT's 60 s need more
	// than the default 28,232 client ports: on a quiet machine (850
	// connections/s) the client ran out ("cannot assign requested
	// address"). The client namespace gets 1024-65535 for the run.
	setSysctl(t, w.client.NS, "net.ipv4.ip_local_port_range=1024 65535")
	if os.Getenv("UPROXY_STALL_TWREUSE") != "" {
		setSysctl(t, w.client.NS, "net.ipv4.tcp_tw_reuse=1")
	}
	for _, kv := range strings.Fields(os.Getenv("UPROXY_STALL_NODE_SYSCTL")) {
		setSysctl(t, w.b.Node, kv)
	}
	before, goBefore := w.stallCounters(), w.metrics()
	if path := os.Getenv("UPROXY_STALL_PPROF"); path != "" {
		go func() { // 20 s of uproxy's CPU profile, from 5 s into the load
			time.Sleep(5 * time.Second)
			if _, err := w.b.Node.Output(w.ctx, "curl", "-sS", "-o", path, "http://127.0.0.1:10249/debug/pprof/profile?seconds=20"); err != nil {
				t.Logf("pprof: %v", err)
			}
		}()
	}
	start := time.Now()
	samples := w.connLoad(targets, stallConns+stallConns/(stallEvery-1), stallWorkers, stallEvery, stallMaxTime)
	elapsed := time.Since(start)
	after, goAfter := w.stallCounters(), w.metrics()
	// uproxy's own cost of the load: CPU time and garbage collections.
	for _, name := range []string{"process_cpu_seconds_total", "go_gc_duration_seconds_count"} {
		b, _ := metric(goBefore, name)
		a, _ := metric(goAfter, name)
		t.Logf("uproxy %s during the load: %.2f", name, a-b)
	}

	stalls := make([][]connSample, len(targets))
	counts := make([]int, len(targets))
	var figures []string
	for ti, tg := range targets {
		var durs []time.Duration
		for _, s := range samples {
			if s.target != ti {
				continue
			}
			durs = append(durs, s.total)
			counts[ti]++
			if s.total > stallLimit || s.err != nil {
				stalls[ti] = append(stalls[ti], s)
			}
		}
		slices.Sort(durs)
		figures = append(figures, fmt.Sprintf("%s %d conns, %d failed or over %v, p50 %v p99 %v p99.9 %v max %v", tg.name, len(durs),
			len(stalls[ti]), stallLimit, round(durs[len(durs)/2]), round(durs[len(durs)*99/100]),
			round(durs[len(durs)*999/1000]), round(durs[len(durs)-1])))
	}
	summary("stall", "%s; %s; in %v (%.0f conn/s)", figures[0], figures[1], elapsed.Round(time.Millisecond),
		float64(len(samples))/elapsed.Seconds())
	delta := after.minus(before)
	m := w.metrics()
	label := w.portLabel(e, "http")
	for _, name := range []string{"uproxy_dial_retries_total", "uproxy_early_resets_total", "uproxy_connection_failures_total"} {
		v, _ := metric(m, name, label)
		delta[name] = int64(v)
	}
	ej, _ := metric(m, "uproxy_endpoint_ejections_total", `service_port="`+w.ns+"/"+e.name+`:http"`)
	delta["uproxy_endpoint_ejections_total"] = int64(ej)
	t.Logf("counters during the load: %s", delta)
	if os.Getenv("UPROXY_STALL_SHOW") != "" {
		for _, s := range samples {
			if s.total > 250*time.Millisecond {
				t.Logf("%s %s", targets[s.target].name, s)
			}
		}
	}
	curlFor := stallCurl
	if d, err := time.ParseDuration(os.Getenv("UPROXY_STALL_CURL")); err == nil {
		curlFor = d
	}
	setSysctl(t, w.client.NS, "net.ipv4.ip_local_port_range=32768 60999") // curl loops as a user runs them
	w.curlStalls(targets, curlFor)
	if len(stalls[0]) == 0 {
		return
	}
	var sb strings.Builder
	for _, s := range stalls[0] {
		fmt.Fprintf(&sb, "  %s\n", s)
		for _, c := range stalls[1] {
			if c.start.Before(s.start.Add(s.total)) && s.start.Before(c.start.Add(c.total)) {
				fmt.Fprintf(&sb, "    HAProxy control stalled at the same time: %s\n", c)
			}
		}
	}
	t.Errorf("%d of %d new connections through uproxy failed or took over %v (HAProxy control: %d of its %d):\n%s",
		len(stalls[0]), counts[0], stallLimit, len(stalls[1]), counts[1], sb.String())
}

func round(d time.Duration) time.Duration {
	if d < 10*time.Millisecond {
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Millisecond)
}

// startHAProxyPortal runs HAProxy (mode tcp, round robin over pods:bport,
// 5 s connect timeout) in the node namespace on NodeIP:port, behind a nat
// PREROUTING REDIRECT rule for vip:80 as uproxy's portal rules.
func (w *world) startHAProxyPortal(vip string, port int, pods []string, bport int) {
	t := w.t
	var servers strings.Builder
	for i, p := range pods {
		fmt.Fprintf(&servers, "    server pod%d %s:%d\n", i, p, bport)
	}
	cfg := fmt.Sprintf(`global
    nbthread 2
    maxconn 6000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend f
    bind %s:%d
    default_backend b
backend b
    balance roundrobin
%s`, bed.NodeIP, port, servers.String())
	path := w.b.LogPath("haproxy-stall.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := bed.StartProc(w.b.Node, "haproxy", w.b.LogPath("haproxy-stall.log"), nil, "haproxy", "-db", "-f", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(5 * time.Second) })
	w.nodeRule("nat", "PREROUTING", "-d", vip+"/32", "-p", "tcp", "--dport", "80", "-j", "REDIRECT", "--to-ports", strconv.Itoa(port))
	addr := net.JoinHostPort(vip, "80")
	if err := bed.Poll(w.ctx, 100*time.Millisecond, func() (bool, error) {
		return w.oneConn(0, addr, time.Second).err == nil, nil
	}); err != nil {
		t.Fatalf("HAProxy behind %s never answered: %v\n%s", addr, err, p.Tail(20))
	}
}

// nodeRule inserts an iptables rule first in table/chain of the node
// namespace and deletes it in t.Cleanup.
func (w *world) nodeRule(table, chain string, spec ...string) {
	w.t.Helper()
	run := func(op string) error {
		_, err := w.b.Node.Output(context.Background(), append([]string{"iptables", "-w", "-t", table, op, chain}, spec...)...)
		return err
	}
	if err := run("-I"); err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() {
		if err := run("-D"); err != nil {
			w.t.Errorf("remove node rule: %v", err)
		}
	})
}

// stallCounters are the counters of the hops a stall can come from.
type stallCounters map[string]int64

// stallNstat are the TCP counters read in the node and client namespaces.
var stallNstat = []string{"TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtTCPSynRetrans", "TcpRetransSegs",
	"TcpExtPAWSEstabRejected", "TcpExtTCPChallengeACK", "TcpExtTCPTimeWaitOverflow", "TcpExtTW", "TcpExtTWRecycled",
	"TcpAttemptFails", "TcpEstabResets", "TcpOutRsts"}

func (w *world) stallCounters() stallCounters {
	w.t.Helper()
	c := stallCounters{}
	for _, n := range []struct {
		prefix string
		ns     *bed.Netns
	}{{"node.", w.b.Node}, {"client.", w.client.NS}} {
		out, err := n.ns.Output(w.ctx, append([]string{"nstat", "-az"}, stallNstat...)...)
		if err != nil {
			w.t.Fatal(err)
		}
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) >= 2 && !strings.HasPrefix(f[0], "#") {
				v, _ := strconv.ParseInt(f[1], 10, 64)
				c[n.prefix+f[0]] += v
			}
		}
	}
	out, err := w.b.Node.Output(w.ctx, "conntrack", "-S")
	if err != nil {
		w.t.Fatal(err)
	}
	for _, l := range strings.Split(out, "\n") {
		for _, kv := range strings.Fields(l) {
			k, v, ok := strings.Cut(kv, "=")
			if n, err := strconv.ParseInt(v, 10, 64); ok && err == nil && k != "cpu" {
				c["conntrack."+k] += n
			}
		}
	}
	out, err = w.b.Node.Output(w.ctx, "iptables", "-w", "-t", "mangle", "-L", "UPROXY-PORT-WAIT", "-v", "-n", "-x")
	if err != nil {
		w.t.Fatal(err)
	}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[2] == "DROP" {
			v, _ := strconv.ParseInt(f[0], 10, 64)
			c["port-wait.drops"] += v
		}
	}
	return c
}

func (c stallCounters) minus(before stallCounters) stallCounters {
	d := stallCounters{}
	for k, v := range c {
		d[k] = v - before[k]
	}
	return d
}

func (c stallCounters) String() string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var sb strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&sb, " %s=%d", k, c[k])
	}
	return strings.TrimSpace(sb.String())
}

// setSysctl sets kv ("key=value") in ns for the test and puts the previous
// value back at cleanup (the namespace may be shared).
func setSysctl(t *testing.T, ns *bed.Netns, kv string) {
	t.Helper()
	k, _, _ := strings.Cut(kv, "=")
	old, err := ns.Output(context.Background(), "sysctl", "-n", k)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ns.Output(context.Background(), "sysctl", "-q", "-w", kv); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		prev := k + "=" + strings.Join(strings.Fields(old), " ")
		if _, err := ns.Output(context.Background(), "sysctl", "-q", "-w", prev); err != nil {
			t.Errorf("restore %s: %v", prev, err)
		}
	})
}

// timedCurl runs curl as bed.Client.Curl does and has it write its own
// timings to stderr (the Sample's Detail): the connect and the first byte,
// counted from curl's start, and curl's total; the rest of the Sample's
// time is the process's start and exit.
type timedCurl struct{ c *bed.Client }

const curlTimings = "connect %{time_connect}s first byte %{time_starttransfer}s curl total %{time_total}s"

func (tc timedCurl) Curl(ctx context.Context, url string, maxTime time.Duration) bed.Result {
	return tc.c.Run(ctx, "", "curl", "-sS", "--max-time", fmt.Sprintf("%.3f", maxTime.Seconds()),
		"-w", "%{stderr}"+curlTimings, url)
}

// curlTotal is curl's own time_total from a timedCurl Sample's Detail.
func curlTotal(detail string) (time.Duration, bool) {
	var conn, first, total float64
	if _, err := fmt.Sscanf(detail, "connect %gs first byte %gs curl total %gs", &conn, &first, &total); err != nil {
		return 0, false
	}
	return time.Duration(total * float64(time.Second)), true
}

// curlStalls runs 4 real curl loops to each target at once for d. A request
// that failed or whose curl total passed stallLimit is a stall (those
// through uproxy fail the test); requests slower than stallLimit only by
// the wall clock around the process are counted apart.
func (w *world) curlStalls(targets []connTarget, d time.Duration) {
	w.t.Helper()
	loops := make([]*bed.Loop, len(targets))
	for i, tg := range targets {
		loops[i] = bed.StartLoop(w.ctx, timedCurl{w.client}, bed.LoopOptions{URL: "http://" + tg.addr + "/", Workers: 4, Duration: d, MaxTime: stallMaxTime})
	}
	for i, l := range loops {
		sum := l.Wait()
		var stalls, slowStart []string
		var totals []time.Duration
		for _, x := range sum.Samples {
			line := fmt.Sprintf("%s +%v %s", x.Start.Format("15:04:05.000"), x.Dur.Round(time.Millisecond), x.Detail)
			total, ok := curlTotal(x.Detail)
			switch {
			case !x.OK || !ok || total > stallLimit:
				stalls = append(stalls, line)
			case x.Dur > stallLimit:
				slowStart = append(slowStart, line)
			}
			if ok {
				totals = append(totals, total)
			}
		}
		if len(totals) == 0 {
			w.t.Fatalf("%s: no curl request reported its timings: %v", targets[i].name, sum)
		}
		slices.Sort(totals)
		summary("stall-curl", "%s: %d curl requests, %d failed or over %v by curl's clock (p99.9 %v, max %v); %d over %v only by the wall clock around the process (its start and exit); wall clock: %v",
			targets[i].name, len(sum.Samples), len(stalls), stallLimit, round(totals[len(totals)*999/1000]), round(totals[len(totals)-1]),
			len(slowStart), stallLimit, sum)
		if len(slowStart) > 0 {
			w.t.Logf("%s: curl processes over %v by the wall clock only:\n  %s", targets[i].name, stallLimit, strings.Join(slowStart, "\n  "))
		}
		if len(stalls) > 0 {
			w.t.Logf("%s: curl requests failed or over %v by curl's clock:\n  %s", targets[i].name, stallLimit, strings.Join(stalls, "\n  "))
			if i == 0 {
				w.t.Errorf("%d curl requests through uproxy failed or took over %v by curl's own clock", len(stalls), stallLimit)
			}
		}
	}
}
