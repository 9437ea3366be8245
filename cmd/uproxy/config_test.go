package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// kubeadmConfig is kube-proxy's config.conf as kubeadm writes it (trimmed),
// with values uproxy applies changed from their defaults.
const kubeadmConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 10m0s
conntrack:
  maxPerCore: 32768
  min: 131072
enableProfiling: true
healthzBindAddress: 0.0.0.0:10356
hostnameOverride: node7
iptables:
  masqueradeAll: false
  masqueradeBit: 14
  minSyncPeriod: 2s
  syncPeriod: 45s
metricsBindAddress: 127.0.0.1:10349
mode: ""
nodePortAddresses:
- 10.0.0.0/8
portRange: ""
`

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.conf")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigFile(t *testing.T) {
	kubeadm := writeConfig(t, kubeadmConfig)
	for name, tc := range map[string]struct {
		text    string // file contents; "" uses the kubeadm file
		args    []string
		check   func(t *testing.T, o *options)
		wantErr string
	}{
		"file values apply": {
			check: func(t *testing.T, o *options) {
				if o.Kubeconfig != "/var/lib/kube-proxy/kubeconfig.conf" || o.HostnameOverride != "node7" ||
					o.SyncPeriod != 45*time.Second || o.MinSyncPeriod != 2*time.Second ||
					o.ConfigSyncPeriod != 10*time.Minute || !o.Profiling ||
					o.HealthzBindAddress != "0.0.0.0:10356" || o.MetricsBindAddress != "127.0.0.1:10349" ||
					len(o.NodePortAddresses) != 1 || o.NodePortAddresses[0].String() != "10.0.0.0/8" {
					t.Errorf("options from the file: %+v", o)
				}
			},
		},
		"flags override the file": {
			args: []string{"--hostname-override=cmdline", "--iptables-sync-period=1m", "--profiling=false"},
			check: func(t *testing.T, o *options) {
				if o.HostnameOverride != "cmdline" || o.SyncPeriod != time.Minute || o.Profiling {
					t.Errorf("flags did not win: %+v", o)
				}
				if o.MinSyncPeriod != 2*time.Second {
					t.Errorf("a field without a flag lost the file's value: %v", o.MinSyncPeriod)
				}
			},
		},
		"fields uproxy does not apply are listed": {
			check: func(t *testing.T, o *options) {
				want := []string{"clusterCIDR", "conntrack.maxPerCore", "conntrack.min", "iptables.masqueradeBit"}
				if !reflect.DeepEqual(o.ConfigIgnored, want) {
					t.Errorf("ignored %q, want %q", o.ConfigIgnored, want)
				}
			},
		},
		"another proxy mode is listed": {
			text: "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\n",
			check: func(t *testing.T, o *options) {
				if !reflect.DeepEqual(o.ConfigIgnored, []string{"mode"}) {
					t.Errorf("ignored %q", o.ConfigIgnored)
				}
			},
		},
		"unknown field": {
			text:    "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nnoSuchField: 1\n",
			wantErr: `unknown field "noSuchField"`,
		},
		"wrong kind": {
			text:    "apiVersion: v1\nkind: ConfigMap\n",
			wantErr: "want kubeproxy.config.k8s.io/v1alpha1 KubeProxyConfiguration",
		},
		"invalid value names the flag": {
			text:    "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nbindAddress: nope\n",
			wantErr: "invalid --bind-address",
		},
		"missing file": {
			args:    []string{"--config=/nonexistent/config.conf"},
			wantErr: "invalid --config",
		},
	} {
		t.Run(name, func(t *testing.T) {
			path := kubeadm
			if tc.text != "" {
				path = writeConfig(t, tc.text)
			}
			o, err := parseFlags(append([]string{"--config=" + path}, tc.args...))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, o)
		})
	}
}

// TestWriteConfigToReadsBack: the file --write-config-to writes gives the
// same options when read with --config, and uproxy exits 0 after writing.
func TestWriteConfigToReadsBack(t *testing.T) {
	out := filepath.Join(t.TempDir(), "written.conf")
	args := []string{"--config=" + writeConfig(t, kubeadmConfig), "--hostname-override=other", "--proxy-port-range=30000-30100", "-v=3"}
	var stdout, stderr strings.Builder
	if code := run(append(args, "--write-config-to="+out), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	want, err := parseFlags(args)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseFlags([]string{"--config=" + out})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []*options{want, got} {
		o.ConfigIgnored = nil
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("read back:\n%+v\nwant\n%+v", got, want)
	}
}
