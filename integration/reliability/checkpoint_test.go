package reliability

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/uproxy/uproxy/integration/bed"
	"github.com/uproxy/uproxy/watch"
)

// checkpointServeBound is issue 14's bound: with the API server down, a
// restarted uproxy serves the last known services within 1 s of starting.
const checkpointServeBound = time.Second

// checkpointOffWindow is how long the run without a checkpoint is watched
// to show that it does not serve (well past checkpointServeBound).
const checkpointOffWindow = 3 * time.Second

// TestCheckpointRestartAPIDown: with the API server stopped, uproxy is
// SIGKILLed and started again. With the state checkpoint (the default) the
// new process serves the service within 1 s of starting and a curl loop from
// then on sees 0 failures; with --checkpoint-path= (mechanism off) it serves
// nothing within 3 s, which shows that the test can fail. Then the API server
// returns, and changes made meanwhile (a scale-up, a Service deleted that the
// checkpoint still had) are applied: the API's state replaces the
// checkpoint.
func TestCheckpointRestartAPIDown(t *testing.T) {
	w := newWorld(t, "rel-checkpoint", 8*time.Minute)
	for _, tc := range []struct {
		name       string
		checkpoint bool
	}{
		{name: "on", checkpoint: true},
		{name: "off", checkpoint: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := ""
			if tc.checkpoint {
				path = filepath.Join(t.TempDir(), "state.json")
			}
			restartAPIDown(t, w, "ck-"+tc.name, path)
		})
	}
}

// restartAPIDown runs the scenario with --checkpoint-path=path ("" off).
func restartAPIDown(t *testing.T, w *world, name, path string) {
	// An echo service, and a second Service on the same pods that is
	// deleted while uproxy cannot see it.
	sw := *w
	sw.t = t
	w = &sw
	e := w.deployEcho(name, 2)
	gone := bed.ServiceFor(name+"-gone", bed.TCPPort("http", portHTTP, 8080))
	gone.Spec.Selector = map[string]string{"app": e.name}
	if _, err := w.b.Client.CoreV1().Services(w.ns).Create(w.ctx, gone, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	goneName := fmt.Sprintf("%s/%s:http", w.ns, gone.Name)
	ckArg := "--checkpoint-path=" + path

	u1 := startKillableUproxy(t, w, ckArg)
	w.waitServed(e)
	if path != "" {
		// The checkpoint holds both services and the echo endpoints.
		if err := bed.Poll(w.ctx, 100*time.Millisecond, func() (bool, error) {
			c, err := watch.LoadCheckpoint(watch.Options{CheckpointPath: path, NodeName: bed.NodeName})
			if err != nil {
				return false, nil
			}
			var names []string
			eps := 0
			for _, p := range c.Ports {
				names = append(names, p.Port.Name.String())
				if p.Port.Name.String() == fmt.Sprintf("%s/%s:http", w.ns, e.name) {
					eps = len(p.Endpoints)
				}
			}
			return slices.Contains(names, goneName) && eps == 2, nil
		}); err != nil {
			t.Fatalf("checkpoint %s never held %s and 2 echo endpoints: %v", path, goneName, err)
		}
	}

	// The API server goes away (waited for: the new instance must not
	// reach it), then uproxy is SIGKILLed and started again at once.
	apiDown := true
	t.Cleanup(func() { // never leave the shared bed without its API server
		if apiDown {
			if err := w.b.StartAPIServer(); err != nil {
				t.Errorf("restart kube-apiserver: %v", err)
			} else if err := w.b.WaitAPIReady(context.Background()); err != nil {
				t.Errorf("kube-apiserver after the outage: %v", err)
			}
		}
	})
	w.b.StopAPIServer()
	u1.Kill()
	startedAt := time.Now()
	u2 := w.b.StartUproxy(t, bed.UproxyOptions{NoWait: true, Args: []string{ckArg}})

	// Time to the first answer through the new process.
	bound := checkpointServeBound
	if path == "" {
		bound = checkpointOffWindow
	}
	served := firstAnswer(w, e, startedAt, startedAt.Add(bound))
	var loop *bed.Loop
	if served > 0 {
		loop = w.client.StartLoop(w.ctx, bed.LoopOptions{URL: e.url(), Workers: 4, MaxTime: 5 * time.Second})
	}
	// Where the new process spent its start-up (timestamps of its log).
	for _, l := range strings.Split(u2.Proc.Tail(40), "\n") {
		if strings.Contains(l, "checkpoint") || strings.Contains(l, "node IPs") || strings.Contains(l, "starting uproxy") {
			t.Logf("new uproxy: %s", l)
		}
	}
	var fromCheckpoint []string
	if all, err := w.services(); err == nil {
		for _, p := range all {
			fromCheckpoint = append(fromCheckpoint, p.Name)
		}
	}
	w.sleep(2 * time.Second) // served with the API server still down

	// The API server returns; meanwhile-changes: scale up, delete a Service.
	if err := w.b.StartAPIServer(); err != nil {
		t.Fatalf("restart kube-apiserver: %v", err)
	}
	if err := w.b.WaitAPIReady(w.ctx); err != nil {
		t.Fatal(err)
	}
	apiDown = false
	apiAt := time.Now()
	if err := bed.Poll(w.ctx, 200*time.Millisecond, func() (bool, error) {
		return w.b.Scale(w.ctx, w.ns, e.name, 3) == nil, nil
	}); err != nil {
		t.Fatalf("scale after the outage: %v", err)
	}
	if err := w.b.Client.CoreV1().Services(w.ns).Delete(w.ctx, gone.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// Three figures from the API's return: uproxy's informers synced
	// (/healthz 200), the EndpointSlice has the third endpoint, uproxy has
	// applied both changes.
	var synced, inAPI, converged time.Duration
	var last []string
	if err := bed.Poll(w.ctx, 100*time.Millisecond, func() (bool, error) {
		if synced == 0 {
			if code, _, err := w.b.HTTPGet(w.ctx, "http://"+bed.HealthzAddr+"/healthz"); err == nil && code == http.StatusOK {
				synced = time.Since(apiAt)
			}
		}
		if inAPI == 0 {
			if eps, err := w.b.Endpoints(w.ctx, w.ns, e.name); err == nil && readyCount(eps) == 3 {
				inAPI = time.Since(apiAt)
			}
		}
		all, err := w.services()
		if err != nil {
			return false, nil
		}
		last = last[:0]
		ready := 0
		for _, p := range all {
			last = append(last, p.Name)
			if p.Name == fmt.Sprintf("%s/%s:http", w.ns, e.name) {
				ready = readyEndpoints(p)
			}
		}
		if ready == 3 && !slices.Contains(last, goneName) {
			converged = time.Since(apiAt)
			return true, nil
		}
		return false, nil
	}); err != nil {
		t.Fatalf("uproxy never applied the changes made after the API returned (services %v): %v", last, err)
	}
	answers := firstAnswer(w, e, time.Now(), time.Now().Add(30*time.Second)) > 0
	w.sleep(time.Second)
	var s bed.Summary
	if loop != nil {
		s = loop.Stop()
	}
	if ok, werr := u2.Proc.Exited(); ok {
		t.Fatalf("uproxy exited: %v", werr)
	}

	mode := "checkpoint on"
	if path == "" {
		mode = "checkpoint off (--checkpoint-path=)"
	}
	first := "none within " + bound.String()
	if served > 0 {
		first = served.Round(time.Millisecond).String()
	}
	summary("checkpoint-"+name, "%s: API down, SIGKILL, restart → first answer after the new process started: %s (bound %v); "+
		"served before the API returned: %v; loop from the first answer on: %v; API ready → uproxy synced (/healthz 200) +%v, "+
		"EndpointSlice has the 3rd endpoint +%v, scale-up and deletion applied in uproxy +%v",
		mode, first, checkpointServeBound, fromCheckpoint, s, synced.Round(time.Millisecond), inAPI.Round(time.Millisecond),
		converged.Round(time.Millisecond))
	if !answers {
		t.Errorf("the service never answered after the API server returned")
	}
	if path == "" {
		// The mechanism off: nothing is served until the API returns, so
		// the bound below fails without the checkpoint.
		if served > 0 {
			t.Errorf("without a checkpoint the service answered %v after the restart, with the API server down", served)
		}
		return
	}
	if served == 0 || served > checkpointServeBound {
		t.Errorf("with the checkpoint: first answer after %v, want within %v of the new process starting\n%s", served, checkpointServeBound, u2.Proc.Tail(30))
	}
	if !slices.Contains(fromCheckpoint, goneName) {
		t.Errorf("the checkpoint's %s was not served while the API server was down (served: %v)", goneName, fromCheckpoint)
	}
	if s.Requests == 0 || s.Failures != 0 {
		t.Errorf("curl loop from the first answer on: %v\n%s", s, s.FailureDetail())
	}
}

// firstAnswer polls the echo service's HTTP port from the client namespace
// (every 20 ms, 200 ms timeout) until it answers through uproxy or until
// deadline, and returns how long after since it first answered (0: never).
func firstAnswer(w *world, e echoService, since, deadline time.Time) time.Duration {
	hc := &http.Client{Timeout: 200 * time.Millisecond, Transport: &http.Transport{
		DialContext: w.client.NS.DialContext, DisableKeepAlives: true}}
	defer hc.CloseIdleConnections()
	for time.Now().Before(deadline) && w.ctx.Err() == nil {
		if resp, err := hc.Get(e.url()); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if _, ok := bed.ParseHello(string(body)); ok && resp.StatusCode == http.StatusOK {
				return time.Since(since)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0
}

// startKillableUproxy starts uproxy for a test that SIGKILLs it
// (StartUproxy's cleanup requires a clean SIGTERM exit) and waits for
// /healthz; startUproxyProc's cleanup stops it if it still runs.
func startKillableUproxy(t *testing.T, w *world, args ...string) *bed.Proc {
	t.Helper()
	p, _ := startUproxyProc(t, w, true, nil, args...)
	return p
}
