package main

import (
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logsapi "k8s.io/component-base/logs/api/v1"
	kpconfig "k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"
)

// kube-proxy's configuration file (--config): a KubeProxyConfiguration of
// kubeproxy.config.k8s.io/v1alpha1, as kubeadm's kube-proxy ConfigMap holds
// it (config.conf). A kube-proxy DaemonSet can switch its image to uproxy and
// keep its arguments and ConfigMap. As in kube-proxy, a flag given on the
// command line overrides the file. Fields kube-proxy knows that do not apply
// to uproxy (another proxy mode's settings, conntrack tuning, ...) are
// reported once at start-up; fields kube-proxy does not know are an error.

const (
	kubeProxyConfigGroupVersion = "kubeproxy.config.k8s.io/v1alpha1"
	kubeProxyConfigKind         = "KubeProxyConfiguration"
)

// loadKubeProxyConfig reads and strictly decodes a KubeProxyConfiguration.
func loadKubeProxyConfig(path string) (*kpconfig.KubeProxyConfiguration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(data, &tm); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if tm.APIVersion != kubeProxyConfigGroupVersion || tm.Kind != kubeProxyConfigKind {
		return nil, fmt.Errorf("%s: apiVersion %q kind %q, want %s %s", path, tm.APIVersion, tm.Kind,
			kubeProxyConfigGroupVersion, kubeProxyConfigKind)
	}
	var cfg kpconfig.KubeProxyConfiguration
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &cfg, nil
}

// configField binds one KubeProxyConfiguration field to the flag it sets.
// get copies the file's value into raw when it is set (non-zero); put
// writes raw's value into a config (--write-config-to).
type configField struct {
	path, flag string
	get        func(c *kpconfig.KubeProxyConfiguration, raw *rawFlags) bool
	put        func(c *kpconfig.KubeProxyConfiguration, raw *rawFlags)
}

func stringField(path, flag string, cf func(*kpconfig.KubeProxyConfiguration) *string, rf func(*rawFlags) *string) configField {
	return configField{path: path, flag: flag,
		get: func(c *kpconfig.KubeProxyConfiguration, r *rawFlags) bool {
			if v := *cf(c); v != "" {
				*rf(r) = v
				return true
			}
			return false
		},
		put: func(c *kpconfig.KubeProxyConfiguration, r *rawFlags) { *cf(c) = *rf(r) },
	}
}

func durationField(path, flag string, cf func(*kpconfig.KubeProxyConfiguration) *metav1.Duration, rf func(*rawFlags) *time.Duration) configField {
	return configField{path: path, flag: flag,
		get: func(c *kpconfig.KubeProxyConfiguration, r *rawFlags) bool {
			if v := cf(c).Duration; v != 0 {
				*rf(r) = v
				return true
			}
			return false
		},
		put: func(c *kpconfig.KubeProxyConfiguration, r *rawFlags) { cf(c).Duration = *rf(r) },
	}
}

func boolField(path, flag string, cf func(*kpconfig.KubeProxyConfiguration) *bool, rf func(*rawFlags) *bool) configField {
	return configField{path: path, flag: flag,
		get: func(c *kpconfig.KubeProxyConfiguration, r *rawFlags) bool {
			if *cf(c) {
				*rf(r) = true
				return true
			}
			return false
		},
		put: func(c *kpconfig.KubeProxyConfiguration, r *rawFlags) { *cf(c) = *rf(r) },
	}
}

// configFields are the KubeProxyConfiguration fields uproxy applies.
var configFields = []configField{
	stringField("clientConnection.kubeconfig", "kubeconfig",
		func(c *kpconfig.KubeProxyConfiguration) *string { return &c.ClientConnection.Kubeconfig },
		func(r *rawFlags) *string { return &r.kubeconfig }),
	stringField("hostnameOverride", "hostname-override",
		func(c *kpconfig.KubeProxyConfiguration) *string { return &c.HostnameOverride },
		func(r *rawFlags) *string { return &r.hostnameOverride }),
	stringField("bindAddress", "bind-address",
		func(c *kpconfig.KubeProxyConfiguration) *string { return &c.BindAddress },
		func(r *rawFlags) *string { return &r.bindAddress }),
	stringField("healthzBindAddress", "healthz-bind-address",
		func(c *kpconfig.KubeProxyConfiguration) *string { return &c.HealthzBindAddress },
		func(r *rawFlags) *string { return &r.healthzBindAddress }),
	stringField("metricsBindAddress", "metrics-bind-address",
		func(c *kpconfig.KubeProxyConfiguration) *string { return &c.MetricsBindAddress },
		func(r *rawFlags) *string { return &r.metricsBindAddress }),
	boolField("bindAddressHardFail", "bind-address-hard-fail",
		func(c *kpconfig.KubeProxyConfiguration) *bool { return &c.BindAddressHardFail },
		func(r *rawFlags) *bool { return &r.bindAddressHardFail }),
	boolField("enableProfiling", "profiling",
		func(c *kpconfig.KubeProxyConfiguration) *bool { return &c.EnableProfiling },
		func(r *rawFlags) *bool { return &r.profiling }),
	durationField("iptables.syncPeriod", "iptables-sync-period",
		func(c *kpconfig.KubeProxyConfiguration) *metav1.Duration { return &c.IPTables.SyncPeriod },
		func(r *rawFlags) *time.Duration { return &r.syncPeriod }),
	durationField("iptables.minSyncPeriod", "iptables-min-sync-period",
		func(c *kpconfig.KubeProxyConfiguration) *metav1.Duration { return &c.IPTables.MinSyncPeriod },
		func(r *rawFlags) *time.Duration { return &r.minSyncPeriod }),
	durationField("configSyncPeriod", "config-sync-period",
		func(c *kpconfig.KubeProxyConfiguration) *metav1.Duration { return &c.ConfigSyncPeriod },
		func(r *rawFlags) *time.Duration { return &r.configSyncPeriod }),
	stringField("portRange", "proxy-port-range",
		func(c *kpconfig.KubeProxyConfiguration) *string { return &c.PortRange },
		func(r *rawFlags) *string { return &r.proxyPortRange }),
	{path: "nodePortAddresses", flag: "nodeport-addresses",
		get: func(c *kpconfig.KubeProxyConfiguration, r *rawFlags) bool {
			if len(c.NodePortAddresses) > 0 {
				r.nodePortAddresses = c.NodePortAddresses
				return true
			}
			return false
		},
		put: func(c *kpconfig.KubeProxyConfiguration, r *rawFlags) { c.NodePortAddresses = r.nodePortAddresses }},
	{path: "logging.verbosity", flag: "v",
		get: func(c *kpconfig.KubeProxyConfiguration, r *rawFlags) bool {
			if v := int(c.Logging.Verbosity); v != 0 {
				r.verbosity = v
				return true
			}
			return false
		},
		put: func(c *kpconfig.KubeProxyConfiguration, r *rawFlags) {
			c.Logging.Verbosity = logsapi.VerbosityLevel(r.verbosity)
		}},
}

// applyKubeProxyConfig sets raw from the file's fields whose flags were not
// given on the command line, and returns the set fields uproxy does not
// apply (dotted paths, sorted).
func (raw *rawFlags) applyKubeProxyConfig(cfg *kpconfig.KubeProxyConfiguration, fs *pflag.FlagSet) []string {
	for _, f := range configFields {
		if fs.Changed(f.flag) {
			continue // the command line wins, as in kube-proxy
		}
		f.get(cfg, raw)
	}
	return ignoredConfigFields(cfg)
}

// appliedConfigPaths are the paths configFields covers (and the type meta).
func appliedConfigPaths() map[string]bool {
	m := map[string]bool{"apiVersion": true, "kind": true}
	for _, f := range configFields {
		m[f.path] = true
	}
	return m
}

// ignoredConfigFields lists the non-zero leaf fields of cfg that uproxy does
// not apply, by their JSON paths.
func ignoredConfigFields(cfg *kpconfig.KubeProxyConfiguration) []string {
	applied := appliedConfigPaths()
	var out []string
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		t := v.Type()
		for i := range t.NumField() {
			sf := t.Field(i)
			name := strings.Split(sf.Tag.Get("json"), ",")[0]
			fv := v.Field(i)
			if sf.Anonymous || name == "" || name == "-" {
				continue // TypeMeta
			}
			path := name
			if prefix != "" {
				path = prefix + "." + name
			}
			if applied[path] || fv.IsZero() {
				continue
			}
			if fv.Kind() == reflect.Struct && fv.Type() != reflect.TypeOf(metav1.Duration{}) {
				walk(fv, path)
				continue
			}
			out = append(out, path)
		}
	}
	walk(reflect.ValueOf(cfg).Elem(), "")
	sort.Strings(out)
	return out
}

// renderKubeProxyConfig renders the settings uproxy takes from a
// KubeProxyConfiguration, as raw holds them after --config and flags
// (--write-config-to), so that the file reads back into the same options.
func renderKubeProxyConfig(raw *rawFlags) ([]byte, error) {
	cfg := &kpconfig.KubeProxyConfiguration{TypeMeta: metav1.TypeMeta{
		APIVersion: kubeProxyConfigGroupVersion, Kind: kubeProxyConfigKind}}
	for _, f := range configFields {
		f.put(cfg, raw)
	}
	return yaml.Marshal(cfg)
}
