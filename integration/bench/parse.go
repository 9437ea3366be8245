package bench

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// WrkResult is what one wrk --latency run reports.
type WrkResult struct {
	ReqPerSec float64
	P50, P99  time.Duration
	Requests  int64
	Errors    int64 // socket errors (connect, read, write, timeout) + non-2xx/3xx
}

var (
	reRPS      = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	reLat      = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
	reReqs     = regexp.MustCompile(`(?m)^\s+(\d+) requests in`)
	reSockErr  = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	reNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	reDNSField = regexp.MustCompile(`(?m)^\s+(Queries sent|Queries completed|Queries lost|Queries per second):\s+([0-9.]+)`)
)

// ParseWrk reads the output of `wrk --latency`.
func ParseWrk(out string) (WrkResult, error) {
	var r WrkResult
	m := reRPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk output has no Requests/sec line: %q", out)
	}
	r.ReqPerSec, _ = strconv.ParseFloat(m[1], 64)
	for _, l := range reLat.FindAllStringSubmatch(out, -1) {
		d, err := parseDur(l[2], l[3])
		if err != nil {
			return r, err
		}
		if l[1] == "50" {
			r.P50 = d
		} else {
			r.P99 = d
		}
	}
	if r.P99 == 0 {
		return r, fmt.Errorf("wrk output has no 99%% latency (run with --latency): %q", out)
	}
	if m := reReqs.FindStringSubmatch(out); m != nil {
		r.Requests, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reSockErr.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.ParseInt(s, 10, 64)
			r.Errors += n
		}
	}
	if m := reNon2xx.FindStringSubmatch(out); m != nil {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		r.Errors += n
	}
	return r, nil
}

func parseDur(num, unit string) (time.Duration, error) {
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("latency %q: %w", num+unit, err)
	}
	mul := map[string]float64{"us": 1e3, "ms": 1e6, "s": 1e9}[unit]
	return time.Duration(f * mul), nil
}

// DNSResult is what one dnsperf run reports.
type DNSResult struct {
	QPS                   float64
	Sent, Completed, Lost int64
}

// ParseDNSPerf reads the statistics block of dnsperf's output.
func ParseDNSPerf(out string) (DNSResult, error) {
	var r DNSResult
	seen := 0
	for _, m := range reDNSField.FindAllStringSubmatch(out, -1) {
		seen++
		switch m[1] {
		case "Queries sent":
			r.Sent, _ = strconv.ParseInt(m[2], 10, 64)
		case "Queries completed":
			r.Completed, _ = strconv.ParseInt(m[2], 10, 64)
		case "Queries lost":
			r.Lost, _ = strconv.ParseInt(m[2], 10, 64)
		case "Queries per second":
			r.QPS, _ = strconv.ParseFloat(m[2], 64)
		}
	}
	if seen < 4 {
		return r, fmt.Errorf("dnsperf output lacks the statistics block: %q", out)
	}
	return r, nil
}

// ParseCurlSpeed reads curl's -w '%{speed_download} %{size_download}'
// (bytes per second, bytes).
func ParseCurlSpeed(out string) (speed float64, size int64, err error) {
	f := strings.Fields(out)
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("curl -w output %q: want speed and size", out)
	}
	if speed, err = strconv.ParseFloat(f[0], 64); err != nil {
		return 0, 0, fmt.Errorf("curl speed %q: %w", f[0], err)
	}
	if size, err = strconv.ParseInt(f[1], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("curl size %q: %w", f[1], err)
	}
	return speed, size, nil
}

// Median returns the median of xs (the mean of the middle two for an even
// count), 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// PortalCount counts the distinct "<prefix>NNN" service names in the
// comments of an iptables-save listing.
func PortalCount(rules, prefix string) int {
	re := regexp.MustCompile(regexp.QuoteMeta(prefix) + `\d+`)
	seen := map[string]bool{}
	for _, m := range re.FindAllString(rules, -1) {
		seen[m] = true
	}
	return len(seen)
}
