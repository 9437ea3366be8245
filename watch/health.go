package watch

import "time"

// Health is the sync loop's state for /healthz (kube-proxy's healthz server
// answers 503 when QueuedSince is older than twice the sync period or the
// node is being deleted).
type Health struct {
	// Synced is true once the source's initial state has been applied in
	// full (first successful SyncPorts after the caches synced).
	Synced bool
	// LastUpdated is when the sink last applied a change (SyncPorts success
	// or UpdateEndpoints).
	LastUpdated time.Time
	// QueuedSince is when the oldest change not yet applied was recorded,
	// including a SyncPorts being retried and, before the first full sync,
	// the time Run started. Zero when nothing is queued.
	QueuedSince  time.Time
	NodeDeleting bool
	NodeName     string
	// UnreachableSince is when the source (the API server) stopped
	// answering its reachability probe; zero while it answers.
	// UnreachableErr is the probe's last error.
	UnreachableSince time.Time
	UnreachableErr   string
}

// Node returns what the tracker knows about this node, including the
// cluster autoscaler's taint (NodeInfo.ToBeDeleted) that Health does not
// carry. Safe for concurrent use.
func (r *Runner) Node() NodeInfo { return r.t.Node() }
