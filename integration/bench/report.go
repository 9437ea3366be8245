package bench

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// Targets, in the order tables and the chart show them.
const (
	Direct      = "direct"
	Uproxy      = "uproxy"
	HAProxyTCP  = "haproxy-tcp"
	HAProxyHTTP = "haproxy-http"
)

// Targets lists every target; HAProxies lists the HAProxy ones.
var (
	Targets   = []string{Direct, Uproxy, HAProxyTCP, HAProxyHTTP}
	HAProxies = []string{HAProxyTCP, HAProxyHTTP}
)

// Machine describes where the run happened.
type Machine struct {
	NProc          int
	Kernel, CPU    string
	LoadBefore     string // /proc/loadavg before the run
	GoVersion      string
	HAProxyVersion string
	Commit         string
}

// Idle is the idle-connection measure.
type Idle struct {
	Want, Held        int     // connections asked for and answered end to end
	FDs               int     // uproxy's fd count increase while holding them
	RSS               int64   // uproxy's VmRSS increase in bytes
	FDsPerConn        float64 // FDs / Held
	RSSPerConn        float64 // RSS / Held, bytes
	FDLimit           uint64  // uproxy's RLIMIT_NOFILE
	BaseFDs, BaseRSSk int64
}

// Control is the control-plane measure.
type Control struct {
	Services       int             // services present for the cold start
	Cold           time.Duration   // uproxy start → every portal rule programmed and the last listener answering
	AddOne         []time.Duration // one service added (with 1000 present) → answering through the portal
	EndpointChange []time.Duration // EndpointSlice update sent → new endpoint in the balancer
	EndpointAPI    []time.Duration // the Update calls themselves (API server write)
}

// Results is one `make bench` run.
type Results struct {
	Date      time.Time
	Machine   Machine
	KeepAlive map[string][]WrkResult // per target, one per run
	Close     map[string][]WrkResult
	Bulk      map[string][]float64 // bytes/s per run
	DNS       map[string][]DNSResult
	Idle      *Idle
	Control   *Control
	Profile   string   // go tool pprof -top of uproxy under the keep-alive load
	Commands  []string // exact tool command lines
	Notes     []string
}

// NewResults returns empty results dated now.
func NewResults() *Results {
	return &Results{Date: time.Now().UTC(), KeepAlive: map[string][]WrkResult{}, Close: map[string][]WrkResult{},
		Bulk: map[string][]float64{}, DNS: map[string][]DNSResult{}}
}

func medRPS(rs []WrkResult) float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = r.ReqPerSec
	}
	return Median(xs)
}

func medP99(rs []WrkResult) time.Duration {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = float64(r.P99)
	}
	return time.Duration(Median(xs))
}

func medQPS(rs []DNSResult) float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = r.QPS
	}
	return Median(xs)
}

func sumLost(rs []DNSResult) (lost, sent int64) {
	for _, r := range rs {
		lost += r.Lost
		sent += r.Sent
	}
	return lost, sent
}

func medDur(ds []time.Duration) time.Duration {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(Median(xs))
}

// bestHAProxy returns the HAProxy target with the highest value of f (the
// stricter comparison) and that value.
func bestHAProxy(f func(string) float64) (string, float64) {
	best, bv := "", math.Inf(-1)
	for _, h := range HAProxies {
		if v := f(h); v > bv && v > 0 {
			best, bv = h, v
		}
	}
	if best == "" {
		return "", 0
	}
	return best, bv
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// Goal is one row of the goals table.
type Goal struct {
	Measure, Goal, Measured string
	Met                     bool
	Reached                 bool // false: not measured in this run
}

// Goals evaluates the goals on r.
func (r *Results) Goals() []Goal {
	var gs []Goal
	yes := func(ok bool) bool { return ok }
	if len(r.KeepAlive[Uproxy]) > 0 {
		u := medRPS(r.KeepAlive[Uproxy])
		h, hv := bestHAProxy(func(t string) float64 { return medRPS(r.KeepAlive[t]) })
		d := medRPS(r.KeepAlive[Direct])
		gs = append(gs, Goal{"keep-alive HTTP req/s (wrk -c32)", "≥ 1.15× HAProxy",
			fmt.Sprintf("%.0f req/s = %.2f× %s (%.0f), %.2f× direct (%.0f)", u, ratio(u, hv), h, hv, ratio(u, d), d),
			yes(ratio(u, hv) >= 1.15), hv > 0})
		up := medP99(r.KeepAlive[Uproxy])
		// The HAProxy with the lowest p99 is the stricter comparison.
		hp, hpv := "", time.Duration(math.MaxInt64)
		for _, t := range HAProxies {
			if v := medP99(r.KeepAlive[t]); len(r.KeepAlive[t]) > 0 && v < hpv {
				hp, hpv = t, v
			}
		}
		gs = append(gs, Goal{"p99 latency, keep-alive", "≤ HAProxy's",
			fmt.Sprintf("%v vs %s %v (direct %v)", up.Round(time.Microsecond), hp, hpv.Round(time.Microsecond), medP99(r.KeepAlive[Direct]).Round(time.Microsecond)),
			up <= hpv, hp != ""})
	}
	if len(r.Close[Uproxy]) > 0 {
		u := medRPS(r.Close[Uproxy])
		h, hv := bestHAProxy(func(t string) float64 { return medRPS(r.Close[t]) })
		d := medRPS(r.Close[Direct])
		gs = append(gs, Goal{"new connections/s (Connection: close)", "≥ 1.0× HAProxy",
			fmt.Sprintf("%.0f conn/s = %.2f× %s (%.0f), %.2f× direct (%.0f)", u, ratio(u, hv), h, hv, ratio(u, d), d),
			ratio(u, hv) >= 1.0, hv > 0})
	}
	if len(r.Bulk[Uproxy]) > 0 {
		u, d := Median(r.Bulk[Uproxy]), Median(r.Bulk[Direct])
		h, hv := bestHAProxy(func(t string) float64 { return Median(r.Bulk[t]) })
		gs = append(gs, Goal{"bulk transfer (64 MiB responses)", "≥ 0.95× direct",
			fmt.Sprintf("%.0f MB/s = %.2f× direct (%.0f MB/s); %.2f× %s", u/1e6, ratio(u, d), d/1e6, ratio(u, hv), h),
			ratio(u, d) >= 0.95, d > 0})
	}
	if len(r.DNS[Uproxy]) > 0 {
		u, d := medQPS(r.DNS[Uproxy]), medQPS(r.DNS[Direct])
		lost, sent := sumLost(r.DNS[Uproxy])
		gs = append(gs, Goal{"UDP DNS queries/s (dnsperf → dnsmasq)", "≥ 0.9× direct, 0 lost",
			fmt.Sprintf("%.0f qps = %.2f× direct (%.0f); lost %d of %d", u, ratio(u, d), d, lost, sent),
			ratio(u, d) >= 0.9 && lost == 0, d > 0})
	}
	if i := r.Idle; i != nil {
		gs = append(gs, Goal{"idle proxied TCP connections", "10,000 under a 20,000 fd limit (≤ 2.2 fds each)",
			fmt.Sprintf("%d of %d held; %.2f fds and %.1f KiB RSS per connection (fd limit %d)", i.Held, i.Want, i.FDsPerConn, i.RSSPerConn/1024, i.FDLimit),
			i.Held >= 10000 && i.FDsPerConn <= 2.2, i.Want > 0})
	}
	if c := r.Control; c != nil {
		if len(c.AddOne) > 0 {
			m := medDur(c.AddOne)
			gs = append(gs, Goal{fmt.Sprintf("one service added when %d exist", c.Services), "≤ 0.1 s",
				fmt.Sprintf("median %v (runs %v)", m.Round(time.Millisecond), roundAll(c.AddOne, time.Millisecond)), m <= 100*time.Millisecond, true})
		}
		if c.Cold > 0 {
			gs = append(gs, Goal{fmt.Sprintf("%d services from cold", c.Services), "≤ 2 s",
				c.Cold.Round(time.Millisecond).String(), c.Cold <= 2*time.Second, true})
		}
		if len(c.EndpointChange) > 0 {
			m := medDur(c.EndpointChange)
			gs = append(gs, Goal{"endpoint change → balancer", "≤ 10 ms",
				fmt.Sprintf("median %v (runs %v)", m.Round(100*time.Microsecond), roundAll(c.EndpointChange, 100*time.Microsecond)), m <= 10*time.Millisecond, true})
		}
	}
	return gs
}

func roundAll(ds []time.Duration, to time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(to)
	}
	return out
}

// WriteMarkdown renders BENCHMARKS.md.
func (r *Results) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	p := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	p("# uproxy benchmarks\n\n")
	p("Written by `make bench` (integration/bench) on %s. One run, all targets side by side on the same bed, interleaved run by run; medians of the runs.\n\n", r.Date.Format("2006-01-02 15:04 MST"))
	p("![chart: throughput relative to a direct connection](docs/bench.svg)\n\n")
	p("## Goals (issue 8)\n\n| measure | goal | measured | met |\n|---|---|---|---|\n")
	for _, g := range r.Goals() {
		met := "not met"
		switch {
		case !g.Reached:
			met = "not measured"
		case g.Met:
			met = "**met**"
		}
		p("| %s | %s | %s | %s |\n", g.Measure, g.Goal, g.Measured, met)
	}
	p("\nHAProxy ratios compare with the better of HAProxy's two configurations for each measure (the stricter comparison).\n\n")
	p("## All targets (medians)\n\n| target | keep-alive req/s | p50 | p99 | new conn/s | bulk MB/s | DNS qps (lost) |\n|---|---|---|---|---|---|---|\n")
	for _, t := range Targets {
		ka, cl := r.KeepAlive[t], r.Close[t]
		dns := "n/a"
		if len(r.DNS[t]) > 0 {
			lost, _ := sumLost(r.DNS[t])
			dns = fmt.Sprintf("%.0f (%d)", medQPS(r.DNS[t]), lost)
		}
		var p50s []float64
		for _, x := range ka {
			p50s = append(p50s, float64(x.P50))
		}
		p("| %s | %.0f | %v | %v | %.0f | %.0f | %s |\n", t, medRPS(ka), time.Duration(Median(p50s)).Round(time.Microsecond),
			medP99(ka).Round(time.Microsecond), medRPS(cl), Median(r.Bulk[t])/1e6, dns)
	}
	p("\nEvery run:\n\n```\n")
	for _, t := range Targets {
		p("%-13s keep-alive %s\n", t, wrkRuns(r.KeepAlive[t]))
		p("%-13s close      %s\n", t, wrkRuns(r.Close[t]))
		var bs []string
		for _, x := range r.Bulk[t] {
			bs = append(bs, fmt.Sprintf("%.0f", x/1e6))
		}
		p("%-13s bulk MB/s  %s\n", t, strings.Join(bs, " "))
		if len(r.DNS[t]) > 0 {
			var ds []string
			for _, x := range r.DNS[t] {
				ds = append(ds, fmt.Sprintf("%.0f/%d lost", x.QPS, x.Lost))
			}
			p("%-13s dns qps    %s\n", t, strings.Join(ds, " "))
		}
	}
	p("```\n\n")
	if i := r.Idle; i != nil {
		p("## Idle connections\n\n%d connections opened from the client to the ClusterIP, each answered one HTTP request (so it is spliced end to end), then held idle; %d held. uproxy's fds rose by %d (from %d; %.2f per connection, limit %d) and its VmRSS by %.1f MiB (from %d KiB; %.1f KiB per connection).\n\n",
			i.Want, i.Held, i.FDs, i.BaseFDs, i.FDsPerConn, i.FDLimit, float64(i.RSS)/(1<<20), i.BaseRSSk, i.RSSPerConn/1024)
	}
	if c := r.Control; c != nil {
		p("## Control plane\n\n- %d selector-less ClusterIP services created while uproxy was stopped; cold start (process start → every portal rule in `iptables-save` and the last service's listener accepting through its ClusterIP): %v.\n", c.Services, c.Cold.Round(time.Millisecond))
		p("- One more service (with its own EndpointSlice to the pod) added while %d exist: time from the Create call to the first HTTP answer through its ClusterIP from the client namespace (probes every ~5 ms): %v.\n", c.Services, roundAll(c.AddOne, time.Millisecond))
		p("- Endpoint change: an EndpointSlice update (a second address added) from the Update call until `/debug/services?format=json` lists the address (polled continuously in the node namespace): %v. uproxy has no kubeproxy_network_programming_duration_seconds metric, so this is measured from outside and includes the API server's write and watch delivery (the Update calls alone took a median %v).\n\n", roundAll(c.EndpointChange, 100*time.Microsecond), medDur(c.EndpointAPI).Round(100*time.Microsecond))
	}
	if r.Profile != "" {
		p("## CPU profile of uproxy under the keep-alive load\n\n`--profiling`, `/debug/pprof/profile?seconds=8` during a wrk -c32 keep-alive run through the ClusterIP, `go tool pprof -top`:\n\n```\n%s\n```\n\n", strings.TrimSpace(r.Profile))
	}
	if len(r.Notes) > 0 {
		p("## Method and notes\n\n")
		for _, n := range r.Notes {
			p("- %s\n", n)
		}
		p("\n")
	}
	m := r.Machine
	p("## Machine\n\n- nproc %d, kernel %s, CPU %s\n- load before the run: %s\n- %s; %s; uproxy commit %s\n\n", m.NProc, m.Kernel, m.CPU, m.LoadBefore, m.GoVersion, m.HAProxyVersion, m.Commit)
	p("## Commands\n\n```\n")
	for _, c := range r.Commands {
		p("%s\n", c)
	}
	p("```\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func wrkRuns(rs []WrkResult) string {
	var s []string
	for _, x := range rs {
		e := ""
		if x.Errors > 0 {
			e = fmt.Sprintf(" %d errors", x.Errors)
		}
		s = append(s, fmt.Sprintf("%.0f/s p99 %v%s", x.ReqPerSec, x.P99.Round(time.Microsecond), e))
	}
	return strings.Join(s, ", ")
}
