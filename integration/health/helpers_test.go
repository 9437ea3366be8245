package health

import (
	"testing"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
)

// TestMeasures checks the table's arithmetic without a bed.
func TestMeasures(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int, pod string, dur time.Duration) bed.Sample {
		return bed.Sample{Start: t0.Add(time.Duration(ms) * time.Millisecond), Dur: dur, Pod: pod, OK: pod != ""}
	}
	sum := bed.Summarize([]bed.Sample{
		at(0, "web-a-x1", 10*time.Millisecond), at(100, "web-a-x2", 10*time.Millisecond),
		at(600, "web-a-x1", 600*time.Millisecond), at(1200, "", 20*time.Millisecond),
	})
	cases := map[string]struct {
		from, to time.Duration
		want     float64
	}{
		"first second":    {0, time.Second, 3},
		"second second":   {time.Second, 2 * time.Second, 1},
		"half open start": {100 * time.Millisecond, 600 * time.Millisecond, 2},
		"empty span":      {time.Second, time.Second, 0},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if got := rate(sum, t0.Add(c.from), t0.Add(c.to)); got != c.want {
				t.Errorf("rate = %v, want %v", got, c.want)
			}
		})
	}
	if got, want := perPod(sum.PerPod), "x1:2 x2:1"; got != want {
		t.Errorf("perPod = %q, want %q", got, want)
	}
	r := &row{ctl: sum}
	if !r.disturbed() {
		t.Errorf("a control loop with a slow and a failed request must count as disturbed")
	}
	if !(&row{ctl: bed.Summarize([]bed.Sample{at(0, "web-a-x1", time.Millisecond)}), ctlRatio: 0.8}).disturbed() {
		t.Errorf("a control loop whose throughput fell to 80%% must count as disturbed")
	}
	if (&row{ctl: bed.Summarize([]bed.Sample{at(0, "web-a-x1", time.Millisecond)}), ctlRatio: 1}).disturbed() {
		t.Errorf("a clean control loop must not count as disturbed")
	}
}

// TestLostInFlight: only timeouts with no byte back that started before the
// fault was in place count as lost in flight.
func TestLostInFlight(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	timeout := "exit=28 curl: (28) Operation timed out after 5001 milliseconds with 0 bytes received"
	cases := map[string]struct {
		sample bed.Sample
		want   int
	}{
		"timeout before the fault": {bed.Sample{Start: t0.Add(-time.Millisecond), Detail: timeout}, 1},
		"timeout after the fault":  {bed.Sample{Start: t0.Add(time.Millisecond), Detail: timeout}, 0},
		"reset before the fault":   {bed.Sample{Start: t0.Add(-time.Millisecond), Detail: "exit=56 curl: (56) Recv failure: Connection reset by peer"}, 0},
		"answered":                 {bed.Sample{Start: t0.Add(-time.Millisecond), OK: true, Pod: "p"}, 0},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			sum := bed.Summarize([]bed.Sample{c.sample})
			if got := lostInFlight(sum, result{faultDone: t0}); got != c.want {
				t.Errorf("lostInFlight = %d, want %d", got, c.want)
			}
		})
	}
	if got := lostInFlight(bed.Summarize([]bed.Sample{{Start: t0, Detail: timeout}}), result{}); got != 0 {
		t.Errorf("without a fault nothing is lost in flight, got %d", got)
	}
}
