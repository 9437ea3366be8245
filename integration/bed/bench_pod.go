package bed

import (
	"fmt"
	"path/filepath"
)

// PodNetns returns the network namespace of a running pod, so a benchmark
// can start a second server (dnsmasq) beside the pod's echoserver. The
// namespace belongs to the agent: callers start processes in it and stop
// them before the pod goes away, and never delete it.
func (b *Bed) PodNetns(namespace, name string) (*Netns, error) {
	w, err := b.Agent.worker(namespace, name)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ns == nil {
		return nil, fmt.Errorf("pod %s/%s has no namespace yet", namespace, name)
	}
	return w.ns, nil
}

// LogPath returns a path for a log file in the bed directory (kept when a
// test fails).
func (b *Bed) LogPath(name string) string { return filepath.Join(b.Dir, name) }
