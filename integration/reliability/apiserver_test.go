package reliability

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
)

// syncPeriod is --iptables-sync-period where a test needs a short one: the
// health staleness bound is twice it, and the tamper check runs with it.
const syncPeriod = 2 * time.Second

// TestAPIServerOutage kills kube-apiserver under a curl loop: uproxy keeps
// proxying the last known state (0 failures); /healthz stays 200 through
// the outage by default (kube-proxy's semantics: no queued change is
// stale) and shows the outage in its "apiServer" field, or, with
// --healthz-require-apiserver, turns 503 once the staleness bound
// (2 × --iptables-sync-period) has passed; when the API returns uproxy
// reconnects and converges: a scale-up made right after the API is ready
// shows in /debug/services.
func TestAPIServerOutage(t *testing.T) {
	t.Run("default", func(t *testing.T) { apiServerOutage(t, "rel-api", false) })
	t.Run("healthz-require-apiserver", func(t *testing.T) { apiServerOutage(t, "rel-api-strict", true) })
}

func apiServerOutage(t *testing.T, ns string, requireAPI bool) {
	w := newWorld(t, ns, 5*time.Minute)
	e := w.deployEcho("echo", 2)
	opts := bed.UproxyOptions{SyncPeriod: syncPeriod}
	if requireAPI {
		opts.Args = []string{"--healthz-require-apiserver"}
	}
	w.b.StartUproxy(t, opts)
	w.waitServed(e)
	bound := 2 * syncPeriod

	loop := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: e.url(), Workers: 2, Interval: 50 * time.Millisecond})
	apiDown := false
	var exited chan struct{} // closed when StopAPIServer returns
	// Never leave the shared bed without its API server.
	t.Cleanup(func() {
		if apiDown {
			<-exited
			if err := w.b.StartAPIServer(); err != nil {
				t.Errorf("restart kube-apiserver: %v", err)
			} else if err := w.b.WaitAPIReady(context.Background()); err != nil {
				t.Errorf("kube-apiserver after the outage: %v", err)
			}
		}
	})
	w.sleep(time.Second)
	stoppedAt := time.Now()
	apiDown = true
	// kube-apiserver refuses connections at once but takes seconds to exit
	// (graceful termination): watch /healthz from the kill on, not from
	// the exit.
	exited = make(chan struct{})
	go func() { defer close(exited); w.b.StopAPIServer() }()

	// Watch /healthz through the outage (12s: three staleness bounds).
	var unhealthyAfter, reportedAfter time.Duration
	var probes, ok200 int
	lastBody := ""
	for time.Since(stoppedAt) < 12*time.Second {
		code, body, err := w.b.HTTPGet(w.ctx, "http://"+bed.HealthzAddr+"/healthz")
		probes++
		if err == nil && code == http.StatusOK {
			ok200++
		}
		if err == nil && strings.Contains(body, `"apiServer"`) && reportedAfter == 0 {
			reportedAfter = time.Since(stoppedAt)
			lastBody = body
		}
		if err == nil && code == http.StatusServiceUnavailable && unhealthyAfter == 0 {
			unhealthyAfter = time.Since(stoppedAt)
			lastBody = body
		}
		w.sleep(250 * time.Millisecond)
	}
	during := loop.Snapshot().Between(stoppedAt, time.Now())
	<-exited

	if err := w.b.StartAPIServer(); err != nil {
		t.Fatalf("restart kube-apiserver: %v", err)
	}
	if err := w.b.WaitAPIReady(w.ctx); err != nil {
		t.Fatal(err)
	}
	apiDown = false
	readyAt := time.Now()
	outage := readyAt.Sub(stoppedAt)

	// Converge: scale 2 → 3 and time the new endpoint, first in the API
	// (EndpointSlice: controller-manager and node agent recovered), then
	// in uproxy's /debug/services.
	if err := bed.Poll(w.ctx, 200*time.Millisecond, func() (bool, error) {
		return w.b.Scale(w.ctx, w.ns, "echo", 3) == nil, nil
	}); err != nil {
		t.Fatalf("scale after the outage: %v", err)
	}
	scaledAt := time.Now()
	var inAPI, inProxy time.Duration
	if err := bed.Poll(w.ctx, 100*time.Millisecond, func() (bool, error) {
		if inAPI == 0 {
			if eps, err := w.b.Endpoints(w.ctx, w.ns, e.name); err == nil && readyCount(eps) == 3 {
				inAPI = time.Since(readyAt)
			}
		}
		if ps, err := w.portStatus(e, "http"); err == nil && readyEndpoints(ps) == 3 {
			inProxy = time.Since(readyAt)
			return true, nil
		}
		return false, nil
	}); err != nil {
		t.Fatalf("uproxy never showed the third endpoint after the API returned: %v", err)
	}
	// The new endpoint takes traffic, and /healthz is 200 again.
	w.sleep(2 * time.Second)
	s := loop.Stop()
	var healthyAgain bool
	_ = bed.Poll(w.ctx, 250*time.Millisecond, func() (bool, error) {
		code, _, err := w.b.HTTPGet(w.ctx, "http://"+bed.HealthzAddr+"/healthz")
		healthyAgain = err == nil && code == http.StatusOK
		return healthyAgain || time.Since(readyAt) > 30*time.Second, nil
	})
	summary("api-outage", "require-apiserver=%v outage=%v loop during outage: %v; whole loop: %v; /healthz 200 %d/%d, apiServer shown after %v, 503 after %v (bound %v) %s; "+
		"after API ready: scale issued +%v, EndpointSlice 3 ready +%v, uproxy /debug/services 3 endpoints +%v (uproxy lag %v); healthz 200 again=%v",
		requireAPI, outage.Round(time.Millisecond), during, s, ok200, probes, reportedAfter.Round(time.Millisecond),
		unhealthyAfter.Round(time.Millisecond), bound, lastBody,
		scaledAt.Sub(readyAt).Round(time.Millisecond), inAPI.Round(time.Millisecond), inProxy.Round(time.Millisecond),
		(inProxy - inAPI).Round(time.Millisecond), healthyAgain)
	if during.Requests == 0 || during.Failures != 0 {
		t.Errorf("during the API outage: %v\n%s", during, during.FailureDetail())
	}
	if s.Failures != 0 {
		t.Errorf("curl loop across the outage and the scale-up: %v\n%s", s, s.FailureDetail())
	}
	if len(s.PerPod) != 3 {
		t.Errorf("the new pod took no traffic after convergence: %v", s)
	}
	if reportedAfter == 0 {
		t.Errorf("/healthz never showed the outage in \"apiServer\" during a 12s API outage")
	}
	switch {
	case !requireAPI && ok200 != probes:
		t.Errorf("/healthz answered 200 to %d of %d probes during the API outage, want all (first 503 after %v: %s)",
			ok200, probes, unhealthyAfter, lastBody)
	case requireAPI && unhealthyAfter == 0:
		t.Errorf("/healthz never turned 503 during a 12s API outage (staleness bound %v)", bound)
	case requireAPI && unhealthyAfter < bound:
		t.Errorf("/healthz turned 503 after %v, before the staleness bound %v", unhealthyAfter, bound)
	}
	if !healthyAgain {
		t.Errorf("/healthz not 200 again after the API returned")
	}
}

func readyCount(eps map[string]bed.EndpointState) int {
	n := 0
	for _, st := range eps {
		if st.Ready {
			n++
		}
	}
	return n
}
