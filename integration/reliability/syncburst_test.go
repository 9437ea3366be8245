package reliability

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/uproxy/uproxy/integration/bed"
)

// burstServices is how many Services exist before the timed ones (issue 15
// item 9: "one Service created when 1000 exist").
const burstServices = 1000

// TestSyncBurst: with 1000 Services present and --iptables-min-sync-period
// 1s, a Service X and, right after X is programmed, a Service Y are each
// programmed (their portal rule listed by iptables in the node namespace,
// polled every 10 ms) within 0.1 s of their creation (the goal; the test
// fails past 0.3 s), as kube-proxy's burst of two syncs allows; a third
// Service Z right after them waits for the rate limit (a token comes back
// 1 s after X's sync).
func TestSyncBurst(t *testing.T) {
	w := newWorld(t, "syncburst", 3*time.Minute)
	ctx, b := w.ctx, w.b

	start := time.Now()
	createServices(t, ctx, b, w.ns, burstServices)
	t.Logf("%d services created in %v", burstServices, time.Since(start).Round(time.Millisecond))

	b.StartUproxy(t, bed.UproxyOptions{MinSyncPeriod: time.Second})
	if err := bed.Poll(ctx, 100*time.Millisecond, func() (bool, error) {
		rules, err := b.NATRules(ctx)
		return err == nil && strings.Count(rules, "-A KUBE-PORTALS-CONTAINER -d ") >= burstServices, nil
	}); err != nil {
		t.Fatalf("portal rules of the %d services never complete: %v", burstServices, err)
	}
	// Past two min-sync periods since the initial sync: the bucket is full.
	time.Sleep(2500 * time.Millisecond)

	// took is from Create to the end of the first listing that shows the
	// portal rule; seen is to that listing's start (the rule appeared before
	// the end, perhaps before the start). The listing is `iptables -S` of
	// the portal chain, iptables-save's format for one chain: ~15 ms with
	// 1000 Services where iptables-save -t nat takes 35-60 ms, so the
	// measurement adds less to the figures.
	var took, seen []time.Duration
	var starts []time.Time
	m0 := w.metrics()
	for _, name := range []string{"x", "y", "z"} {
		t0 := time.Now()
		starts = append(starts, t0)
		s, err := b.Client.CoreV1().Services(w.ns).Create(ctx, selectorless(name), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created := time.Since(t0)
		rule := "-A KUBE-PORTALS-CONTAINER -d " + s.Spec.ClusterIP + "/32"
		var saveStart time.Time
		if err := bed.Poll(ctx, 10*time.Millisecond, func() (bool, error) {
			saveStart = time.Now()
			rules, err := b.Node.Output(ctx, "iptables", "-w", "-t", "nat", "-S", "KUBE-PORTALS-CONTAINER")
			return err == nil && strings.Contains(rules, rule), nil
		}); err != nil {
			t.Fatalf("service %s (%s) never programmed: %v", name, s.Spec.ClusterIP, err)
		}
		took = append(took, time.Since(t0))
		seen = append(seen, saveStart.Sub(t0))
		t.Logf("service %s created with %d present (Create returned after %v): portal rule seen by a listing started %v and ended %v after Create was called",
			name, burstServices+len(took)-1, created.Round(time.Millisecond), seen[len(seen)-1].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
	}
	m1 := w.metrics()
	delta := func(name string) float64 {
		a, _ := metric(m0, name)
		b, _ := metric(m1, name)
		return b - a
	}
	restores := delta("uproxy_iptables_restore_duration_seconds_count")
	restoreMean := time.Duration(0)
	if restores > 0 {
		restoreMean = time.Duration(delta("uproxy_iptables_restore_duration_seconds_sum") / restores * float64(time.Second))
	}
	ms := func(i int) string {
		return fmt.Sprintf("%v-%v", seen[i].Round(time.Millisecond), took[i].Round(time.Millisecond))
	}
	summary("sync-burst", "%d services present, --iptables-min-sync-period 1s: portal rule of X after %s, of Y (created right after X's was seen) after %s, of Z (right after Y's) after %s (from Create to the start-end of the first listing showing it); meanwhile uproxy ran %.0f iptables-restore (mean %v) and %.0f iptables-save reads",
		burstServices, ms(0), ms(1), ms(2), restores, restoreMean.Round(time.Millisecond), delta("uproxy_iptables_checks_total"))
	// The goal is 0.1 s; on this 2-core machine shared with the control
	// plane (and other tests) a sync sometimes takes longer, so the test
	// fails only past maxBurstDelay, still far below the min-sync wait that
	// the burst removes (Y took ~1 s with a burst of one).
	const goal, maxBurstDelay = 100 * time.Millisecond, 300 * time.Millisecond
	for i, name := range []string{"X", "Y"} {
		switch {
		case took[i] > maxBurstDelay:
			t.Errorf("service %s programmed after %v, want within %v (goal %v): a burst of two syncs", name, took[i], maxBurstDelay, goal)
		case took[i] > goal:
			t.Logf("service %s programmed after %v: over the %v goal (machine busy?)", name, took[i], goal)
		}
	}
	// Z needs a third token: the first comes back 1 s after X's sync
	// started, which was after X's Create.
	if zDone := starts[2].Add(took[2]); zDone.Sub(starts[0]) < time.Second {
		t.Errorf("service Z programmed %v after X's Create: a third sync within the min period should wait for it", zDone.Sub(starts[0]))
	}
}

// selectorless is a ClusterIP Service 80 → 8080 without a selector: no
// pods or endpoints needed for its portal rule.
func selectorless(name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
}

// createServices creates n selector-less Services svc-0… in ns with 16
// concurrent clients and deletes them the same way at cleanup (before the
// namespace cleanup, which deletes one at a time).
func createServices(t *testing.T, ctx context.Context, b *bed.Bed, ns string, n int) {
	t.Helper()
	each := func(ctx context.Context, f func(ctx context.Context, name string) error) error {
		var wg sync.WaitGroup
		errs := make(chan error, n)
		next := make(chan int)
		for range 16 {
			wg.Go(func() {
				for i := range next {
					if err := f(ctx, fmt.Sprintf("svc-%d", i)); err != nil {
						errs <- err
					}
				}
			})
		}
		for i := range n {
			next <- i
		}
		close(next)
		wg.Wait()
		close(errs)
		return <-errs
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := each(ctx, func(ctx context.Context, name string) error {
			return b.Client.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{})
		}); err != nil {
			t.Logf("delete services: %v", err)
		}
	})
	if err := each(ctx, func(ctx context.Context, name string) error {
		_, err := b.Client.CoreV1().Services(ns).Create(ctx, selectorless(name), metav1.CreateOptions{})
		return err
	}); err != nil {
		t.Fatalf("create services: %v", err)
	}
}
