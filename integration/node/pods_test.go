package node

import (
	"testing"
	"time"

	"github.com/uproxy/uproxy/integration/bed"
)

// TestKubeletNodeRunsPods: the node runs real pods (kubelet, containerd,
// CNI, images imported by the bed), scheduled by kube-scheduler, and a client
// pod reaches a pod's address with the real curl.
func TestKubeletNodeRunsPods(t *testing.T) {
	w := newWorld(t, "pods", 5*time.Minute)
	w.apply(seedApp(w.ns, "proddetail", bed.EchoImage, 2))
	w.waitRollout(w.ns, "deployment/proddetail", 2*time.Minute)
	say("%s", w.kubectl("get", "pods", "-o", "wide", "-A"))
	c := w.clientPod("client")
	pods, _ := w.b.WaitPodsReady(w.ctx, w.ns, "app=proddetail", 2)
	r := c.Curl(w.ctx, "http://"+pods[0].Status.PodIP+":3000/catalogdetail", 2*time.Second)
	summary("kubelet-node", "pod %s answered %q in %v", pods[0].Name, r.Out, r.Dur.Round(time.Millisecond))
	if _, ok := bed.ParseHello(r.Out); !r.OK() || !ok {
		t.Fatalf("curl pod: %s", r)
	}
}
