package bed

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// Agent plays scheduler and kubelet for the bed's single node. Informer
// handlers only hand the pod to its worker (one goroutine per pod UID, which
// owns that pod's namespace and process); workers read the latest pod from
// the lister and act.
type Agent struct {
	b      *Bed
	client kubernetes.Interface
	pods   listersv1.PodLister
	ips    *ipPool
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu sync.Mutex // mu guards workers, byName and preStop
	// workers holds the live worker of each pod UID.
	workers map[types.UID]*podWorker
	// byName maps "ns/name" to the newest worker (for fault injection).
	byName  map[string]*podWorker
	preStop time.Duration
}

func startAgent(parent context.Context, b *Bed) (*Agent, error) {
	ctx, cancel := context.WithCancel(parent)
	a := &Agent{
		b: b, client: b.Client, ips: newIPPool(2, 199), ctx: ctx, cancel: cancel,
		workers: map[types.UID]*podWorker{}, byName: map[string]*podWorker{},
	}
	f := informers.NewSharedInformerFactory(b.Client, 0)
	inf := f.Core().V1().Pods()
	a.pods = inf.Lister()
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { a.record(o) },
		UpdateFunc: func(_, o any) { a.record(o) },
		DeleteFunc: func(o any) {
			if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = t.Obj
			}
			a.record(o)
		},
	}); err != nil {
		cancel()
		return nil, err
	}
	f.Start(ctx.Done())
	for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			cancel()
			return nil, fmt.Errorf("agent: %v cache did not sync", typ)
		}
	}
	return a, nil
}

// SetPreStopDelay makes the agent wait d after a pod's deletion before it
// SIGTERMs the server (a preStop sleep). Zero (the default) signals at once.
func (a *Agent) SetPreStopDelay(d time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.preStop = d
}

func (a *Agent) preStopDelay() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.preStop
}

// record is the informer handler: it only wakes the pod's worker.
func (a *Agent) record(o any) {
	pod, ok := o.(*corev1.Pod)
	if !ok {
		return
	}
	if pod.Spec.NodeName != "" && pod.Spec.NodeName != NodeName {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ctx.Err() != nil {
		return
	}
	w := a.workers[pod.UID]
	if w == nil {
		if pod.DeletionTimestamp != nil && pod.Spec.NodeName == "" {
			// Never scheduled: nothing runs, finish the deletion.
			go a.forceDelete(pod)
			return
		}
		w = newPodWorker(a, pod)
		a.workers[pod.UID] = w
		a.byName[pod.Namespace+"/"+pod.Name] = w
		a.wg.Add(1)
		go w.run()
	}
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (a *Agent) forget(w *podWorker) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.workers, w.uid)
	if a.byName[w.key] == w {
		delete(a.byName, w.key)
	}
}

func (a *Agent) worker(namespace, name string) (*podWorker, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	w := a.byName[namespace+"/"+name]
	if w == nil {
		return nil, fmt.Errorf("agent: no running pod %s/%s", namespace, name)
	}
	return w, nil
}

// stop ends every worker (killing their servers and namespaces) and waits.
func (a *Agent) stop() {
	a.mu.Lock()
	a.cancel()
	a.mu.Unlock()
	a.wg.Wait()
}

// PodLog returns the last lines of a running pod's server log.
func (a *Agent) PodLog(namespace, name string, n int) string {
	w, err := a.worker(namespace, name)
	if err != nil {
		return err.Error()
	}
	return tailFile(w.logPath, n)
}

// ipPool hands out the last octet of 10.244.0.x next-fit (like host-local
// IPAM), so a freed address is not reused at once. mu guards used and next.
type ipPool struct {
	mu     sync.Mutex
	lo, hi int
	next   int
	used   map[int]bool
}

func newIPPool(lo, hi int) *ipPool {
	return &ipPool{lo: lo, hi: hi, next: lo, used: map[int]bool{}}
}

func (p *ipPool) take() (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := 0; i <= p.hi-p.lo; i++ {
		o := p.lo + (p.next-p.lo+i)%(p.hi-p.lo+1)
		if !p.used[o] {
			p.used[o] = true
			p.next = o + 1
			if p.next > p.hi {
				p.next = p.lo
			}
			return o, nil
		}
	}
	return 0, fmt.Errorf("no free address in 10.244.0.%d-%d", p.lo, p.hi)
}

func (p *ipPool) release(o int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.used, o)
}
