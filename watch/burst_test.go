package watch

import (
	"fmt"
	"testing"
	"time"

	discovery "k8s.io/api/discovery/v1"
)

// TestRunnerSyncBurst checks the SyncPorts rate limit against kube-proxy's
// BoundedFrequencyRunner: a token bucket of two, refilled one token per
// MinSyncPeriod. Each case starts with a full bucket (the initial sync's
// token has been refilled) and counts SyncPorts calls after the initial one.
func TestRunnerSyncBurst(t *testing.T) {
	type step struct {
		after     time.Duration // clock step before the change
		change    string        // "svc": a new Service; "ep": an endpoint change; "": none
		wantSyncs int           // SyncPorts calls since the initial sync, after the pass
		wantDelay time.Duration // nextDelay after the pass; -1: not checked
	}
	const sec = time.Second
	cases := map[string]struct {
		min   time.Duration
		steps []step
	}{
		"two back-to-back changes apply at once, a third waits for the period": {
			min: sec,
			steps: []step{
				{0, "svc", 1, -1},
				{0, "svc", 2, -1},
				{0, "svc", 2, sec},
				{999 * time.Millisecond, "", 2, time.Millisecond},
				{time.Millisecond, "", 3, -1},
			},
		},
		"sustained churn gets one sync per period": {
			min: sec,
			steps: []step{
				{0, "svc", 1, -1},
				{0, "svc", 2, -1},
				{100 * time.Millisecond, "svc", 2, 900 * time.Millisecond},
				{900 * time.Millisecond, "svc", 3, -1},
				{100 * time.Millisecond, "svc", 3, 900 * time.Millisecond},
				{900 * time.Millisecond, "svc", 4, -1},
				{500 * time.Millisecond, "svc", 4, 500 * time.Millisecond},
				{500 * time.Millisecond, "", 5, -1},
			},
		},
		"tokens refill one per period, up to two": {
			min: sec,
			steps: []step{
				{0, "svc", 1, -1},
				{0, "svc", 2, -1},
				{sec, "svc", 3, -1}, // one token back
				{0, "svc", 3, sec},
				{5 * sec, "", 4, -1}, // the waiting change; the bucket refills to two
				{5 * sec, "svc", 5, -1},
				{0, "svc", 6, -1},
				{0, "svc", 6, sec},
			},
		},
		"half a period refills half a token": {
			min: sec,
			steps: []step{
				{0, "svc", 1, -1},
				{0, "svc", 2, -1},
				{1500 * time.Millisecond, "svc", 3, -1},
				{0, "svc", 3, 500 * time.Millisecond},
				{500 * time.Millisecond, "", 4, -1},
			},
		},
		"endpoint changes are never rate limited": {
			min: sec,
			steps: []step{
				{0, "svc", 1, -1},
				{0, "svc", 2, -1},
				{0, "svc", 2, sec},
				{0, "ep", 2, sec},
				{0, "ep", 2, sec},
				{0, "ep", 2, sec},
			},
		},
		"no min period: every change at once": {
			min: 0,
			steps: []step{
				{0, "svc", 1, -1},
				{0, "svc", 2, -1},
				{0, "svc", 3, -1},
				{0, "svc", 4, -1},
			},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			l := newSteppedLoop(t, Options{MinSyncPeriod: tc.min, SyncPeriod: time.Hour})
			l.tr.SetSynced()
			l.r.start(l.ctx)
			l.clk.Step(2 * tc.min) // the initial sync's token is back
			svcs, eps := 0, 0
			for i, s := range tc.steps {
				l.clk.Step(s.after)
				switch s.change {
				case "svc":
					svcs++
					l.tr.OnServiceAdd(service("ns", fmt.Sprintf("s%d", svcs), withClusterIPs(fmt.Sprintf("10.96.1.%d", svcs))))
				case "ep":
					eps++
					l.tr.OnEndpointSliceUpdate(nil, slice("ns", "s1-1", "s1", discovery.AddressTypeIPv4, httpPorts(8080), ep(fmt.Sprintf("10.244.0.%d", eps))))
				}
				l.r.pass(l.ctx, false)
				syncs, epCalls := l.counts()
				if syncs-1 != s.wantSyncs {
					t.Fatalf("step %d (+%v %q): %d syncs, want %d", i, s.after, s.change, syncs-1, s.wantSyncs)
				}
				if epCalls != eps {
					t.Fatalf("step %d: %d endpoint updates, want %d (endpoint changes wait for nothing)", i, epCalls, eps)
				}
				if d := l.r.nextDelay(l.clk.Now()); s.wantDelay >= 0 && d != s.wantDelay {
					t.Fatalf("step %d (+%v %q): next delay %v, want %v", i, s.after, s.change, d, s.wantDelay)
				}
			}
		})
	}
}
