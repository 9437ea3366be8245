package health

import (
	"slices"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
)

// machine is the machine's own slowness during a scenario as the control
// loop saw it, to tell what the box did from what the proxy did.
//
// The control loop (one worker: a request straight to a pod, not through
// uproxy, then ctlInterval's pause) runs in cycles, from one request's start
// to the next one's. Whatever holds up the box (other builds on the two
// cores, the test process descheduled) lengthens the cycle it falls in,
// whether it hits the request or the pause. A cycle's excess over the
// baseline's 90th-percentile cycle is the machine's delay over that span
// (the percentile, not the median, so that ordinary jitter excuses
// nothing); its length without the pause is how long the box took for a
// request then.
// The fault cannot slow this loop: it does not go through uproxy, and a
// fault that holds the scenario's loop up leaves the box more CPU.
type machine struct {
	cycles []cycle       // in start order
	base   time.Duration // the baseline's 90th-percentile cycle
	busy   time.Duration // mean cycle length less the pause over the baseline
}

type cycle struct {
	from, to time.Time
	excess   time.Duration // to-from beyond base, >= 0
}

// newMachine models the control loop's samples with a baseline of the
// cycles that start in [baseFrom, baseTo).
func newMachine(ctl bed.Summary, interval time.Duration, baseFrom, baseTo time.Time) machine {
	var m machine
	s := ctl.Samples // in start order
	var base []time.Duration
	for i := 0; i+1 < len(s); i++ {
		c := cycle{from: s[i].Start, to: s[i+1].Start}
		m.cycles = append(m.cycles, c)
		if !c.from.Before(baseFrom) && c.from.Before(baseTo) {
			base = append(base, c.to.Sub(c.from))
		}
	}
	if len(base) == 0 {
		return m
	}
	var sum time.Duration
	for _, d := range base {
		sum += d
	}
	m.busy = max(sum/time.Duration(len(base))-interval, time.Millisecond)
	slices.Sort(base)
	m.base = base[len(base)*9/10]
	for i := range m.cycles {
		m.cycles[i].excess = max(m.cycles[i].to.Sub(m.cycles[i].from)-m.base, 0)
	}
	return m
}

// delay is how much of [from, to) the machine spent stalled: each control
// cycle overlapping the span contributes its excess, at most the length of
// the overlap (a stall that held a request up lay in both).
func (m machine) delay(from, to time.Time) time.Duration {
	var d time.Duration
	for _, c := range m.cycles {
		lo, hi := maxTime(c.from, from), minTime(c.to, to)
		if hi.After(lo) {
			d += min(c.excess, hi.Sub(lo))
		}
	}
	return d
}

// speed is the machine's speed over the cycles starting in [from, to)
// relative to the baseline: the baseline's mean request time (cycle less the
// pause) over the span's; 1 without control samples. Above 1 the box got
// faster.
func (m machine) speed(interval time.Duration, from, to time.Time) float64 {
	var sum time.Duration
	n := 0
	for _, c := range m.cycles {
		if !c.from.Before(from) && c.from.Before(to) {
			sum += c.to.Sub(c.from)
			n++
		}
	}
	if n == 0 || m.busy == 0 {
		return 1
	}
	return float64(m.busy) / float64(max(sum/time.Duration(n)-interval, time.Millisecond))
}

// ownTime is a request's duration less the machine's delay over it: what
// the request would have taken on the baseline's box.
func (m machine) ownTime(x bed.Sample) time.Duration {
	return x.Dur - m.delay(x.Start, x.Start.Add(x.Dur))
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
