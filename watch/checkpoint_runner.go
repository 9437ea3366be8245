package watch

import (
	"context"
	"time"

	"github.com/rs/zerolog"
	"k8s.io/apimachinery/pkg/types"

	"github.com/uproxy/uproxy/svc"
)

// The Runner's side of the checkpoint: before the source has synced it
// serves a loaded checkpoint (StartFrom); once it has, it hands a snapshot
// of what it applied to the checkpointWriter after every change, at most
// every checkpointInterval. The writer does the file I/O on its own
// goroutine, so a slow disk never delays an endpoint update.

// StartFrom makes Run serve c until the source has synced: its endpoints
// and ports go to the sink at once. The source's first complete state then
// replaces it entirely (ports and endpoint sets it does not have are
// removed). Call it before Run; nil is ignored.
func (r *Runner) StartFrom(c *Checkpoint) { r.initial = c }

// serveCheckpoint hands the checkpoint to the sink, endpoints first (as
// apply does), and records them as sent so that the first full pass
// replaces them.
func (r *Runner) serveCheckpoint(ctx context.Context, c *Checkpoint) {
	r.fromCheckpoint = true
	r.m.checkpointServing.Set(1)
	eps := c.endpoints()
	if len(eps) > 0 {
		r.sink.UpdateEndpoints(eps)
	}
	err := r.sink.SyncPorts(ctx, c.portList())
	for pn, l := range eps {
		nn := types.NamespacedName{Namespace: pn.Namespace, Name: pn.Name}
		if r.sent[nn] == nil {
			r.sent[nn] = make(map[svc.PortName][]svc.Endpoint)
		}
		r.sent[nn][pn] = l
	}
	ev := r.log.Info()
	if err != nil {
		ev = r.log.Warn().Err(err)
	}
	ev.Int("ports", len(c.Ports)).Int("with_endpoints", len(eps)).Time("written", c.Written).
		Dur("age", r.clock.Since(c.Written).Round(time.Millisecond)).
		Msg("serving the checkpoint until the API server's state arrives")
}

// dropCheckpoint, after the first full pass, removes the endpoint sets the
// checkpoint gave the sink for Services the source does not have (the
// others were replaced by apply, which diffed against them). The snapshot
// that pass offered already leaves them out: it pairs endpoint sets with
// the source's ports.
func (r *Runner) dropCheckpoint() {
	if !r.fromCheckpoint {
		return
	}
	r.fromCheckpoint = false
	r.m.checkpointServing.Set(0)
	updates := make(map[svc.PortName][]svc.Endpoint)
	for nn, m := range r.sent {
		if _, ok := r.services[nn]; ok {
			continue
		}
		for pn := range m {
			updates[pn] = nil
		}
		delete(r.sent, nn)
	}
	if len(updates) > 0 {
		r.sink.UpdateEndpoints(updates)
	}
	r.log.Info().Int("dropped_ports", len(updates)).Msg("the API server's state replaced the checkpoint")
}

// checkpointDue returns when the next snapshot is due, or zero when none
// is (checkpoint off or nothing changed).
func (r *Runner) checkpointDue() time.Time {
	if r.ck == nil || !r.ckDirty {
		return time.Time{}
	}
	return r.ckLast.Add(checkpointInterval)
}

// maybeCheckpoint hands a snapshot to the writer when one is due.
func (r *Runner) maybeCheckpoint(now time.Time) {
	if due := r.checkpointDue(); due.IsZero() || now.Before(due) {
		return
	}
	r.ck.offer(r.snapshot(now))
	r.ckLast, r.ckDirty = now, false
}

// snapshot builds an immutable Checkpoint of what the sink was last given:
// the ports of the last SyncPorts and the endpoint sets sent. The slices
// are shared: the runner never modifies a list once built.
func (r *Runner) snapshot(now time.Time) *Checkpoint {
	eps := make(map[svc.PortName][]svc.Endpoint, len(r.ckPorts))
	for _, m := range r.sent {
		for pn, l := range m {
			eps[pn] = l
		}
	}
	c := &Checkpoint{Node: r.opts.NodeName, ServiceProxyName: r.opts.ServiceProxyName, Written: now,
		NodeIPs: r.t.Node().Addresses, Ports: make([]CheckpointPort, len(r.ckPorts))}
	for i, p := range r.ckPorts {
		c.Ports[i] = CheckpointPort{Port: p, Endpoints: eps[p.Name]}
	}
	return c
}

// checkpointWriter writes the snapshots the runner offers, on its own
// goroutine. Only the latest offered snapshot is kept.
type checkpointWriter struct {
	path string
	log  zerolog.Logger
	m    *metrics
	next chan *Checkpoint // 1-buffered; the runner replaces what is pending
	stop chan struct{}    // closed by the runner: write what is pending, return
	done chan struct{}    // closed when run returns

	failing bool // owned by run: the last write failed (warn once per streak)
}

func newCheckpointWriter(path string, m *metrics, log zerolog.Logger) *checkpointWriter {
	return &checkpointWriter{
		path: path,
		log:  log.With().Str("component", "watch.checkpoint").Str("path", path).Logger(),
		m:    m,
		next: make(chan *Checkpoint, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
}

// offer replaces the pending snapshot with c without blocking. Only the
// runner calls it, so after taking out a stale one the send succeeds.
func (w *checkpointWriter) offer(c *Checkpoint) {
	for {
		select {
		case w.next <- c:
			return
		default:
		}
		select {
		case <-w.next:
		default:
		}
	}
}

// run writes offered snapshots until stop is closed, then writes the one
// still pending (the runner's last) and returns.
func (w *checkpointWriter) run() {
	defer close(w.done)
	for {
		select {
		case c := <-w.next:
			w.write(c)
		case <-w.stop:
			select {
			case c := <-w.next:
				w.write(c)
			default:
			}
			return
		}
	}
}

func (w *checkpointWriter) write(c *Checkpoint) {
	start := time.Now()
	b, err := encodeCheckpoint(c)
	if err == nil {
		err = writeFileAtomic(w.path, b)
	}
	if err != nil {
		w.m.checkpointWrites.WithLabelValues("error").Inc()
		ev := w.log.Debug()
		if !w.failing {
			ev = w.log.Warn()
		}
		w.failing = true
		ev.Err(err).Msg("cannot write the state checkpoint; a restart while the API server is unreachable will serve nothing until it returns")
		return
	}
	w.m.checkpointWrites.WithLabelValues("ok").Inc()
	if w.failing {
		w.log.Info().Msg("state checkpoint written again")
	}
	w.failing = false
	w.log.Debug().Int("ports", len(c.Ports)).Int("bytes", len(b)).Dur("took", time.Since(start)).Msg("state checkpoint written")
}
