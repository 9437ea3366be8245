package watch

import (
	"context"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestTrackerNodeTaint: the Node handlers record the cluster autoscaler's
// ToBeDeletedByClusterAutoscaler taint as they record a deletion, and a
// change of it is a node change.
func TestTrackerNodeTaint(t *testing.T) {
	toBeDeleted := v1.Taint{Key: ToBeDeletedTaint, Value: "1764660000", Effect: v1.TaintEffectNoSchedule}
	other := v1.Taint{Key: "node.kubernetes.io/unschedulable", Effect: v1.TaintEffectNoSchedule}
	tests := map[string]struct {
		taints      []v1.Taint // on the update
		deleted     bool       // OnNodeDelete after the update
		toBeDeleted bool
		deleting    bool
		changed     bool // the update is a node change
	}{
		"no taint":              {changed: false},
		"another taint":         {taints: []v1.Taint{other}, changed: false},
		"autoscaler taint":      {taints: []v1.Taint{toBeDeleted}, toBeDeleted: true, changed: true},
		"among others":          {taints: []v1.Taint{other, toBeDeleted}, toBeDeleted: true, changed: true},
		"tainted, then deleted": {taints: []v1.Taint{toBeDeleted}, deleted: true, toBeDeleted: true, deleting: true, changed: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tr := NewTracker(Options{NodeName: "me"}, testLogger(t))
			n := node("me", "192.168.0.1")
			tr.OnNodeAdd(n)
			tr.checkout()
			u := n.DeepCopy()
			u.Spec.Taints = tc.taints
			tr.OnNodeUpdate(n, u)
			if got := tr.checkout().nodeChanged; got != tc.changed {
				t.Errorf("nodeChanged = %v, want %v", got, tc.changed)
			}
			if tc.deleted {
				tr.OnNodeDelete(u)
			}
			got := tr.Node()
			if got.ToBeDeleted != tc.toBeDeleted || got.Deleting != tc.deleting {
				t.Errorf("Node() = %+v, want ToBeDeleted %v Deleting %v", got, tc.toBeDeleted, tc.deleting)
			}
			// The taint removed (scale-down cancelled): eligible again.
			if !tc.deleted && tc.toBeDeleted {
				tr.OnNodeUpdate(u, n)
				if tr.Node().ToBeDeleted || !tr.checkout().nodeChanged {
					t.Errorf("taint removal not recorded: %+v", tr.Node())
				}
			}
		})
	}
}

// TestRunnerNodeTaint taints the Node in the fake API server while the loop
// runs: Runner.Node (what /healthz reads) reports it, then its removal.
func TestRunnerNodeTaint(t *testing.T) {
	n := node("me", "192.168.0.1")
	w := newWorld(t, Options{NodeName: "me"}, n)
	w.synced(t)
	if w.runner.Node().ToBeDeleted {
		t.Fatal("untainted node reported ToBeDeleted")
	}
	for _, tainted := range []bool{true, false} {
		u, err := w.client.CoreV1().Nodes().Get(context.Background(), "me", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		u.Spec.Taints = nil
		if tainted {
			u.Spec.Taints = []v1.Taint{{Key: ToBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}
		}
		if _, err := w.client.CoreV1().Nodes().Update(context.Background(), u, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(waitDeadline)
		for w.runner.Node().ToBeDeleted != tainted {
			if time.Now().After(deadline) {
				t.Fatalf("ToBeDeleted never became %v", tainted)
			}
			time.Sleep(time.Millisecond)
		}
		if h := w.runner.Health(); h.NodeDeleting {
			t.Fatalf("the taint reported as a deletion: %+v", h)
		}
	}
}
