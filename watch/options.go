package watch

import (
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/uproxy/uproxy/svc"
)

// Defaults of the kube-proxy flags that fill Options.
const (
	DefaultMinSyncPeriod    = time.Second      // --iptables-min-sync-period
	DefaultSyncPeriod       = 30 * time.Second // --iptables-sync-period
	DefaultConfigSyncPeriod = 15 * time.Minute // --config-sync-period
)

// Labels that decide whether uproxy handles a Service (and its slices).
const (
	// LabelServiceProxyName names the proxy that should handle a Service;
	// unlabelled Services are handled when Options.ServiceProxyName is "".
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// LabelHeadless is set by the EndpointSlice controller on the slices of
	// headless Services; they are never proxied.
	LabelHeadless = v1.IsHeadlessService
)

// Options configure the sources, the tracker and the runner.
type Options struct {
	// NodeName is this node (--hostname-override or os.Hostname): the Node
	// object watched for addresses and zone, and the node internalTrafficPolicy
	// Local keeps endpoints of.
	NodeName string
	// ServiceProxyName is --service-proxy-name. "" handles only Services
	// WITHOUT the service.kubernetes.io/service-proxy-name label; a name
	// handles only Services labelled with exactly that name.
	ServiceProxyName string
	// MinSyncPeriod paces SyncPorts calls (--iptables-min-sync-period): a
	// token bucket of two, refilled one per MinSyncPeriod, as kube-proxy's.
	// 0 means no limit; negative is 0.
	MinSyncPeriod time.Duration
	// SyncPeriod is the most time between two SyncPorts calls: a full
	// resync that repairs rules (--iptables-sync-period). <= 0 means
	// DefaultSyncPeriod; it is raised to MinSyncPeriod if smaller.
	SyncPeriod time.Duration
	// ConfigSyncPeriod is the informers' resync period (--config-sync-period).
	// 0 disables informer resyncs, as in kube-proxy; negative is 0.
	ConfigSyncPeriod time.Duration
	// CheckpointPath is where the Runner writes the state checkpoint
	// (--checkpoint-path); "" writes none. See Checkpoint.
	CheckpointPath string
	// Families are the IP families proxied. Empty: derived from the Node's
	// InternalIP/ExternalIP addresses; when those are unknown too (no Node
	// object, manifest mode), both families are proxied.
	Families []v1.IPFamily
}

// withDefaults returns o with the documented defaults applied.
func (o Options) withDefaults() Options {
	if o.MinSyncPeriod < 0 {
		o.MinSyncPeriod = 0
	}
	if o.SyncPeriod <= 0 {
		o.SyncPeriod = DefaultSyncPeriod
	}
	if o.SyncPeriod < o.MinSyncPeriod {
		o.SyncPeriod = o.MinSyncPeriod
	}
	if o.ConfigSyncPeriod < 0 {
		o.ConfigSyncPeriod = 0
	}
	return o
}

// NodeInfo is what uproxy knows about its own Node.
type NodeInfo struct {
	Name string
	// Addresses are the Node's InternalIP addresses, then its ExternalIP
	// addresses, in status order. Empty until the Node is seen.
	Addresses []netip.Addr
	Zone      string // label topology.kubernetes.io/zone
	// Deleting is true once the Node has a deletionTimestamp or is gone.
	Deleting bool
	// ToBeDeleted is true while the Node has the cluster autoscaler's
	// ToBeDeletedByClusterAutoscaler taint (kube-proxy: not eligible).
	ToBeDeleted bool
}

func (n NodeInfo) equal(o NodeInfo) bool {
	if n.Name != o.Name || n.Zone != o.Zone || n.Deleting != o.Deleting || n.ToBeDeleted != o.ToBeDeleted || len(n.Addresses) != len(o.Addresses) {
		return false
	}
	for i := range n.Addresses {
		if n.Addresses[i] != o.Addresses[i] {
			return false
		}
	}
	return true
}

// families is the set of IP families uproxy proxies.
type families struct{ v4, v6 bool }

// has reports whether fam is proxied.
func (f families) has(fam svc.Family) bool {
	if fam == svc.IPv6 {
		return f.v6
	}
	return f.v4
}

func (f families) String() string {
	switch {
	case f.v4 && f.v6:
		return "IPv4,IPv6"
	case f.v4:
		return "IPv4"
	case f.v6:
		return "IPv6"
	}
	return "none"
}

// effectiveFamilies applies Options.Families, else the node's addresses,
// else both.
func effectiveFamilies(opts []v1.IPFamily, node NodeInfo) families {
	var f families
	for _, fam := range opts {
		switch fam {
		case v1.IPv4Protocol:
			f.v4 = true
		case v1.IPv6Protocol:
			f.v6 = true
		}
	}
	if f.v4 || f.v6 {
		return f
	}
	for _, a := range node.Addresses {
		if a.Is4() {
			f.v4 = true
		} else if a.Is6() {
			f.v6 = true
		}
	}
	if f.v4 || f.v6 {
		return f
	}
	return families{v4: true, v6: true}
}
