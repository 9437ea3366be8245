package watch

import "context"

// Source feeds desired state into a Tracker until ctx is done: KubeSource
// (the API server) or FileSource (manifest files).
type Source interface {
	// Run records the source's objects in t, calls t.SetSynced once its
	// initial state is recorded, keeps recording changes, and returns when
	// ctx is done (nil) or when it cannot start (an error).
	Run(ctx context.Context, t *Tracker) error
}

var (
	_ Source = (*KubeSource)(nil)
	_ Source = (*FileSource)(nil)
)
