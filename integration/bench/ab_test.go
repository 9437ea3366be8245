package bench

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
)

// abVariant is one uproxy build (and environment) in an A/B comparison.
type abVariant struct {
	name, binary string
	env          []string
}

// parseABVariants parses UPROXY_BENCH_AB: space-separated name=binary
// entries, each optionally followed by @KEY=VALUE environment settings,
// e.g. "old=/tmp/uproxy-old new=bin/uproxy new1=bin/uproxy@GOMAXPROCS=1".
func parseABVariants(s string) ([]abVariant, error) {
	var vs []abVariant
	for _, f := range strings.Fields(s) {
		name, rest, ok := strings.Cut(f, "=")
		if !ok || name == "" || rest == "" {
			return nil, fmt.Errorf("variant %q: want name=binary[@KEY=VALUE...]", f)
		}
		parts := strings.Split(rest, "@")
		vs = append(vs, abVariant{name: name, binary: parts[0], env: parts[1:]})
	}
	if len(vs) == 0 {
		return nil, fmt.Errorf("no variants")
	}
	return vs, nil
}

// TestBenchAB compares uproxy builds on the bench's bed, interleaved round
// by round, with direct and haproxy-tcp as the baselines of each round:
//
//	UPROXY_BENCH=1 UPROXY_BENCH_AB="old=/tmp/uproxy-old new=bin/uproxy" \
//	  go test -run '^TestBenchAB$' -v ./integration/bench/
//
// Each variant is started for its turn only, so one uproxy runs at a time.
// UPROXY_BENCH_AB_ROUNDS (default 3) sets the rounds; UPROXY_BENCH_AB_MEASURES
// (default "keepalive close dns bulk") the measures; "profile-keepalive"
// "profile-close" and "profile-dns" take an 8 s CPU profile of each variant under that
// load into bin/ab-<variant>-<load>.pprof and log its top functions. It prints medians and
// writes no report.
func TestBenchAB(t *testing.T) {
	spec := os.Getenv("UPROXY_BENCH_AB")
	if spec == "" {
		t.Skip("set UPROXY_BENCH_AB (see the comment)")
	}
	requireBench(t)
	variants, err := parseABVariants(spec)
	if err != nil {
		t.Fatal(err)
	}
	rounds := 3
	if s := os.Getenv("UPROXY_BENCH_AB_ROUNDS"); s != "" {
		if rounds, err = strconv.Atoi(s); err != nil || rounds < 1 {
			t.Fatalf("UPROXY_BENCH_AB_ROUNDS=%q", s)
		}
	}
	measures := strings.Fields(os.Getenv("UPROXY_BENCH_AB_MEASURES"))
	if len(measures) == 0 {
		measures = []string{"keepalive", "close", "dns", "bulk"}
	}
	b := bed.Shared(t)
	w := newWorld(t, b, NewResults())
	w.waitTargets([]string{Direct, HAProxyTCP})
	results := map[string]map[string][]float64{} // measure → target → values
	p99 := map[string][]float64{}                // keep-alive p99 (ms) per target
	record := func(measure, target string, v float64) {
		if results[measure] == nil {
			results[measure] = map[string][]float64{}
		}
		results[measure][target] = append(results[measure][target], v)
	}
	// measure runs the measures against target; v is the uproxy variant
	// serving it (nil for the baselines).
	measure := func(t *testing.T, target string, v *abVariant) {
		for _, m := range measures {
			switch m {
			case "keepalive", "close":
				var extra []string
				if m == "close" {
					extra = closeHeader
				}
				r, err := ParseWrk(w.run(t, w.wrkArgv(target, "10s", extra...)...))
				if err != nil {
					t.Fatal(err)
				}
				record(m, target, r.ReqPerSec)
				if m == "keepalive" {
					p99[target] = append(p99[target], float64(r.P99)/float64(time.Millisecond))
				}
				t.Logf("%s %s: %.0f req/s p99 %v", m, target, r.ReqPerSec, r.P99)
			case "dns":
				if _, ok := w.dnsServers[target]; !ok {
					continue
				}
				r, err := ParseDNSPerf(w.run(t, w.dnsperfArgv(t, target, "10")...))
				if err != nil {
					t.Fatal(err)
				}
				record(m, target, r.QPS)
				t.Logf("dns %s: %.0f qps lost %d", target, r.QPS, r.Lost)
			case "bulk":
				speed, _, err := ParseCurlSpeed(w.run(t, w.bulkArgv(target)...))
				if err != nil {
					t.Fatal(err)
				}
				record(m, target, speed/1e6)
				t.Logf("bulk %s: %.0f MB/s", target, speed/1e6)
			case "profile-keepalive", "profile-close", "profile-dns":
				if v == nil {
					continue
				}
				w.abProfile(t, *v, strings.TrimPrefix(m, "profile-"))
			default:
				t.Fatalf("unknown measure %q", m)
			}
			sleepCtx(w.ctx, time.Second)
		}
	}
	order := []string{Direct, HAProxyTCP}
	for _, v := range variants {
		order = append(order, v.name)
	}
	for round := 1; round <= rounds; round++ {
		t.Run(fmt.Sprintf("round%d/%s", round, Direct), func(t *testing.T) { measure(t, Direct, nil) })
		t.Run(fmt.Sprintf("round%d/%s", round, HAProxyTCP), func(t *testing.T) { measure(t, HAProxyTCP, nil) })
		for _, v := range variants {
			t.Run(fmt.Sprintf("round%d/%s", round, v.name), func(t *testing.T) {
				w.proxy = b.StartUproxy(t, bed.UproxyOptions{Binary: v.binary, Env: v.env, MinSyncPeriod: time.Second, Args: []string{"--profiling"}})
				w.waitTargets([]string{Uproxy})
				w.urls[v.name] = w.urls[Uproxy]
				w.dnsServers[v.name] = w.dnsServers[Uproxy]
				measure(t, v.name, &v)
			})
		}
	}
	var out strings.Builder
	fmt.Fprintf(&out, "A/B medians of %d rounds (ratio to direct, to haproxy-tcp):\n", rounds)
	for _, m := range measures {
		for _, target := range order {
			vals := results[m][target]
			if len(vals) == 0 {
				continue
			}
			med := Median(vals)
			line := fmt.Sprintf("%-10s %-12s %10.0f  %.2f× direct", m, target, med, med/Median(results[m][Direct]))
			if hp := results[m][HAProxyTCP]; len(hp) > 0 {
				line += fmt.Sprintf("  %.2f× haproxy-tcp", med/Median(hp))
			}
			if m == "keepalive" {
				line += fmt.Sprintf("  p99 %.2f ms", Median(p99[target]))
			}
			sorted := append([]float64(nil), vals...)
			sort.Float64s(sorted)
			fmt.Fprintf(&out, "%s  runs %.0f\n", line, sorted)
		}
	}
	fmt.Print(out.String())
	t.Log(out.String())
}

// abProfile takes an 8 s CPU profile of the running uproxy variant under
// the given load (keepalive, close, dns) and logs `go tool pprof -top`.
func (w *world) abProfile(t *testing.T, v abVariant, kind string) {
	variant := v.name
	var load []string
	switch kind {
	case "keepalive":
		load = w.wrkArgv(variant, "12s")
	case "close":
		load = w.wrkArgv(variant, "12s", closeHeader...)
	case "dns":
		load = w.dnsperfArgv(t, variant, "12")
	}
	file := fmt.Sprintf("ab-%s-%s.pprof", variant, kind)
	_, top := w.profileUnder(t, load, v.binary, file, 40)
	t.Logf("%s under %s load (bin/%s):\n%s", variant, kind, file, top)
}
