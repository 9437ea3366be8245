package watch

import (
	"cmp"
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/uproxy/uproxy/svc"
)

// Runner is the one loop that applies the Tracker's changes to a svc.Sink:
// endpoint changes at once through UpdateEndpoints, port changes through
// SyncPorts rate-limited as kube-proxy's BoundedFrequencyRunner does (a
// token bucket of syncBurst tokens refilled one per MinSyncPeriod: two
// back-to-back changes apply at once, a third waits), a full SyncPorts at
// least every SyncPeriod, and a failed SyncPorts retried with exponential
// backoff (from max(MinSyncPeriod, 1s), capped at SyncPeriod). Endpoints are
// always handed to the sink before the SyncPorts that adds their port.
type Runner struct {
	t     *Tracker
	sink  svc.Sink
	opts  Options
	log   zerolog.Logger
	clock clock.Clock
	m     *metrics

	// The fields below are owned by the Run goroutine.
	services    map[types.NamespacedName]*serviceInfo
	slices      map[types.NamespacedName]*sliceInfo             // by slice namespace/name
	slicesBySvc map[types.NamespacedName][]types.NamespacedName // slice keys sorted by name
	ports       map[types.NamespacedName][]svc.Port             // filtered to fams
	sent        map[types.NamespacedName]map[svc.PortName][]svc.Endpoint
	fams        families
	zone        string                             // the Node's zone label, for topology hints
	portList    []svc.Port                         // sorted full list; nil after a port change
	dirty       map[types.NamespacedName]time.Time // ports changed since the last good SyncPorts
	lastSyncEnd time.Time
	syncFullAt  time.Time // the rate limit's bucket is full from then on (syncAllowedAt)
	failures    int
	retryAt     time.Time

	// Checkpoint state, owned by the Run goroutine (checkpoint_runner.go).
	ck             *checkpointWriter // nil: no checkpoint is written
	initial        *Checkpoint       // served until the source syncs (StartFrom)
	fromCheckpoint bool              // the sink holds the checkpoint's state; the first pass replaces it
	ckPorts        []svc.Port        // ports of the last SyncPorts, for the next snapshot
	ckDirty        bool              // the sink's state changed since the last snapshot
	ckLast         time.Time         // when the last snapshot was handed to ck

	// mu guards health.
	mu     sync.Mutex
	health Health
}

// NewRunner returns a runner applying t's changes to sink. opts should be
// the tracker's.
func NewRunner(t *Tracker, sink svc.Sink, opts Options, log zerolog.Logger) *Runner {
	m := newMetrics(t)
	var ck *checkpointWriter
	if opts.CheckpointPath != "" {
		ck = newCheckpointWriter(opts.CheckpointPath, m, log)
	}
	return &Runner{
		t:           t,
		sink:        sink,
		opts:        opts.withDefaults(),
		log:         log.With().Str("component", "watch.runner").Logger(),
		clock:       t.clock,
		m:           m,
		ck:          ck,
		services:    make(map[types.NamespacedName]*serviceInfo),
		slices:      make(map[types.NamespacedName]*sliceInfo),
		slicesBySvc: make(map[types.NamespacedName][]types.NamespacedName),
		ports:       make(map[types.NamespacedName][]svc.Port),
		sent:        make(map[types.NamespacedName]map[svc.PortName][]svc.Endpoint),
		dirty:       make(map[types.NamespacedName]time.Time),
	}
}

// Collectors returns the runner's Prometheus collectors, for the caller to
// register.
func (r *Runner) Collectors() []prometheus.Collector { return r.m.collectors() }

// Health returns the loop's state for /healthz. Safe for concurrent use.
func (r *Runner) Health() Health {
	r.mu.Lock()
	h := r.health
	r.mu.Unlock()
	h.QueuedSince = earliest(h.QueuedSince, r.t.oldestPending())
	n := r.t.Node()
	h.NodeName, h.NodeDeleting = n.Name, n.Deleting
	h.UnreachableSince, h.UnreachableErr = r.t.Unreachable()
	return h
}

// Run waits for the source's initial state (serving the StartFrom
// checkpoint meanwhile), applies it in full, then applies changes until ctx
// is cancelled. It returns nil on cancellation. Call it once.
func (r *Runner) Run(ctx context.Context) error {
	r.updateHealth(func(h *Health) { h.QueuedSince = r.clock.Now() })
	if r.ck != nil {
		go r.ck.run()
		defer func() {
			if r.ckDirty { // the last change, not yet written
				r.ck.offer(r.snapshot(r.clock.Now()))
			}
			close(r.ck.stop)
			<-r.ck.done
		}()
	}
	if r.initial != nil {
		r.serveCheckpoint(ctx, r.initial)
		r.initial = nil
	}
	select {
	case <-ctx.Done():
		return nil
	case <-r.t.synced:
	}
	r.start(ctx)

	timer := r.clock.NewTimer(r.nextDelay(r.clock.Now()))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.t.notify:
		case <-timer.C():
		}
		r.pass(ctx, false)
		timer.Stop()
		timer.Reset(r.nextDelay(r.clock.Now()))
	}
}

// start applies the initial state in full.
func (r *Runner) start(ctx context.Context) {
	r.fams = effectiveFamilies(r.opts.Families, r.t.Node())
	r.zone = r.t.Node().Zone
	r.log.Info().Stringer("families", r.fams).Str("node", r.opts.NodeName).Msg("initial state received, first full sync")
	r.pass(ctx, true)
	r.dropCheckpoint()
}

// pass applies what the tracker recorded and runs SyncPorts when due (or
// when force is set).
func (r *Runner) pass(ctx context.Context, force bool) {
	start := r.clock.Now()
	did := r.apply(r.t.checkout())
	if force || r.syncDue(r.clock.Now()) {
		r.syncPorts(ctx)
		did = true
	}
	if did {
		r.m.syncDuration.Observe(r.clock.Since(start).Seconds())
	}
	r.maybeCheckpoint(r.clock.Now())
}

// apply merges changes into the runner's state and hands changed endpoint
// sets to the sink. It reports whether it called the sink.
func (r *Runner) apply(p pending) bool {
	affected := make(map[types.NamespacedName]time.Time, len(p.services)+len(p.slices))
	mark := func(nn types.NamespacedName, since time.Time) {
		if old, ok := affected[nn]; ok {
			since = earliest(old, since)
		}
		affected[nn] = since
	}
	if p.nodeChanged {
		r.ckDirty = true // the node IPs are in the checkpoint
		f := effectiveFamilies(r.opts.Families, p.node)
		if f != r.fams || p.node.Zone != r.zone {
			r.log.Info().Stringer("families", f).Stringer("was", r.fams).Str("zone", p.node.Zone).Str("zone_was", r.zone).
				Msg("node IP families or zone changed, recomputing all services")
			r.fams, r.zone = f, p.node.Zone
			now := r.clock.Now()
			for nn := range r.services {
				mark(nn, now)
			}
		}
	}
	for nn, ch := range p.services {
		if ch.current == nil {
			delete(r.services, nn)
		} else {
			r.services[nn] = ch.current
		}
		mark(nn, ch.since)
	}
	for key, ch := range p.slices {
		if old := r.slices[key]; old != nil {
			r.unindexSlice(old.service, key)
			mark(old.service, ch.since)
		}
		if ch.current == nil {
			delete(r.slices, key)
			continue
		}
		r.slices[key] = ch.current
		r.indexSlice(ch.current.service, key)
		mark(ch.current.service, ch.since)
	}

	updates := make(map[svc.PortName][]svc.Endpoint)
	var epSince []time.Time
	for nn, since := range affected {
		ports := splitTraffic(r.services[nn].forFamilies(r.fams))
		portsChanged := !slices.EqualFunc(r.ports[nn], ports, svc.Port.Equal)
		if portsChanged {
			if len(ports) == 0 {
				delete(r.ports, nn)
			} else {
				r.ports[nn] = ports
			}
			r.portList = nil
			if old, ok := r.dirty[nn]; ok {
				since = earliest(old, since)
			}
			r.dirty[nn] = since
		}
		eps := endpointsFor(ports, r.sortedSlices(nn), r.fams, trafficEnv{node: r.opts.NodeName, zone: r.zone})
		if diffEndpoints(r.sent[nn], eps, updates) && !portsChanged {
			epSince = append(epSince, since)
		}
		if len(eps) == 0 {
			delete(r.sent, nn)
		} else {
			r.sent[nn] = eps
		}
	}
	if len(r.dirty) > 0 {
		var oldest time.Time
		for _, s := range r.dirty {
			oldest = earliest(oldest, s)
		}
		r.updateHealth(func(h *Health) { h.QueuedSince = earliest(h.QueuedSince, oldest) })
	}
	if len(updates) == 0 {
		return false
	}
	r.ckDirty = true
	r.sink.UpdateEndpoints(updates)
	now := r.clock.Now()
	for _, s := range epSince {
		r.m.programming.Observe(now.Sub(s).Seconds())
	}
	r.updateHealth(func(h *Health) { h.LastUpdated = now })
	return true
}

// diffEndpoints adds to out the ports whose endpoints differ between sent
// and cur (nil for ports that lost all endpoints) and reports whether any did.
func diffEndpoints(sent, cur map[svc.PortName][]svc.Endpoint, out map[svc.PortName][]svc.Endpoint) bool {
	changed := false
	for pn, eps := range cur {
		if !slices.Equal(sent[pn], eps) {
			out[pn] = eps
			changed = true
		}
	}
	for pn := range sent {
		if _, ok := cur[pn]; !ok {
			out[pn] = nil
			changed = true
		}
	}
	return changed
}

func compareSliceKeys(a, b types.NamespacedName) int { return cmp.Compare(a.Name, b.Name) }

// indexSlice adds slice key to service nn's sorted slice list.
func (r *Runner) indexSlice(nn, key types.NamespacedName) {
	keys := r.slicesBySvc[nn]
	if i, found := slices.BinarySearchFunc(keys, key, compareSliceKeys); !found {
		r.slicesBySvc[nn] = slices.Insert(keys, i, key)
	}
}

// unindexSlice removes slice key from service nn's slice list.
func (r *Runner) unindexSlice(nn, key types.NamespacedName) {
	keys := r.slicesBySvc[nn]
	if i, found := slices.BinarySearchFunc(keys, key, compareSliceKeys); found {
		keys = slices.Delete(keys, i, i+1)
	}
	if len(keys) == 0 {
		delete(r.slicesBySvc, nn)
	} else {
		r.slicesBySvc[nn] = keys
	}
}

// sortedSlices returns the slices of service nn, sorted by slice name.
func (r *Runner) sortedSlices(nn types.NamespacedName) []*sliceInfo {
	keys := r.slicesBySvc[nn]
	if len(keys) == 0 {
		return nil
	}
	out := make([]*sliceInfo, len(keys))
	for i, k := range keys {
		out[i] = r.slices[k]
	}
	return out
}

// syncBurst is how many SyncPorts may run back to back before
// MinSyncPeriod applies: kube-proxy's burstSyncs (pkg/proxy/iptables), so a
// change right after another is applied at once and only sustained churn
// waits.
const syncBurst = 2

// syncAllowedAt is when the rate limit next has a token: a bucket of
// syncBurst tokens refilled one per MinSyncPeriod, kept as the time it is
// full again (the "theoretical arrival time" of GCRA), which needs no
// fractional tokens.
func (r *Runner) syncAllowedAt() time.Time {
	return r.syncFullAt.Add(-(syncBurst - 1) * r.opts.MinSyncPeriod)
}

// takeSyncToken spends a token for a SyncPorts starting at now.
func (r *Runner) takeSyncToken(now time.Time) {
	if r.syncFullAt.Before(now) {
		r.syncFullAt = now
	}
	r.syncFullAt = r.syncFullAt.Add(r.opts.MinSyncPeriod)
}

// syncDue reports whether SyncPorts should run now.
func (r *Runner) syncDue(now time.Time) bool {
	if r.failures > 0 {
		return !now.Before(r.retryAt)
	}
	return (len(r.dirty) > 0 && !now.Before(r.syncAllowedAt())) || now.Sub(r.lastSyncEnd) >= r.opts.SyncPeriod
}

// nextDelay is how long the loop may sleep before SyncPorts is due.
func (r *Runner) nextDelay(now time.Time) time.Duration {
	at := r.lastSyncEnd.Add(r.opts.SyncPeriod)
	switch {
	case r.failures > 0:
		at = r.retryAt
	case len(r.dirty) > 0:
		if allowed := r.syncAllowedAt(); allowed.Before(at) {
			at = allowed
		}
	}
	if due := r.checkpointDue(); !due.IsZero() && due.Before(at) {
		at = due
	}
	return max(at.Sub(now), 0)
}

// backoff is the delay before retry number failures (1-based).
func (r *Runner) backoff() time.Duration {
	d := max(r.opts.MinSyncPeriod, time.Second)
	for i := 1; i < r.failures && d < r.opts.SyncPeriod; i++ {
		d *= 2
	}
	return min(d, r.opts.SyncPeriod)
}

// syncPorts hands the full port list to the sink.
func (r *Runner) syncPorts(ctx context.Context) {
	if r.portList == nil {
		r.portList = r.buildPortList()
		r.ckPorts, r.ckDirty = r.portList, true
	}
	start := r.clock.Now()
	r.takeSyncToken(start)
	err := r.sink.SyncPorts(ctx, r.portList)
	end := r.clock.Now()
	r.lastSyncEnd = end
	r.m.syncFullDuration.Observe(end.Sub(start).Seconds())
	if err != nil {
		if ctx.Err() != nil {
			return // shutting down; not a failure
		}
		r.failures++
		r.retryAt = end.Add(r.backoff())
		r.m.syncErrors.Inc()
		r.log.Error().Err(err).Int("failures", r.failures).Time("retry_at", r.retryAt).Msg("sync of service ports failed")
		r.updateHealth(func(h *Health) { h.QueuedSince = earliest(h.QueuedSince, start) })
		return
	}
	if r.failures > 0 {
		r.log.Info().Int("failures", r.failures).Msg("sync of service ports recovered")
	}
	r.failures = 0
	for _, since := range r.dirty {
		r.m.programming.Observe(end.Sub(since).Seconds())
	}
	clear(r.dirty)
	r.m.lastSync.Set(float64(end.UnixNano()) / float64(time.Second))
	r.updateHealth(func(h *Health) {
		h.Synced = true
		h.LastUpdated = end
		h.QueuedSince = time.Time{}
	})
	r.log.Debug().Int("ports", len(r.portList)).Dur("took", end.Sub(start)).Msg("service ports synced")
}

// buildPortList returns every port, sorted by service then spec order. The
// result is never modified afterwards (the sink may keep it).
func (r *Runner) buildPortList() []svc.Port {
	names := slices.SortedFunc(maps.Keys(r.ports), func(a, b types.NamespacedName) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	n := 0
	for _, nn := range names {
		n += len(r.ports[nn])
	}
	out := make([]svc.Port, 0, n)
	for _, nn := range names {
		out = append(out, r.ports[nn]...)
	}
	return out
}

func (r *Runner) updateHealth(f func(*Health)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(&r.health)
}
