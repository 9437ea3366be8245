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
	if !(&row{ctl: bed.Summarize([]bed.Sample{at(0, "web-a-x1", time.Millisecond)}), ctlRatio: 1, stall: stallDisturbs}).disturbed() {
		t.Errorf("a machine stall of %v over a failed request must count as disturbed", stallDisturbs)
	}
	if (&row{ctl: bed.Summarize([]bed.Sample{at(0, "web-a-x1", time.Millisecond)}), ctlRatio: 1}).disturbed() {
		t.Errorf("a clean control loop must not count as disturbed")
	}
}

// TestLostInFlight: only requests that started before the fault was in
// place and were cut by it count as lost in flight: timeouts with no byte
// back, and resets or empty replies that ended after the fault went in.
func TestLostInFlight(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	timeout := "exit=28 curl: (28) Operation timed out after 5001 milliseconds with 0 bytes received"
	reset := "exit=56 curl: (56) Recv failure: Connection reset by peer"
	cases := map[string]struct {
		sample bed.Sample
		want   int
	}{
		"timeout before the fault":     {bed.Sample{Start: t0.Add(-time.Millisecond), Detail: timeout}, 1},
		"timeout after the fault":      {bed.Sample{Start: t0.Add(time.Millisecond), Detail: timeout}, 0},
		"reset over before the fault":  {bed.Sample{Start: t0.Add(-10 * time.Millisecond), Dur: time.Millisecond, Detail: reset}, 0},
		"reset in flight at the fault": {bed.Sample{Start: t0.Add(-time.Millisecond), Dur: 5 * time.Millisecond, Detail: reset}, 1},
		"empty reply in flight":        {bed.Sample{Start: t0.Add(-time.Millisecond), Dur: 5 * time.Millisecond, Detail: "exit=52 curl: (52) Empty reply from server"}, 1},
		"reset after the fault":        {bed.Sample{Start: t0.Add(time.Millisecond), Dur: 5 * time.Millisecond, Detail: reset}, 0},
		"answered":                     {bed.Sample{Start: t0.Add(-time.Millisecond), OK: true, Pod: "p"}, 0},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			sum := bed.Summarize([]bed.Sample{c.sample})
			if got := lostInFlight(sum, result{at: t0, faultDone: t0}); got != c.want {
				t.Errorf("lostInFlight = %d, want %d", got, c.want)
			}
		})
	}
	if got := lostInFlight(bed.Summarize([]bed.Sample{{Start: t0, Detail: timeout}}), result{}); got != 0 {
		t.Errorf("without a fault nothing is lost in flight, got %d", got)
	}
}

// TestMachine checks the control loop's model of the machine: a stall
// lengthens the cycle it falls in; jitter within the baseline's spread
// excuses nothing; a request is credited at most the part of a stall that
// overlaps it; speed compares request times, less the pause.
func TestMachine(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const pause = 50 * time.Millisecond
	var ctl []bed.Sample
	at := t0
	add := func(n int, dur time.Duration) {
		for range n {
			ctl = append(ctl, bed.Sample{Start: at, Dur: dur, OK: true, Pod: "ctl"})
			at = at.Add(dur + pause)
		}
	}
	for range 5 { // baseline [0, 1s): 90 and 110 ms cycles, 100 ms on average
		add(1, 40*time.Millisecond)
		add(1, 60*time.Millisecond)
	}
	add(1, 350*time.Millisecond)  // [1s, 1.4s): 290 ms beyond the baseline's longest cycles
	add(10, 50*time.Millisecond)  // [1.4s, 2.4s)
	add(10, 100*time.Millisecond) // [2.4s, 3.9s): requests take twice as long
	add(1, 50*time.Millisecond)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	m := newMachine(bed.Summarize(ctl), pause, t0, ms(1000))
	if m.base != 110*time.Millisecond {
		t.Fatalf("baseline cycle = %v, want 110ms (the 90th percentile)", m.base)
	}
	delays := map[string]struct {
		from, to time.Time
		want     time.Duration
	}{
		"baseline":              {ms(0), ms(1000), 0},
		"the whole stall":       {ms(900), ms(1500), 290 * time.Millisecond},
		"the stall's last part": {ms(1300), ms(1500), 100 * time.Millisecond},
		"slower requests":       {ms(2400), ms(2550), 40 * time.Millisecond},
	}
	for name, c := range delays {
		t.Run(name, func(t *testing.T) {
			if got := m.delay(c.from, c.to); got != c.want {
				t.Errorf("delay = %v, want %v", got, c.want)
			}
		})
	}
	if got := m.ownTime(bed.Sample{Start: ms(1000), Dur: 600 * time.Millisecond}); got != 310*time.Millisecond {
		t.Errorf("ownTime of a 600 ms request over the stall = %v, want 310ms", got)
	}
	speeds := map[string]struct {
		from, to time.Time
		want     float64
	}{
		"baseline":         {ms(0), ms(1000), 1},
		"after the stall":  {ms(1400), ms(2400), 1},
		"twice as slow":    {ms(2400), ms(3900), 0.5},
		"no control cycle": {ms(5000), ms(6000), 1},
	}
	for name, c := range speeds {
		t.Run("speed "+name, func(t *testing.T) {
			if got := m.speed(pause, c.from, c.to); got != c.want {
				t.Errorf("speed = %v, want %v", got, c.want)
			}
		})
	}
}
