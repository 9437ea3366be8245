package main

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/uproxy/uproxy/proxy"
)

func TestParseFlagsDefaults(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatalf("parseFlags(nil): %v", err)
	}
	want := options{
		BindAddress:        netip.MustParseAddr("0.0.0.0"),
		UDPTimeout:         10 * time.Second,
		SyncPeriod:         30 * time.Second,
		MinSyncPeriod:      time.Second,
		ConfigSyncPeriod:   15 * time.Minute,
		HealthzBindAddress: "0.0.0.0:10256",
		MetricsBindAddress: "127.0.0.1:10249",
		PortalMode:         portalModeIPTables,
		LogLevel:           zerolog.InfoLevel,
		LogFormat:          logFormatJSON,
		UDPMaxSessions:     4096,
		ShutdownGrace:      20 * time.Second,
		CheckpointPath:     "/var/lib/uproxy/state.json",
		EarlyResetReplay:   true,
		EjectAfterResets:   3,
	}
	if !reflect.DeepEqual(*o, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", *o, want)
	}
}

func TestParseFlags(t *testing.T) {
	tests := map[string]struct {
		args    []string
		check   func(*options) bool // for good cases
		wantErr string              // substring of the one-line reason; "" = valid
	}{
		"kubeconfig and master": {
			args:  []string{"--kubeconfig=/etc/kube.conf", "--master", "https://10.0.0.1:6443"},
			check: func(o *options) bool { return o.Kubeconfig == "/etc/kube.conf" && o.Master == "https://10.0.0.1:6443" },
		},
		"hostname override trimmed": {
			args:  []string{"--hostname-override", " node-1 "},
			check: func(o *options) bool { return o.HostnameOverride == "node-1" },
		},
		"bind address ipv6": {
			args:  []string{"--bind-address", "::"},
			check: func(o *options) bool { return o.BindAddress == netip.IPv6Unspecified() },
		},
		"bind address bad": {args: []string{"--bind-address", "nope"}, wantErr: "invalid --bind-address"},
		"port range dash": {
			args:  []string{"--proxy-port-range=30000-30099"},
			check: func(o *options) bool { return o.ProxyPortRange == proxy.PortRange{Base: 30000, Size: 100} },
		},
		"port range plus": {
			args:  []string{"--proxy-port-range", "30000+9"},
			check: func(o *options) bool { return o.ProxyPortRange == proxy.PortRange{Base: 30000, Size: 10} },
		},
		"port range zero is kernel chosen": {
			args:  []string{"--proxy-port-range=0-0"},
			check: func(o *options) bool { return o.ProxyPortRange.Empty() },
		},
		"port range reversed": {args: []string{"--proxy-port-range=200-100"}, wantErr: "invalid --proxy-port-range: port range \"200-100\": last port 100 is below first port 200"},
		"port range garbage":  {args: []string{"--proxy-port-range=abc"}, wantErr: "invalid --proxy-port-range"},
		"udp timeout": {
			args:  []string{"--udp-timeout", "2s"},
			check: func(o *options) bool { return o.UDPTimeout == 2*time.Second },
		},
		"udp timeout zero":         {args: []string{"--udp-timeout=0s"}, wantErr: "invalid --udp-timeout 0s: must be greater than 0"},
		"udp timeout unparsable":   {args: []string{"--udp-timeout=fast"}, wantErr: "udp-timeout"},
		"sync period zero":         {args: []string{"--iptables-sync-period=0"}, wantErr: "invalid --iptables-sync-period"},
		"min sync period negative": {args: []string{"--iptables-min-sync-period=-1s"}, wantErr: "invalid --iptables-min-sync-period"},
		"min sync above sync": {
			args:    []string{"--iptables-min-sync-period=1m", "--iptables-sync-period=30s"},
			wantErr: "must be greater than or equal to --iptables-min-sync-period",
		},
		"min sync zero allowed": {
			args:  []string{"--iptables-min-sync-period=0"},
			check: func(o *options) bool { return o.MinSyncPeriod == 0 },
		},
		"config sync period zero": {args: []string{"--config-sync-period=0"}, wantErr: "invalid --config-sync-period"},
		"nodeport addresses cidrs": {
			args: []string{"--nodeport-addresses", "10.0.0.5/8,fd00::/64"},
			check: func(o *options) bool {
				return len(o.NodePortAddresses) == 2 && o.NodePortAddresses[0] == netip.MustParsePrefix("10.0.0.0/8") &&
					o.NodePortAddresses[1] == netip.MustParsePrefix("fd00::/64")
			},
		},
		"nodeport addresses primary": {
			args:  []string{"--nodeport-addresses=primary"},
			check: func(o *options) bool { return o.NodePortPrimary && o.NodePortAddresses == nil },
		},
		"nodeport addresses primary mixed": {args: []string{"--nodeport-addresses=primary,10.0.0.0/8"}, wantErr: "'primary' must be the only value"},
		"nodeport addresses bad":           {args: []string{"--nodeport-addresses=10.0.0.0"}, wantErr: "is not a CIDR"},
		"cleanup": {
			args:  []string{"--cleanup"},
			check: func(o *options) bool { return o.Cleanup },
		},
		"healthz disabled": {
			args:  []string{"--healthz-bind-address="},
			check: func(o *options) bool { return o.HealthzBindAddress == "" },
		},
		"healthz port zero": {
			args:  []string{"--healthz-bind-address=127.0.0.1:0"},
			check: func(o *options) bool { return o.HealthzBindAddress == "127.0.0.1:0" },
		},
		"healthz no port":  {args: []string{"--healthz-bind-address=127.0.0.1"}, wantErr: "must be IP:port"},
		"healthz hostname": {args: []string{"--healthz-bind-address=localhost:10256"}, wantErr: "is not an IP address"},
		"metrics bad port": {args: []string{"--metrics-bind-address=127.0.0.1:70000"}, wantErr: "is not a port number"},
		"metrics ipv6":     {args: []string{"--metrics-bind-address=[::1]:10249"}, check: func(o *options) bool { return o.MetricsBindAddress == "[::1]:10249" }},
		"bind hard fail": {
			args:  []string{"--bind-address-hard-fail"},
			check: func(o *options) bool { return o.BindAddressHardFail },
		},
		"healthz require apiserver": {
			args:  []string{"--healthz-require-apiserver"},
			check: func(o *options) bool { return o.HealthzRequireAPIServer },
		},
		"healthz kube-proxy semantics by default": {
			args:  nil,
			check: func(o *options) bool { return !o.HealthzRequireAPIServer },
		},
		"health socket": {
			args:  []string{"--health-socket=/run/uproxy/health.sock"},
			check: func(o *options) bool { return o.HealthSocket == "/run/uproxy/health.sock" },
		},
		"health socket abstract":  {args: []string{"--health-socket=@uproxy"}, wantErr: "abstract sockets are shared"},
		"health socket too long":  {args: []string{"--health-socket=/" + strings.Repeat("x", 107)}, wantErr: "longer than 107 bytes"},
		"health socket directory": {args: []string{"--health-socket=/run/uproxy/"}, wantErr: "is a directory"},
		"profiling and version": {
			args:  []string{"--profiling", "--version"},
			check: func(o *options) bool { return o.Profiling && o.Version },
		},
		"v short maps to debug": {
			args:  []string{"-v", "4"},
			check: func(o *options) bool { return o.Verbosity == 4 && o.LogLevel == zerolog.DebugLevel },
		},
		"v long maps to trace": {
			args:  []string{"--v=6"},
			check: func(o *options) bool { return o.LogLevel == zerolog.TraceLevel },
		},
		"v two stays info": {
			args:  []string{"--v=2"},
			check: func(o *options) bool { return o.LogLevel == zerolog.InfoLevel },
		},
		"log level overrides v": {
			args:  []string{"--v=6", "--log-level=warn"},
			check: func(o *options) bool { return o.LogLevel == zerolog.WarnLevel && o.Verbosity == 6 },
		},
		"v negative":      {args: []string{"--v=-1"}, wantErr: "invalid -v"},
		"log level bad":   {args: []string{"--log-level=loud"}, wantErr: "invalid --log-level"},
		"log level empty": {args: []string{"--log-level="}, wantErr: "invalid --log-level"},
		"log format console": {
			args:  []string{"--log-format=console"},
			check: func(o *options) bool { return o.LogFormat == logFormatConsole },
		},
		"log format bad": {args: []string{"--log-format=xml"}, wantErr: "invalid --log-format"},
		"manifests direct": {
			args: []string{"--manifests", "/tmp/m", "--portal-mode", "direct", "--service-proxy-name", "uproxy"},
			check: func(o *options) bool {
				return o.Manifests == "/tmp/m" && o.PortalMode == portalModeDirect && o.ServiceProxyName == "uproxy"
			},
		},
		"manifests with kubeconfig": {args: []string{"--manifests=/m", "--kubeconfig=/k"}, wantErr: "--manifests cannot be combined"},
		"iptables backend legacy": {
			args:  []string{"--iptables-backend=legacy"},
			check: func(o *options) bool { return o.IPTablesBackend == "legacy" },
		},
		"iptables backend bad": {args: []string{"--iptables-backend=ebpf"}, wantErr: "invalid --iptables-backend"},
		"portal mode bad":      {args: []string{"--portal-mode=ipvs"}, wantErr: "invalid --portal-mode \"ipvs\""},
		"udp max sessions": {
			args:  []string{"--udp-max-sessions=10"},
			check: func(o *options) bool { return o.UDPMaxSessions == 10 },
		},
		"udp max sessions zero": {args: []string{"--udp-max-sessions=0"}, wantErr: "invalid --udp-max-sessions"},
		"shutdown grace": {
			args:  []string{"--shutdown-grace=0s", "--disable-ejection"},
			check: func(o *options) bool { return o.ShutdownGrace == 0 && o.DisableEjection },
		},
		"early reset replay off": {
			args:  []string{"--early-reset-replay=false"},
			check: func(o *options) bool { return !o.EarlyResetReplay },
		},
		"eject after resets off": {
			args:  []string{"--eject-after-resets=0"},
			check: func(o *options) bool { return o.EjectAfterResets == 0 && ejectAfterResets(o.EjectAfterResets) < 0 },
		},
		"eject after resets negative": {args: []string{"--eject-after-resets=-1"}, wantErr: "invalid --eject-after-resets -1"},
		"shutdown grace negative":     {args: []string{"--shutdown-grace=-1s"}, wantErr: "invalid --shutdown-grace"},
		"unknown flag":                {args: []string{"--proxy-mode=iptables"}, wantErr: "unknown flag: --proxy-mode"},
		"unknown shorthand":           {args: []string{"-x"}, wantErr: "unknown shorthand flag: 'x'"},
		"positional argument":         {args: []string{"run"}, wantErr: "unexpected argument \"run\""},
		"missing value":               {args: []string{"--kubeconfig"}, wantErr: "flag needs an argument"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			o, err := parseFlags(tc.args)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("parseFlags(%q) = nil error, want %q", tc.args, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %q does not contain %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error %q is not one line", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseFlags(%q): %v", tc.args, err)
			}
			if !tc.check(o) {
				t.Errorf("parseFlags(%q) = %+v", tc.args, *o)
			}
		})
	}
}

func TestParseFlagsHelp(t *testing.T) {
	for _, arg := range []string{"--help", "-h"} {
		if _, err := parseFlags([]string{arg}); !errors.Is(err, errHelp) {
			t.Errorf("parseFlags(%s) = %v, want errHelp", arg, err)
		}
	}
	var b strings.Builder
	usage(&b)
	for _, name := range []string{"--kubeconfig", "--master", "--hostname-override", "--bind-address", "--proxy-port-range",
		"--udp-timeout", "--iptables-sync-period", "--iptables-min-sync-period", "--config-sync-period",
		"--nodeport-addresses", "--cleanup", "--healthz-bind-address", "--metrics-bind-address", "--bind-address-hard-fail", "--profiling",
		"--version", "-v, --v", "--manifests", "--health-socket", "--portal-mode", "--iptables-backend", "--service-proxy-name", "--log-level", "--log-format",
		"--udp-max-sessions", "--shutdown-grace", "--disable-ejection", "--checkpoint-path"} {
		if !strings.Contains(b.String(), name) {
			t.Errorf("usage does not document %s", name)
		}
	}
}

func FuzzParseFlags(f *testing.F) {
	f.Add("--proxy-port-range", "30000-30100")
	f.Add("--nodeport-addresses", "10.0.0.0/8,primary")
	f.Add("--healthz-bind-address", "[::1]:0")
	f.Add("--udp-timeout", "-5ms")
	f.Add("--health-socket", "/run/uproxy/health.sock")
	f.Fuzz(func(t *testing.T, flag, value string) {
		o, err := parseFlags([]string{flag, value})
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("multi-line error %q", err)
			}
			return
		}
		if o.UDPTimeout <= 0 || o.SyncPeriod <= 0 || o.MinSyncPeriod > o.SyncPeriod || o.UDPMaxSessions <= 0 ||
			len(o.HealthSocket) > maxSocketPath {
			t.Errorf("invalid options accepted: %+v", *o)
		}
	})
}
