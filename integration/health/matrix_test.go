package health

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/uproxy/uproxy/integration/bed"
)

// Measurement plan of every scenario (issue 7): a baseline of loops before
// the event, the event (which returns once the API state it causes is
// settled), then the loop runs on until at least loopMin after its start and
// settle after the event.
const (
	workers   = 4
	baseline  = 3 * time.Second
	loopMin   = 10 * time.Second
	settle    = 1500 * time.Millisecond
	warmup    = 500 * time.Millisecond // excluded from the baseline rate
	slowPerEP = 2                      // slow requests allowed per bad endpoint
	// cutPerEP: requests cut after delivery allowed per bad endpoint: the
	// 3 resets in a row that eject it (--eject-after-resets) plus one more
	// already on its way to it.
	cutPerEP = 4
	minRatio = 0.90        // throughput during the event / before
	readyMax = time.Second // scale-out: Ready to first answer
	// defaultWindow is the "during" span of scenarios without API delay.
	defaultWindow = 3 * time.Second
	ctlInterval   = 50 * time.Millisecond // the control loop's pause between requests
	// stallDisturbs: a machine stall this long over a failed request can
	// have failed it (uproxy's first dial to a healthy endpoint may time
	// out after 50 ms, its adaptive floor), so the attempt is measured again.
	stallDisturbs = 50 * time.Millisecond
)

// TestHealthMatrix runs issue 7's matrix against uproxy with ejection (the
// default) and asserts the goals: no failed request; in the scenarios with
// bad endpoints the API does not know about, at most 2 slow (> 0.5 s)
// requests per bad endpoint and throughput during the event at least 90 % of
// before; on scale-out every new pod answers within 1 s of becoming Ready.
//
// The times are the proxy's, not the box's: a request's time is counted
// less the stall the control loop saw over it, the throughput goal scales
// with the machine's speed the control loop measured over the same window
// (when the box was slower), and the scale-out latency is counted less the
// stall over it (see machine). The control loop does not go through
// uproxy, so a fault the proxy does not handle shows in full.
func TestHealthMatrix(t *testing.T) {
	runMatrix(t, "eject", nil, true)
}

// TestHealthMatrixLegacy is the comparison run: the same matrix with
// --disable-ejection (dial retries only, as legacy kube-proxy). It prints its
// table and asserts the harness and that the scenarios marked
// showsEjection (blackhole, reset) miss at least one goal: goals that
// uproxy without ejection met could not tell ejection from its absence.
// Opt-in, it doubles the package's run time:
//
//	UPROXY_HEALTH_LEGACY=1 go test -race -count=1 -v -run 'TestHealthMatrixLegacy' ./integration/health/
func TestHealthMatrixLegacy(t *testing.T) {
	if os.Getenv("UPROXY_HEALTH_LEGACY") != "1" {
		t.Skip("comparison run without ejection: set UPROXY_HEALTH_LEGACY=1")
	}
	runMatrix(t, "legacy", []string{"--disable-ejection"}, false)
}

// row is one line of a matrix table.
type row struct {
	name      string
	sum       bed.Summary
	ratio     float64 // requests/s during the event window / before it
	ejections int     // uproxy_endpoint_ejections_total of the service's endpoints
	retries   int     // uproxy_dial_retries_total of the service port
	moved     int     // uproxy_early_resets_total{outcome="moved"}
	note      string
	missed    []string      // goals missed (asserted only when the matrix asserts)
	ctl       bed.Summary   // the control loop over the same span
	ctlRatio  float64       // the control loop's throughput ratio over the same windows
	slow      int           // requests slower than bed.SlowThreshold by their own time (machine.ownTime)
	speed     float64       // the machine's speed during the event window / before (machine.speed)
	stall     time.Duration // the machine's largest stall over a failed request (machine.delay)
	attempt   int
	ns        string
	lost      int // failed requests in flight when the fault went in (lostInFlight)
}

// disturbed reports whether the control loop, which goes straight to a
// healthy pod and bypasses uproxy, saw the machine stall: a request slower
// than bed.SlowThreshold, a failure, its own throughput during the event
// window below minRatio of before, or a stall of at least stallDisturbs
// over a failed request.
func (r *row) disturbed() bool {
	return r.ctl.Slow > 0 || r.ctl.Failures > 0 || r.ctlRatio < minRatio || r.stall >= stallDisturbs
}

// maxAttempts bounds the re-measurements of a scenario whose goals were
// missed while the control loop saw the machine stall (a loaded shared box)
// or while requests were lost in flight at the fault (lostInFlight). A miss
// without either is never re-measured; the attempt that is reported must
// meet every goal by itself, nothing is discounted but the machine's own
// stalls and slowdown the control loop measured (see machine).
const maxAttempts = 3

func runMatrix(t *testing.T, variant string, args []string, assert bool) {
	b := bed.Shared(t)
	u := b.StartUproxy(t, bed.UproxyOptions{Args: args})
	client := b.NewClient(t)
	ctl := controlURL(t, b, client, variant)
	var rows []*row
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			var r *row
			for attempt := 1; ; attempt++ {
				r = runScenario(t, b, client, ctl, variant, sc, attempt)
				t.Logf("uproxy log lines of %s:\n%s", r.ns, proxyLog(u.Proc.LogPath, r.ns))
				if !assert || len(r.missed) == 0 || !(r.disturbed() || r.lost > 0) || attempt == maxAttempts {
					break
				}
				t.Logf("attempt %d missed %d goal(s) while the control loop (straight to a pod, not through uproxy) saw %v, throughput %.0f%%, a stall of %v over a failed request, and %d request(s) were lost in flight at the fault; measuring again; missed:\n%s",
					attempt, len(r.missed), r.ctl, 100*r.ctlRatio, r.stall.Round(time.Millisecond), r.lost, strings.Join(r.missed, "\n"))
			}
			rows = append(rows, r)
			for _, m := range r.missed {
				if assert {
					t.Errorf("goal missed: %s", m)
				} else {
					t.Logf("goal missed (not asserted without ejection): %s", m)
				}
			}
			if !assert && sc.showsEjection && len(r.missed) == 0 {
				t.Errorf("without ejection %s met every goal: the goals do not tell ejection from its absence", sc.name)
			}
			if t.Failed() {
				t.Logf("uproxy log: %s", u.Proc.LogPath)
			}
		})
	}
	printTable(variant, args, rows)
}

// runScenario deploys, measures and tears down one scenario.
func runScenario(t *testing.T, b *bed.Bed, client *bed.Client, ctlURL, variant string, sc scenario, attempt int) *row {
	ns := variant + "-" + sc.name
	if attempt > 1 {
		ns = fmt.Sprintf("%s-%d", ns, attempt)
	}
	s := newStage(t, b, client, ns, sc.replicas)
	if sc.setup != nil {
		sc.setup(s)
	}
	ctl := client.StartLoop(s.ctx, bed.LoopOptions{URL: ctlURL, Workers: 1, Interval: ctlInterval, MaxTime: 5 * time.Second})
	loop := client.StartLoop(s.ctx, bed.LoopOptions{URL: s.url, Workers: workers, MaxTime: 5 * time.Second})
	start := time.Now()
	s.sleep(baseline)
	event := time.Now()
	res := sc.event(s)
	done := time.Now()
	end := start.Add(loopMin)
	if e := done.Add(settle); e.After(end) {
		end = e
	}
	s.sleep(time.Until(end))
	sum := loop.Stop()
	ctlSum := ctl.Stop()
	if res.ejections < 0 { // not taken before the API removed the endpoints
		res.ejections = s.metric("uproxy_endpoint_ejections_total", "")
	}
	r := &row{name: sc.name, sum: sum, ejections: res.ejections, note: res.note, ctl: ctlSum, attempt: attempt, ns: s.ns, lost: lostInFlight(sum, res),
		retries: s.metric("uproxy_dial_retries_total", ""),
		moved:   s.metric("uproxy_early_resets_total", `outcome="moved"`)}

	window := sc.window
	if window == 0 {
		window = defaultWindow
	}
	before := rate(sum, start.Add(warmup), event)
	during := rate(sum, event, event.Add(window))
	if before > 0 {
		r.ratio = during / before
	}
	if b := rate(ctlSum, start.Add(warmup), event); b > 0 {
		r.ctlRatio = rate(ctlSum, event, event.Add(window)) / b
	}
	box := newMachine(ctlSum, ctlInterval, start.Add(warmup), event)
	r.speed = box.speed(ctlInterval, event, event.Add(window))
	for _, x := range sum.Samples {
		if box.ownTime(x) > bed.SlowThreshold {
			r.slow++
		}
		if !x.OK {
			r.stall = max(r.stall, box.delay(x.Start, x.Start.Add(x.Dur)))
		}
	}
	t.Logf("%s (attempt %d): %v; event at %s; before %.1f/s, during [%v] %.1f/s; %s; control loop %v, cycle %v, machine speed during %.0f%%",
		sc.name, attempt, sum, event.Format("15:04:05.000"), before, window.Round(time.Millisecond), during, res.note, ctlSum,
		box.base.Round(time.Millisecond), 100*r.speed)

	t.Logf("%s timeline (500 ms buckets from the baseline start; requests started, slowest; the machine's stall):\n%s", sc.name, timeline(sum, start, event, box))
	// Requests cut after uproxy delivered them (reset, or closed without an
	// answer) are not replayed: the pod may have read them (issue 15 item
	// 7). Those in flight at a SIGKILL fault never count; otherwise up to
	// cutPerEP per bad endpoint (one that resets right after accepting is
	// ejected at once when its reset beats the client's bytes, after 3 in a
	// row when they lose that race, as on a loaded machine) and one per pod
	// that stops at SIGTERM (at least one): it resets its accept queue, and
	// a Go server closes a request it read after its Shutdown began
	// unanswered (seen twice in one graceful scale-in). Every other failure
	// counts.
	cut, delivered := 0, 0
	for _, x := range sum.Samples {
		switch {
		case cutByFault(x, res):
			cut++
		case cutAfterDelivery(x):
			delivered++
		}
	}
	if allowed := max(1, sc.stopping) + cutPerEP*sc.bad; sum.Failures > cut+min(delivered, allowed) {
		r.missed = append(r.missed, fmt.Sprintf("%d of %d requests failed (%d cut in flight by the fault, %d cut after delivery of %d allowed):\n%s",
			sum.Failures, sum.Requests, cut, delivered, allowed, sum.FailureDetail()))
	} else if cut+delivered > 0 {
		t.Logf("%s: %d requests cut in flight by the fault and %d cut after delivery (not replayed, issue 15 item 7):\n%s", sc.name, cut, delivered, sum.FailureDetail())
	}
	if sc.bad > 0 {
		if r.slow > slowPerEP*sc.bad {
			r.missed = append(r.missed, fmt.Sprintf("%d requests slower than %v less the machine's stall over them (allowed %d for %d bad endpoints): %s",
				r.slow, bed.SlowThreshold, slowPerEP*sc.bad, sc.bad, slowDetail(sum, box)))
		}
		if want := minRatio * min(1, r.speed); r.ratio < want {
			r.missed = append(r.missed, fmt.Sprintf("throughput during the event %.0f%% of before (%.1f/s vs %.1f/s), want >= %.0f%% (%.0f%% at the machine's speed, %.0f%% of before)",
				100*r.ratio, during, before, 100*want, 100*minRatio, 100*min(1, r.speed)))
		}
	}
	if sc.check != nil {
		missed, note := sc.check(s, sum, res, box)
		r.missed = append(r.missed, missed...)
		if note != "" {
			r.note = strings.TrimPrefix(r.note+"; "+note, "; ")
		}
	}
	return r
}

// timeline buckets the samples by start time, for reading a failure.
func timeline(s bed.Summary, start, event time.Time, box machine) string {
	const step = 500 * time.Millisecond
	var sb strings.Builder
	var last time.Time
	if n := len(s.Samples); n > 0 {
		last = s.Samples[n-1].Start // Samples are in start order
	}
	for from := start; !from.After(last); from = from.Add(step) {
		b := s.Between(from, from.Add(step))
		mark := ""
		if !event.Before(from) && event.Before(from.Add(step)) {
			mark = " <- event"
		}
		fmt.Fprintf(&sb, "  %+6.1fs %3d req %2d failed max %v machine stalled %v%s\n", from.Sub(event).Seconds(), b.Requests, b.Failures,
			b.Max.Round(time.Millisecond), box.delay(from, from.Add(step)).Round(time.Millisecond), mark)
	}
	return sb.String()
}

// proxyLog returns uproxy's log lines about the services of namespace ns
// (ejections, readmissions, listeners: a handful per scenario).
func proxyLog(path, ns string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, `"service":"`+ns+"/") && len(out) < 40 {
			out = append(out, "  "+l)
		}
	}
	return strings.Join(out, "\n")
}

// controlURL deploys one echoserver pod in its own namespace for the control
// loop and returns its URL by pod IP: the control loop runs beside every
// scenario's loops, from the same client, but does not go through uproxy, so
// its slow requests show the machine stalling, not the proxy.
func controlURL(t *testing.T, b *bed.Bed, client *bed.Client, variant string) string {
	t.Helper()
	s := newStage(t, b, client, variant+"-control", 1)
	pods, err := b.Client.CoreV1().Pods(s.ns).List(s.ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil || len(pods.Items) != 1 || pods.Items[0].Status.PodIP == "" {
		t.Fatalf("control pod: %v (%d pods)", err, len(pods.Items))
	}
	return fmt.Sprintf("http://%s:8080/", pods.Items[0].Status.PodIP)
}

// rate is the number of requests started in [from, to) per second.
func rate(s bed.Summary, from, to time.Time) float64 {
	if !to.After(from) {
		return 0
	}
	return float64(s.Between(from, to).Requests) / to.Sub(from).Seconds()
}

// slowDetail lists the requests slower than bed.SlowThreshold with the
// machine's stall over each.
func slowDetail(s bed.Summary, box machine) string {
	var parts []string
	for _, x := range s.Samples {
		if x.Dur > bed.SlowThreshold {
			parts = append(parts, fmt.Sprintf("%s %v (machine stalled %v) %s", x.Start.Format("15:04:05.000"),
				x.Dur.Round(time.Millisecond), box.delay(x.Start, x.Start.Add(x.Dur)).Round(time.Millisecond), x.Pod))
		}
	}
	return strings.Join(parts, ", ")
}

// printTable prints the matrix as SUMMARY lines (make test shows those).
func printTable(variant string, args []string, rows []*row) {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\ttry\trequests\tfailed\tslow\tp99\tmax\tthroughput\tejections\tretries\tmoved\tlost\tctl-slow\tctl-thru\tspeed\tper-pod\tnote")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d/%d\t%v\t%v\t%.0f%%\t%d\t%d\t%d\t%d\t%d/%d\t%.0f%%\t%.0f%%\t%s\t%s\n", r.name, r.attempt, r.sum.Requests, r.sum.Failures,
			r.slow, r.sum.Slow, r.sum.P99.Round(time.Millisecond), r.sum.Max.Round(time.Millisecond), 100*r.ratio,
			r.ejections, r.retries, r.moved, r.lost, r.ctl.Slow, r.ctl.Requests, 100*r.ctlRatio, 100*r.speed, perPod(r.sum.PerPod), r.note)
	}
	_ = tw.Flush()
	head := fmt.Sprintf("SUMMARY health/%s (uproxy %s):", variant, strings.Join(append([]string{"defaults"}, args...), " "))
	fmt.Println(head)
	for _, l := range strings.Split(strings.TrimRight(buf.String(), "\n"), "\n") {
		fmt.Println("SUMMARY health/" + variant + " | " + l)
	}
}

// perPod lists counts in pod-name order, by the pods' random suffixes.
func perPod(m map[string]int) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	parts := make([]string, len(names))
	for i, n := range names {
		short := n
		if j := strings.LastIndex(n, "-"); j >= 0 {
			short = n[j+1:]
		}
		parts[i] = fmt.Sprintf("%s:%d", short, m[n])
	}
	return strings.Join(parts, " ")
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
