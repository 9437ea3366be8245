package watch

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
)

// Tracker records changes to Services, EndpointSlices and this node as
// Sources report them; the Runner applies them. Its handlers are safe for
// concurrent use, never block on the Runner and never modify the objects
// passed in (they come from informer caches).
//
// As Kubernetes pkg/proxy's change trackers, it keeps (previous, current)
// per Service and per EndpointSlice: a later update keeps the oldest
// previous, and a change that ends where it started (add then delete,
// update then update back) is dropped.
type Tracker struct {
	opts  Options
	log   zerolog.Logger
	clock clock.Clock

	// notify requests a sync; 1-buffered, sent to without blocking, so
	// repeated requests merge.
	notify chan struct{}
	// synced is closed once the source's initial state is recorded.
	synced   chan struct{}
	syncOnce sync.Once

	// mu guards services, slices, node and nodeChanged.
	mu          sync.Mutex
	services    map[types.NamespacedName]*serviceChange
	slices      map[types.NamespacedName]*sliceChange // by slice namespace/name
	node        NodeInfo
	nodeChanged bool

	serviceChanges  atomic.Uint64 // recorded Service events, for metrics
	endpointChanges atomic.Uint64 // recorded EndpointSlice events, for metrics
	lastQueued      atomic.Int64  // unix nanoseconds of the last recorded change
	// unreachableSince is unix nanoseconds of the first failed contact with
	// the source since the last successful one; 0 while it answers.
	unreachableSince atomic.Int64
	unreachableErr   atomic.Pointer[string] // the last contact error
}

// serviceChange is the accumulated change to one Service since the runner
// last applied: previous is what was applied, current what is wanted now.
type serviceChange struct {
	previous, current *serviceInfo
	since             time.Time // first event of this change
}

// sliceChange is the accumulated change to one EndpointSlice.
type sliceChange struct {
	previous, current *sliceInfo
	since             time.Time
}

// pending is what the runner checks out of the tracker in one go.
type pending struct {
	services    map[types.NamespacedName]*serviceChange
	slices      map[types.NamespacedName]*sliceChange
	node        NodeInfo
	nodeChanged bool
}

// NewTracker returns an empty tracker for opts.
func NewTracker(opts Options, log zerolog.Logger) *Tracker {
	return newTracker(opts, log, clock.RealClock{})
}

func newTracker(opts Options, log zerolog.Logger, clk clock.Clock) *Tracker {
	return &Tracker{
		opts:     opts.withDefaults(),
		log:      log.With().Str("component", "watch.tracker").Logger(),
		clock:    clk,
		notify:   make(chan struct{}, 1),
		synced:   make(chan struct{}),
		services: make(map[types.NamespacedName]*serviceChange),
		slices:   make(map[types.NamespacedName]*sliceChange),
		node:     NodeInfo{Name: opts.NodeName},
	}
}

// Node returns what is known about this node.
func (t *Tracker) Node() NodeInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.node
}

// SetReachable records the outcome of a contact with the source (an API
// server probe): err nil clears an outage, a first error starts one.
func (t *Tracker) SetReachable(err error) {
	if err == nil {
		if t.unreachableSince.Swap(0) != 0 {
			t.log.Info().Msg("source reachable again")
		}
		return
	}
	msg := err.Error()
	t.unreachableErr.Store(&msg)
	if t.unreachableSince.CompareAndSwap(0, t.clock.Now().UnixNano()) {
		t.log.Warn().Err(err).Msg("source unreachable; keeping the last known state")
	}
}

// Unreachable returns when the current outage of the source began (zero
// when it answers) and its last error.
func (t *Tracker) Unreachable() (time.Time, string) {
	ns := t.unreachableSince.Load()
	if ns == 0 {
		return time.Time{}, ""
	}
	msg := ""
	if m := t.unreachableErr.Load(); m != nil {
		msg = *m
	}
	return time.Unix(0, ns), msg
}

// SetSynced tells the tracker that the source has reported its complete
// initial state; the runner's first full sync waits for it. Safe to call
// more than once.
func (t *Tracker) SetSynced() {
	t.syncOnce.Do(func() { close(t.synced) })
	t.requestSync()
}

func (t *Tracker) requestSync() {
	select {
	case t.notify <- struct{}{}:
	default:
	}
}

// OnServiceAdd records a new Service.
func (t *Tracker) OnServiceAdd(s *v1.Service) { t.updateService(nil, s) }

// OnServiceUpdate records a changed Service.
func (t *Tracker) OnServiceUpdate(old, cur *v1.Service) { t.updateService(old, cur) }

// OnServiceDelete records a deleted Service.
func (t *Tracker) OnServiceDelete(s *v1.Service) { t.updateService(s, nil) }

func (t *Tracker) updateService(prev, cur *v1.Service) {
	obj := cur
	if obj == nil {
		obj = prev
	}
	if obj == nil || unchangedResync(prev, cur) {
		return
	}
	nn := types.NamespacedName{Namespace: obj.Namespace, Name: obj.Name}
	now := t.clock.Now()
	// Convert outside the lock; previous quietly (its warnings were logged
	// when it was current).
	curInfo := convertService(cur, t.opts.ServiceProxyName, t.log)
	t.serviceChanges.Add(1)

	t.mu.Lock()
	defer t.mu.Unlock()
	ch, ok := t.services[nn]
	if !ok {
		ch = &serviceChange{previous: convertService(prev, t.opts.ServiceProxyName, zerolog.Nop()), since: now}
		t.services[nn] = ch
	}
	ch.current = curInfo
	if ch.previous.equal(ch.current) {
		delete(t.services, nn)
		return
	}
	t.lastQueued.Store(now.UnixNano())
	t.requestSync()
}

// OnEndpointSliceAdd records a new EndpointSlice.
func (t *Tracker) OnEndpointSliceAdd(es *discovery.EndpointSlice) { t.updateSlice(nil, es) }

// OnEndpointSliceUpdate records a changed EndpointSlice.
func (t *Tracker) OnEndpointSliceUpdate(old, cur *discovery.EndpointSlice) { t.updateSlice(old, cur) }

// OnEndpointSliceDelete records a deleted EndpointSlice.
func (t *Tracker) OnEndpointSliceDelete(es *discovery.EndpointSlice) { t.updateSlice(es, nil) }

func (t *Tracker) updateSlice(prev, cur *discovery.EndpointSlice) {
	obj := cur
	if obj == nil {
		obj = prev
	}
	if obj == nil || unchangedResync(prev, cur) {
		return
	}
	key := types.NamespacedName{Namespace: obj.Namespace, Name: obj.Name}
	now := t.clock.Now()
	curInfo := convertSlice(cur, t.opts.ServiceProxyName, t.log)
	t.endpointChanges.Add(1)

	t.mu.Lock()
	defer t.mu.Unlock()
	ch, ok := t.slices[key]
	if !ok {
		ch = &sliceChange{previous: convertSlice(prev, t.opts.ServiceProxyName, zerolog.Nop()), since: now}
		t.slices[key] = ch
	}
	ch.current = curInfo
	if ch.previous.equal(ch.current) {
		delete(t.slices, key)
		return
	}
	t.lastQueued.Store(now.UnixNano())
	t.requestSync()
}

// unchangedResync reports an informer resync: the same object version
// delivered again as an update.
func unchangedResync[T interface{ GetResourceVersion() string }](prev, cur T) bool {
	var zero T
	if any(prev) == any(zero) || any(cur) == any(zero) {
		return false
	}
	rv := cur.GetResourceVersion()
	return rv != "" && rv == prev.GetResourceVersion()
}

// OnNodeAdd records this node; Nodes with another name are ignored.
func (t *Tracker) OnNodeAdd(n *v1.Node) { t.updateNode(n, false) }

// OnNodeUpdate records a change to this node.
func (t *Tracker) OnNodeUpdate(_, cur *v1.Node) { t.updateNode(cur, false) }

// OnNodeDelete records that this node is gone (reported as Deleting).
func (t *Tracker) OnNodeDelete(n *v1.Node) { t.updateNode(n, true) }

// ToBeDeletedTaint is the taint the cluster autoscaler puts on a Node it is
// about to remove; kube-proxy's /healthz then reports nodeEligible false
// (pkg/proxy/healthcheck ToBeDeletedTaint).
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

func hasToBeDeletedTaint(n *v1.Node) bool {
	for _, taint := range n.Spec.Taints {
		if taint.Key == ToBeDeletedTaint {
			return true
		}
	}
	return false
}

func (t *Tracker) updateNode(n *v1.Node, deleted bool) {
	if n == nil || n.Name != t.opts.NodeName {
		return
	}
	ni := nodeInfo(n)
	ni.ToBeDeleted = hasToBeDeletedTaint(n)
	t.mu.Lock()
	defer t.mu.Unlock()
	if deleted {
		ni = t.node
		ni.Deleting = true
	}
	if ni.equal(t.node) {
		return
	}
	t.node = ni
	t.nodeChanged = true
	t.lastQueued.Store(t.clock.Now().UnixNano())
	t.requestSync()
}

// checkout hands the recorded changes to the runner and starts afresh.
func (t *Tracker) checkout() pending {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := pending{services: t.services, slices: t.slices, node: t.node, nodeChanged: t.nodeChanged}
	t.services = make(map[types.NamespacedName]*serviceChange)
	t.slices = make(map[types.NamespacedName]*sliceChange)
	t.nodeChanged = false
	return p
}

// oldestPending returns the first event time of the changes not yet
// checked out, or zero.
func (t *Tracker) oldestPending() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	var oldest time.Time
	for _, c := range t.services {
		oldest = earliest(oldest, c.since)
	}
	for _, c := range t.slices {
		oldest = earliest(oldest, c.since)
	}
	return oldest
}

// earliest returns the earlier of a and b, treating zero as unset.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}
