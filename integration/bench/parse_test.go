package bench

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

const wrkOutput = `Running 10s test @ http://10.96.0.10:80/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.33us  301.12us  12.01ms   91.02%
    Req/Sec    38.12k     2.01k   41.80k    70.00%
  Latency Distribution
     50%  351.00us
     75%  480.00us
     90%  650.00us
     99%    1.52ms
  758712 requests in 10.00s, 98.41MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 2
Requests/sec:  75866.21
Transfer/sec:      9.84MB
`

const dnsperfOutput = `Statistics:

  Queries sent:         281913
  Queries completed:    281900 (100.00%)
  Queries lost:         13 (0.00%)

  Response codes:       NOERROR 281900 (100.00%)
  Average packet size:  request 30, response 46
  Run time (s):         10.000180
  Queries per second:   28189.492487
`

func TestParse(t *testing.T) {
	tests := map[string]struct {
		run  func() (any, error)
		want any
	}{
		"wrk keep-alive": {
			run:  func() (any, error) { return ParseWrk(wrkOutput) },
			want: WrkResult{ReqPerSec: 75866.21, P50: 351 * time.Microsecond, P99: 1520 * time.Microsecond, Requests: 758712, Errors: 6},
		},
		"dnsperf": {
			run:  func() (any, error) { return ParseDNSPerf(dnsperfOutput) },
			want: DNSResult{QPS: 28189.492487, Sent: 281913, Completed: 281900, Lost: 13},
		},
		"curl speed": {
			run: func() (any, error) {
				s, n, err := ParseCurlSpeed("1523456789 67108864")
				return [2]float64{s, float64(n)}, err
			},
			want: [2]float64{1523456789, 67108864},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := tc.run()
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	tests := map[string]func() error{
		"wrk without --latency": func() error {
			_, err := ParseWrk(strings.Replace(wrkOutput, "     99%    1.52ms\n", "", 1))
			return err
		},
		"wrk failed": func() error {
			_, err := ParseWrk("unable to connect to 10.96.0.10:80 Connection refused\n")
			return err
		},
		"dnsperf aborted":  func() error { _, err := ParseDNSPerf("Error: socket: Too many open files\n"); return err },
		"curl no size":     func() error { _, _, err := ParseCurlSpeed("123"); return err },
		"curl not numbers": func() error { _, _, err := ParseCurlSpeed("abc def"); return err },
	}
	for name, f := range tests {
		t.Run(name, func(t *testing.T) {
			if f() == nil {
				t.Error("want an error")
			}
		})
	}
}

func TestMedianAndPortalCount(t *testing.T) {
	tests := map[string]struct {
		got, want float64
	}{
		"median odd":  {Median([]float64{3, 1, 2}), 2},
		"median even": {Median([]float64{4, 1, 3, 2}), 2.5},
		"median none": {Median(nil), 0},
		"portals distinct": {float64(PortalCount(`-A A -m comment --comment "cp/svc-0001:" -j X
-A B -m comment --comment "cp/svc-0001:" -j X
-A A -m comment --comment "cp/svc-0002:" -j X
-A A -m comment --comment "other/x:" -j X`, "cp/svc-")), 2},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("got %v, want %v", tc.got, tc.want)
			}
		})
	}
}

func TestReportGoals(t *testing.T) {
	r := NewResults()
	r.KeepAlive = map[string][]WrkResult{Direct: {{ReqPerSec: 100, P99: 3}}, Uproxy: {{ReqPerSec: 50, P99: 2}},
		HAProxyTCP: {{ReqPerSec: 40, P99: 4}}, HAProxyHTTP: {{ReqPerSec: 45, P99: 1}}}
	r.Bulk = map[string][]float64{Direct: {10e6, 10e6, 10e6}, Uproxy: {9e6, 9.6e6, 9.7e6}}
	got := map[string]bool{}
	for _, g := range r.Goals() {
		got[g.Measure] = g.Met
	}
	want := map[string]bool{
		"keep-alive HTTP req/s (wrk -c32)": false, // 50 < 1.15 × 45 (the better HAProxy)
		"p99 latency, keep-alive":          false, // 2 > haproxy-http's 1
		"bulk transfer (64 MiB responses)": true,  // median 9.6 ≥ 0.95 × 10
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: met=%v, want %v (all: %v)", k, got[k], v, got)
		}
	}
	var md, svg strings.Builder
	if err := r.WriteMarkdown(&md); err != nil || !strings.Contains(md.String(), "| bulk transfer (64 MiB responses) | ≥ 0.95× direct | 10 MB/s") {
		t.Errorf("markdown (err %v):\n%s", err, md.String())
	}
	if err := r.WriteSVG(&svg); err != nil || !strings.HasPrefix(svg.String(), "<svg") {
		t.Errorf("svg (err %v)", err)
	}
}

func TestParseABVariants(t *testing.T) {
	tests := []struct {
		in      string
		want    []abVariant
		wantErr bool
	}{
		{"old=/tmp/a new=bin/uproxy", []abVariant{{name: "old", binary: "/tmp/a"}, {name: "new", binary: "bin/uproxy"}}, false},
		{"one=bin/uproxy@GOMAXPROCS=1@GOGC=200", []abVariant{{name: "one", binary: "bin/uproxy", env: []string{"GOMAXPROCS=1", "GOGC=200"}}}, false},
		{"", nil, true},
		{"noequals", nil, true},
		{"=bin/uproxy", nil, true},
		{"name=", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseABVariants(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error %v, want error %v", err, tt.wantErr)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
