package main

import (
	"fmt"
	"io"
	"sync/atomic"

	"github.com/uproxy/uproxy/proxy"
	"github.com/uproxy/uproxy/watch"
)

// lateBound gives the HTTP servers, which start first, the sync loop and the
// proxier once they exist. Before that, /healthz reports "not synced" and
// /debug/services says it is starting.
type lateBound struct {
	runner  atomic.Pointer[watch.Runner]
	proxier atomic.Pointer[proxy.Proxier]
}

var _ serviceTable = (*lateBound)(nil)

func (l *lateBound) set(r *watch.Runner, p *proxy.Proxier) {
	l.proxier.Store(p)
	l.runner.Store(r)
}

// syncState adapts watch.Runner.Health for the health server.
func (l *lateBound) syncState() syncState {
	r := l.runner.Load()
	if r == nil {
		return syncState{}
	}
	h := r.Health()
	return syncState{
		Synced:       h.Synced,
		LastUpdated:  h.LastUpdated,
		QueuedSince:  h.QueuedSince,
		NodeDeleting: h.NodeDeleting,
		NodeTainted:  r.Node().ToBeDeleted,
		NodeName:     h.NodeName,

		UnreachableSince: h.UnreachableSince,
		UnreachableErr:   h.UnreachableErr,
	}
}

func (l *lateBound) Describe(w io.Writer) {
	if p := l.proxier.Load(); p != nil {
		p.Describe(w)
		return
	}
	fmt.Fprintln(w, "uproxy is starting: no service ports yet")
}

func (l *lateBound) SnapshotJSON() any {
	if p := l.proxier.Load(); p != nil {
		return p.Snapshot()
	}
	return []struct{}{}
}
