package watch

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// TestProbeAPI runs the reachability probe against an HTTP server that
// answers /readyz, then fails, then answers again: the tracker's outage
// starts at the first failure and ends at the next success.
func TestProbeAPI(t *testing.T) {
	var down atomic.Bool
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		hits.Add(1)
		if down.Load() {
			http.Error(w, "etcd failed", http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	defer srv.Close()
	client, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{SyncPeriod: time.Second} // probe every 1s
	tr := NewTracker(opts, zerolog.Nop())
	src := NewKubeSource(client, opts, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); src.probeAPI(ctx, tr) }()
	defer func() { cancel(); <-done }()

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("a first probe", func() bool { return hits.Load() > 0 })
	if since, _ := tr.Unreachable(); !since.IsZero() {
		t.Fatalf("unreachable since %v while /readyz answers", since)
	}
	down.Store(true)
	before := time.Now()
	waitFor("the outage", func() bool { s, _ := tr.Unreachable(); return !s.IsZero() })
	since, msg := tr.Unreachable()
	if since.Before(before) || msg == "" {
		t.Errorf("outage since %v (set down at %v), error %q", since, before, msg)
	}
	down.Store(false)
	waitFor("the API back", func() bool { s, _ := tr.Unreachable(); return s.IsZero() })
}
