package watch

import (
	"context"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// KubeSource watches the API server with client-go shared informers:
// core/v1 Services and discovery/v1 EndpointSlices (label-selected as
// kube-proxy does), and the Node named Options.NodeName.
type KubeSource struct {
	client kubernetes.Interface
	opts   Options
	log    zerolog.Logger
}

// NewKubeSource returns a source reading from client.
func NewKubeSource(client kubernetes.Interface, opts Options, log zerolog.Logger) *KubeSource {
	return &KubeSource{client: client, opts: opts.withDefaults(), log: log.With().Str("component", "watch.kube").Logger()}
}

// serviceSelector is kube-proxy's informer selector: not headless, and the
// service-proxy-name label absent (proxyName "") or equal to proxyName.
func serviceSelector(proxyName string) (string, error) {
	var reqs []labels.Requirement
	proxy, err := labels.NewRequirement(LabelServiceProxyName, selection.DoesNotExist, nil)
	if proxyName != "" {
		proxy, err = labels.NewRequirement(LabelServiceProxyName, selection.Equals, []string{proxyName})
	}
	if err != nil {
		return "", fmt.Errorf("service proxy name %q: %w", proxyName, err)
	}
	headless, err := labels.NewRequirement(LabelHeadless, selection.DoesNotExist, nil)
	if err != nil {
		return "", fmt.Errorf("headless selector: %w", err)
	}
	reqs = append(reqs, *proxy, *headless)
	return labels.NewSelector().Add(reqs...).String(), nil
}

// Run starts the informers, waits until every handler has seen the initial
// lists, marks t synced and records changes until ctx is done.
func (s *KubeSource) Run(ctx context.Context, t *Tracker) error {
	sel, err := serviceSelector(s.opts.ServiceProxyName)
	if err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactoryWithOptions(s.client, s.opts.ConfigSyncPeriod,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sel }))
	defer factory.Shutdown() // runs after ctx is done: waits for the informers to stop

	// synced holds, per informer, its own and our handler's sync checkers:
	// the handler's is done once every object of the initial list was
	// delivered to the tracker.
	var synced []cache.DoneChecker
	add := func(what string, inf cache.SharedIndexInformer, h cache.ResourceEventHandler) error {
		reg, err := inf.AddEventHandler(h)
		if err != nil {
			return fmt.Errorf("%s informer: %w", what, err)
		}
		synced = append(synced, inf.HasSyncedChecker(), reg.HasSyncedChecker())
		return nil
	}
	if err := add("service", factory.Core().V1().Services().Informer(), handlers(s.log, t.OnServiceAdd, t.OnServiceUpdate, t.OnServiceDelete)); err != nil {
		return err
	}
	if err := add("endpointslice", factory.Discovery().V1().EndpointSlices().Informer(), handlers(s.log, t.OnEndpointSliceAdd, t.OnEndpointSliceUpdate, t.OnEndpointSliceDelete)); err != nil {
		return err
	}

	if s.opts.NodeName != "" {
		nodeFactory := informers.NewSharedInformerFactoryWithOptions(s.client, s.opts.ConfigSyncPeriod,
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", s.opts.NodeName).String()
			}))
		defer nodeFactory.Shutdown()
		if err := add("node", nodeFactory.Core().V1().Nodes().Informer(), handlers(s.log, t.OnNodeAdd, t.OnNodeUpdate, t.OnNodeDelete)); err != nil {
			return err
		}
		nodeFactory.Start(ctx.Done())
	}
	factory.Start(ctx.Done())

	s.log.Info().Str("selector", sel).Str("node", s.opts.NodeName).Msg("waiting for informer caches")
	if !cache.WaitFor(ctx, "", synced...) {
		return nil // ctx done before the caches synced
	}
	s.log.Info().Msg("informer caches synced")
	t.SetSynced()
	s.probeAPI(ctx, t)
	return nil
}

// probeInterval is how often probeAPI asks the API server /readyz: half the
// sync period, within 1s..10s, so an outage shows on /healthz soon after
// the staleness bound (2 x SyncPeriod).
func (o Options) probeInterval() time.Duration {
	return min(max(o.SyncPeriod/2, time.Second), 10*time.Second)
}

// probeAPI asks the API server's /readyz (public to every authenticated
// client, so no RBAC) until ctx is done and records the outcome in t. The
// informers retry on their own and say nothing when the API server is
// gone, so this is how /healthz learns that the state is no longer current.
func (s *KubeSource) probeAPI(ctx context.Context, t *Tracker) {
	rc := s.client.Discovery().RESTClient()
	if rc == nil { // the fake clientset has no REST client
		<-ctx.Done()
		return
	}
	interval := s.opts.probeInterval()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		pctx, cancel := context.WithTimeout(ctx, interval)
		err := rc.Get().AbsPath("/readyz").Do(pctx).Error()
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			err = fmt.Errorf("GET /readyz: %w", err)
		}
		t.SetReachable(err)
	}
}

// handlers adapts typed tracker handlers to an informer's, unwrapping
// deletion tombstones. Objects of another type are logged and ignored.
func handlers[T *v1.Service | *discovery.EndpointSlice | *v1.Node](log zerolog.Logger, add func(T), update func(T, T), del func(T)) cache.ResourceEventHandler {
	cast := func(obj any) (T, bool) {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		o, ok := obj.(T)
		if !ok {
			log.Error().Str("type", fmt.Sprintf("%T", obj)).Msg("unexpected object from informer, ignored")
		}
		return o, ok
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if o, ok := cast(obj); ok {
				add(o)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := cast(oldObj)
			n, ok2 := cast(newObj)
			if ok1 && ok2 {
				update(o, n)
			}
		},
		DeleteFunc: func(obj any) {
			if o, ok := cast(obj); ok {
				del(o)
			}
		},
	}
}
