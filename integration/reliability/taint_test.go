package reliability

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/uproxy/uproxy/integration/bed"
)

// autoscalerTaint is the taint the cluster autoscaler puts on a node it is
// about to delete.
const autoscalerTaint = "ToBeDeletedByClusterAutoscaler"

// TestAutoscalerTaintTurnsHealthzUnready (issue 15 item 5): as kube-proxy,
// /healthz answers 503 with "nodeEligible": false while the Node has the
// cluster autoscaler's ToBeDeletedByClusterAutoscaler taint, so load
// balancers probing it drain the node first; uproxy keeps proxying and
// /livez stays 200. Once the taint is removed /healthz is 200 again.
func TestAutoscalerTaintTurnsHealthzUnready(t *testing.T) {
	w := newWorld(t, "rel-taint", 3*time.Minute)
	e := w.deployEcho("echo", 1)
	w.b.StartUproxy(t, bed.UproxyOptions{})
	w.waitServed(e)

	setTaint := func(on bool) error {
		nodes := w.b.Client.CoreV1().Nodes()
		n, err := nodes.Get(context.Background(), bed.NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(x corev1.Taint) bool { return x.Key == autoscalerTaint })
		if on {
			// The autoscaler's value is the Unix time it tainted the node.
			n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: autoscalerTaint,
				Value: strconv.FormatInt(time.Now().Unix(), 10), Effect: corev1.TaintEffectNoSchedule})
		}
		_, err = nodes.Update(context.Background(), n, metav1.UpdateOptions{})
		return err
	}
	// waitHealthz polls /healthz until it answers code with want in its body.
	waitHealthz := func(code int, want string) (string, time.Duration) {
		t.Helper()
		start := time.Now()
		var body string
		ctx, cancel := context.WithTimeout(w.ctx, 15*time.Second)
		defer cancel()
		if err := bed.Poll(ctx, 50*time.Millisecond, func() (bool, error) {
			var got int
			var err error
			got, body, err = w.b.HTTPGet(ctx, "http://"+bed.HealthzAddr+"/healthz")
			return err == nil && got == code && strings.Contains(body, want), nil
		}); err != nil {
			t.Fatalf("/healthz never answered %d with %q: last %q", code, want, body)
		}
		return body, time.Since(start)
	}

	if err := setTaint(true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := setTaint(false); err != nil {
			t.Errorf("remove the taint: %v", err)
		}
	})
	body, after := waitHealthz(http.StatusServiceUnavailable, autoscalerTaint)
	if !strings.Contains(body, `"nodeEligible":false`) {
		t.Errorf("/healthz while tainted: %s; want nodeEligible false", body)
	}
	livez, _, err := w.b.HTTPGet(w.ctx, "http://"+bed.HealthzAddr+"/livez")
	if err != nil || livez != http.StatusOK {
		t.Errorf("/livez while tainted: %d, %v; want 200", livez, err)
	}
	loop := w.client.StartLoop(w.ctx, bed.LoopOptions{URL: e.url(), Workers: 2, Requests: 40})
	sum := loop.Wait()
	if sum.Failures > 0 || sum.Requests != 40 {
		t.Errorf("proxying while tainted: %v; want 40 requests, none failed", sum)
	}

	if err := setTaint(false); err != nil {
		t.Fatal(err)
	}
	_, back := waitHealthz(http.StatusOK, `"nodeEligible":true`)
	summary("autoscaler-taint", "/healthz 503 %v after the taint (%s), /livez %d, proxying meanwhile %v; 200 again %v after its removal",
		after.Round(time.Millisecond), strings.TrimSpace(body), livez, sum, back.Round(time.Millisecond))
}
