package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/pflag"

	"github.com/uproxy/uproxy/proxy"
	"github.com/uproxy/uproxy/watch"
)

// Portal modes (--portal-mode).
const (
	portalModeIPTables = "iptables"
	portalModeDirect   = "direct"
)

// Log formats (--log-format).
const (
	logFormatJSON    = "json"
	logFormatConsole = "console"
)

// options holds every command-line setting after parsing and validation.
// Flags that kube-proxy has keep kube-proxy's names and defaults so that a
// kube-proxy DaemonSet can switch images and keep its arguments.
type options struct {
	// kube-proxy flags
	Kubeconfig          string
	Master              string
	HostnameOverride    string
	BindAddress         netip.Addr
	ProxyPortRange      proxy.PortRange
	UDPTimeout          time.Duration
	SyncPeriod          time.Duration // --iptables-sync-period
	MinSyncPeriod       time.Duration // --iptables-min-sync-period
	ConfigSyncPeriod    time.Duration
	NodePortAddresses   []netip.Prefix
	NodePortPrimary     bool // --nodeport-addresses=primary: the node's own IPs
	Cleanup             bool
	HealthzBindAddress  string // "" disables the server
	MetricsBindAddress  string // "" disables the server
	BindAddressHardFail bool   // a failed healthz/metrics bind exits instead of being retried
	Profiling           bool
	Version             bool
	Verbosity           int // -v / --v

	// ConfigIgnored lists the --config fields (dotted paths) that were set
	// but do not apply to uproxy; main warns about them once.
	ConfigIgnored []string
	// WriteConfigTo is --write-config-to: main writes effectiveConfig (the
	// KubeProxyConfiguration uproxy applies, rendered only then) there and
	// exits.
	WriteConfigTo   string
	effectiveConfig []byte

	// uproxy's own flags
	Manifests        string
	HealthSocket     string // unix socket path for /healthz and /livez; "" disables
	FDHolderSocket   string // --fd-holder-socket: the fd holder's unix socket; "" disables
	CheckpointPath   string // --checkpoint-path: the state checkpoint file; "" disables
	PortalMode       string
	IPTablesBackend  string // "", "nft" or "legacy"
	ServiceProxyName string
	LogLevel         zerolog.Level
	LogFormat        string
	UDPMaxSessions   int
	ShutdownGrace    time.Duration
	DisableEjection  bool
	EarlyResetReplay bool
	EjectAfterResets int // 0: off

	// HealthzRequireAPIServer makes /healthz 503 while the API server has
	// not answered for 2 x SyncPeriod (off: kube-proxy's semantics).
	HealthzRequireAPIServer bool
}

// errHelp is returned by parseFlags for --help; main prints the usage and
// exits 0.
var errHelp = pflag.ErrHelp

// flagSet builds the flag set bound to raw, which receives the unvalidated
// values. Kept apart from parseFlags so --help can print it.
func flagSet(raw *rawFlags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("uproxy", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard) // errors are returned and printed by main, once
	fs.Usage = func() {}

	fs.StringVar(&raw.config, "config", "", "The path to a kube-proxy configuration file (KubeProxyConfiguration, kubeproxy.config.k8s.io/v1alpha1, e.g. kubeadm's kube-proxy ConfigMap config.conf). Flags given on the command line override its values; fields that do not apply to uproxy are reported once; unknown fields are an error.")
	fs.StringVar(&raw.writeConfigTo, "write-config-to", "", "If set, write the effective configuration (the KubeProxyConfiguration fields uproxy applies, after --config and flags) to this file and exit.")
	fs.StringVar(&raw.kubeconfig, "kubeconfig", "", "Path to kubeconfig file with authorization information (the master location can be overridden by the master flag). Without it and without --master, the in-cluster config is used.")
	fs.StringVar(&raw.master, "master", "", "The address of the Kubernetes API server (overrides any value in kubeconfig)")
	fs.StringVar(&raw.hostnameOverride, "hostname-override", "", "If non-empty, will be used as the name of the Node that uproxy is running on. If unset, the node name is assumed to be the same as the node's hostname.")
	fs.StringVar(&raw.bindAddress, "bind-address", "0.0.0.0", "The IP address the proxy ports are opened on (0.0.0.0 or :: for all interfaces). Portal rules REDIRECT to the proxy port when it is 0.0.0.0/::, DNAT to bind-address:port otherwise.")
	fs.StringVar(&raw.proxyPortRange, "proxy-port-range", "", "Range of host ports (beginPort-endPort, single port or beginPort+offset, inclusive) that may be consumed in order to proxy service traffic. If (unspecified, 0, or 0-0) then ports will be randomly chosen.")
	fs.DurationVar(&raw.udpTimeout, "udp-timeout", proxy.DefaultUDPIdleTimeout, "How long a UDP session keeps its reply path after the last datagram in either direction (e.g. '250ms', '10s'); kube-proxy's userspace default of 250ms loses replies slower than that. Must be greater than 0.")
	fs.DurationVar(&raw.syncPeriod, "iptables-sync-period", 30*time.Second, "An interval (e.g. '5s', '1m', '2h22m') indicating how frequently the full state is re-applied and portal rules are repaired. Must be greater than 0.")
	fs.DurationVar(&raw.minSyncPeriod, "iptables-min-sync-period", time.Second, "The minimum period between portal rule resyncs (e.g. '5s', '1m', '2h22m'). A value of 0 means every Service change results in an immediate resync. Endpoint changes are never rate-limited.")
	fs.DurationVar(&raw.configSyncPeriod, "config-sync-period", 15*time.Minute, "How often configuration from the apiserver is refreshed. Must be greater than 0.")
	fs.StringSliceVar(&raw.nodePortAddresses, "nodeport-addresses", nil, "A list of CIDR ranges that contain valid node IPs, or alternatively, the single string 'primary'. If set to a list of CIDRs, connections to NodePort services will only be accepted on node IPs in one of the indicated ranges. If set to 'primary', only on the node's primary IP(s) according to the Node object. If unset, NodePort connections will be accepted on all local IPs.")
	fs.BoolVar(&raw.cleanup, "cleanup", false, "If true cleanup iptables rules (uproxy's and legacy userspace kube-proxy's) and exit.")
	fs.StringVar(&raw.healthzBindAddress, "healthz-bind-address", "0.0.0.0:10256", "The IP address and port for the health check server (/healthz, /livez) to serve on. Set empty to disable.")
	fs.StringVar(&raw.metricsBindAddress, "metrics-bind-address", "127.0.0.1:10249", "The IP address and port for the metrics server (/metrics, /debug/services, /debug/pprof with --profiling) to serve on. (Set to '0.0.0.0:10249' / '[::]:10249' to bind on all interfaces.) Set empty to disable.")
	fs.BoolVar(&raw.bindAddressHardFail, "bind-address-hard-fail", false, "If true, a healthz or metrics server (or the health socket) that cannot bind its address stops uproxy (exit 1). By default the failure is logged, counted in uproxy_http_bind_failures_total and the bind retried every 5s while the proxy keeps running.")
	fs.BoolVar(&raw.profiling, "profiling", false, "If true enables profiling via web interface on the metrics address under /debug/pprof/.")
	fs.BoolVar(&raw.version, "version", false, "Print version information and quit.")
	fs.IntVarP(&raw.verbosity, "v", "v", 0, "klog-style log verbosity: 0-2 info, 3-4 debug, 5+ trace (ignored for uproxy's own logs when --log-level is given); also the verbosity of client-go's klog messages.")

	fs.StringVar(&raw.manifests, "manifests", "", "Run without a cluster: read Services and EndpointSlices from this YAML/JSON file or directory (multi-document, as kubectl accepts) and re-apply it when it changes. Excludes --kubeconfig and --master.")
	fs.StringVar(&raw.healthSocket, "health-socket", "", "Also serve /healthz and /livez on this unix socket (e.g. /run/uproxy/health.sock in a pod-private emptyDir), for exec probes ('uproxy probe --socket PATH'): only this process answers there, unlike the node-wide healthz port. A stale socket file left by a dead process is replaced. Empty: off.")
	fs.BoolVar(&raw.healthzRequireAPIServer, "healthz-require-apiserver", false, "If true, /healthz also answers 503 while the API server has not answered uproxy's /readyz probe for 2 x --iptables-sync-period (uproxy keeps serving the last known state meanwhile). Off by default, as kube-proxy: an API outage would turn every node unready at once for load balancers that probe /healthz; the outage is still shown in /healthz's \"apiServer\" field.")
	fs.StringVar(&raw.fdHolderSocket, "fd-holder-socket", "", "Keep the proxy ports' sockets open across a restart of uproxy: each listening socket is handed to the fd holder serving on this unix socket ('uproxy fd-holder --socket PATH', a second container of the pod sharing an emptyDir), and a restarted uproxy takes them back, so connections and datagrams arriving meanwhile wait in the kernel instead of being refused or dropped. Empty: off.")
	fs.StringVar(&raw.checkpointPath, "checkpoint-path", watch.DefaultCheckpointPath, "State checkpoint: the last Services and endpoints applied are written here (atomically, at most once a second), and a restarted uproxy serves them at once while the API server's state has not arrived yet (the API's state then replaces them). Its directory must exist (the DaemonSet mounts /var/lib/uproxy from the host). Not used with --manifests. Empty: off.")
	fs.StringVar(&raw.portalMode, "portal-mode", portalModeIPTables, "How traffic reaches the listeners: 'iptables' (portal rules redirect service IPs to proxy ports; needs CAP_NET_ADMIN) or 'direct' (no iptables; each service port listens on its portal IP:port itself; portals whose IP is not local are reported once and skipped).")
	fs.StringVar(&raw.iptablesBackend, "iptables-backend", "", "Which iptables to run: '' (whatever 'iptables' is in the image), 'nft' (iptables-nft*) or 'legacy' (iptables-legacy*). Must match what the node's other iptables users (kubelet, CNI) use.")
	fs.StringVar(&raw.serviceProxyName, "service-proxy-name", "", "Handle only Services labelled service.kubernetes.io/service-proxy-name=<this> (lets uproxy run beside kube-proxy). Empty: handle Services without that label, as kube-proxy does.")
	fs.StringVar(&raw.logLevel, "log-level", "", "Log level: trace, debug, info, warn, error. Overrides -v for uproxy's own logs. Per-connection events are logged at debug.")
	fs.StringVar(&raw.logFormat, "log-format", logFormatJSON, "Log format: 'json' (one object per line) or 'console' (human readable).")
	fs.IntVar(&raw.udpMaxSessions, "udp-max-sessions", proxy.DefaultUDPMaxSessions, "Maximum number of concurrent UDP sessions (client ip:port) per service port; at the cap a new client replaces the longest-idle session that has been idle for 1s or more, otherwise its datagram is dropped and counted.")
	fs.DurationVar(&raw.shutdownGrace, "shutdown-grace", 20*time.Second, "On SIGTERM/SIGINT, how long established connections may drain before uproxy exits. Portal rules stay in place so a restarted uproxy takes its ports back.")
	fs.BoolVar(&raw.disableEjection, "disable-ejection", false, "Do not eject failing endpoints (for measurements only).")
	fs.BoolVar(&raw.earlyResetReplay, "early-reset-replay", true, "Move a connection whose endpoint reset it within 100ms of connect, before any byte of the client's was sent to it, to another endpoint, replaying the client's bytes (up to 64 KiB). A reset after client bytes went out always reaches the client (a replay could duplicate the request). false: such resets reach the client too.")
	fs.IntVar(&raw.ejectAfterResets, "eject-after-resets", proxy.DefaultEjectAfterResets, "Eject an endpoint that resets this many connections in a row before answering, after the client's bytes had reached it (those resets reach the client: a replay could duplicate the request; an endpoint that accepts and resets everything then stops taking new connections). 0: only connect-level failures eject.")
	return fs
}

// rawFlags receives flag values before validation.
type rawFlags struct {
	kubeconfig, master, hostnameOverride, bindAddress, proxyPortRange string
	udpTimeout, syncPeriod, minSyncPeriod, configSyncPeriod           time.Duration
	nodePortAddresses                                                 []string
	cleanup, profiling, version, disableEjection, bindAddressHardFail bool
	healthzBindAddress, metricsBindAddress                            string
	verbosity, udpMaxSessions, ejectAfterResets                       int
	manifests, portalMode, serviceProxyName, logLevel, logFormat      string
	iptablesBackend, healthSocket, fdHolderSocket                     string
	checkpointPath                                                    string
	healthzRequireAPIServer                                           bool
	earlyResetReplay                                                  bool
	shutdownGrace                                                     time.Duration
	config, writeConfigTo                                             string
}

// usage renders --help.
func usage(w io.Writer) {
	var raw rawFlags
	fs := flagSet(&raw)
	fmt.Fprintf(w, "uproxy: a node-local Kubernetes service proxy (kube-proxy's userspace mode, done right).\n\n")
	fmt.Fprintf(w, "Usage:\n  uproxy [flags]\n  uproxy probe --socket PATH [--path /healthz] [--timeout 3s]   (see uproxy probe --help)\n\nFlags:\n%s", fs.FlagUsages())
}

// parseFlags parses and validates args (without the program name). It
// returns errHelp for --help and otherwise a one-line error naming the flag.
func parseFlags(args []string) (*options, error) {
	var raw rawFlags
	fs := flagSet(&raw)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, errHelp
		}
		// pflag quotes user input verbatim; keep the reason on one line.
		return nil, errors.New(strings.ReplaceAll(err.Error(), "\n", `\n`))
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (uproxy takes flags only)", fs.Arg(0))
	}
	var ignored []string
	if raw.config != "" {
		cfg, err := loadKubeProxyConfig(raw.config)
		if err != nil {
			return nil, fmt.Errorf("invalid --config: %w", err)
		}
		ignored = raw.applyKubeProxyConfig(cfg, fs)
	}
	o, err := raw.validate(fs)
	if err != nil {
		return nil, err
	}
	o.ConfigIgnored = ignored
	if o.WriteConfigTo = raw.writeConfigTo; o.WriteConfigTo != "" {
		if o.effectiveConfig, err = renderKubeProxyConfig(&raw); err != nil {
			return nil, fmt.Errorf("--write-config-to: %w", err)
		}
	}
	return o, nil
}

func (raw *rawFlags) validate(fs *pflag.FlagSet) (*options, error) {
	o := &options{
		Kubeconfig:          raw.kubeconfig,
		Master:              raw.master,
		HostnameOverride:    strings.TrimSpace(raw.hostnameOverride),
		UDPTimeout:          raw.udpTimeout,
		SyncPeriod:          raw.syncPeriod,
		MinSyncPeriod:       raw.minSyncPeriod,
		ConfigSyncPeriod:    raw.configSyncPeriod,
		Cleanup:             raw.cleanup,
		Profiling:           raw.profiling,
		BindAddressHardFail: raw.bindAddressHardFail,
		Version:             raw.version,
		Verbosity:           raw.verbosity,
		Manifests:           raw.manifests,
		HealthSocket:        raw.healthSocket,
		FDHolderSocket:      raw.fdHolderSocket,
		CheckpointPath:      raw.checkpointPath,
		PortalMode:          raw.portalMode,
		IPTablesBackend:     raw.iptablesBackend,
		ServiceProxyName:    raw.serviceProxyName,
		LogFormat:           raw.logFormat,
		UDPMaxSessions:      raw.udpMaxSessions,
		ShutdownGrace:       raw.shutdownGrace,
		DisableEjection:     raw.disableEjection,
		EarlyResetReplay:    raw.earlyResetReplay,
		EjectAfterResets:    raw.ejectAfterResets,
	}
	var err error
	if o.BindAddress, err = netip.ParseAddr(raw.bindAddress); err != nil {
		return nil, fmt.Errorf("invalid --bind-address %q: not an IP address", raw.bindAddress)
	}
	o.BindAddress = o.BindAddress.Unmap()
	if o.ProxyPortRange, err = proxy.ParsePortRange(raw.proxyPortRange); err != nil {
		return nil, fmt.Errorf("invalid --proxy-port-range: %w", err)
	}
	switch {
	case o.EjectAfterResets < 0:
		return nil, fmt.Errorf("invalid --eject-after-resets %d: must be greater than or equal to 0", o.EjectAfterResets)
	case o.UDPTimeout <= 0:
		return nil, fmt.Errorf("invalid --udp-timeout %s: must be greater than 0", o.UDPTimeout)
	case o.SyncPeriod <= 0:
		return nil, fmt.Errorf("invalid --iptables-sync-period %s: must be greater than 0", o.SyncPeriod)
	case o.MinSyncPeriod < 0:
		return nil, fmt.Errorf("invalid --iptables-min-sync-period %s: must be greater than or equal to 0", o.MinSyncPeriod)
	case o.MinSyncPeriod > o.SyncPeriod:
		return nil, fmt.Errorf("invalid --iptables-sync-period %s: must be greater than or equal to --iptables-min-sync-period %s", o.SyncPeriod, o.MinSyncPeriod)
	case o.ConfigSyncPeriod <= 0:
		return nil, fmt.Errorf("invalid --config-sync-period %s: must be greater than 0", o.ConfigSyncPeriod)
	case o.Verbosity < 0:
		return nil, fmt.Errorf("invalid -v %d: must be greater than or equal to 0", o.Verbosity)
	case o.UDPMaxSessions <= 0:
		return nil, fmt.Errorf("invalid --udp-max-sessions %d: must be greater than 0", o.UDPMaxSessions)
	case o.ShutdownGrace < 0:
		return nil, fmt.Errorf("invalid --shutdown-grace %s: must be greater than or equal to 0", o.ShutdownGrace)
	}
	if o.NodePortAddresses, o.NodePortPrimary, err = parseNodePortAddresses(raw.nodePortAddresses); err != nil {
		return nil, fmt.Errorf("invalid --nodeport-addresses %q: %w", strings.Join(raw.nodePortAddresses, ","), err)
	}
	if err := checkHostPort(raw.healthzBindAddress); err != nil {
		return nil, fmt.Errorf("invalid --healthz-bind-address %q: %w", raw.healthzBindAddress, err)
	}
	o.HealthzBindAddress = raw.healthzBindAddress
	o.HealthzRequireAPIServer = raw.healthzRequireAPIServer
	if err := checkHostPort(raw.metricsBindAddress); err != nil {
		return nil, fmt.Errorf("invalid --metrics-bind-address %q: %w", raw.metricsBindAddress, err)
	}
	o.MetricsBindAddress = raw.metricsBindAddress
	if err := checkSocketPath(raw.healthSocket); err != nil {
		return nil, fmt.Errorf("invalid --health-socket %q: %w", raw.healthSocket, err)
	}
	if err := checkSocketPath(raw.fdHolderSocket); err != nil {
		return nil, fmt.Errorf("invalid --fd-holder-socket %q: %w", raw.fdHolderSocket, err)
	}
	switch o.PortalMode {
	case portalModeIPTables, portalModeDirect:
	default:
		return nil, fmt.Errorf("invalid --portal-mode %q: must be %q or %q", o.PortalMode, portalModeIPTables, portalModeDirect)
	}
	switch o.IPTablesBackend {
	case "", "nft", "legacy":
	default:
		return nil, fmt.Errorf("invalid --iptables-backend %q: must be empty, \"nft\" or \"legacy\"", o.IPTablesBackend)
	}
	switch o.LogFormat {
	case logFormatJSON, logFormatConsole:
	default:
		return nil, fmt.Errorf("invalid --log-format %q: must be %q or %q", o.LogFormat, logFormatJSON, logFormatConsole)
	}
	if o.LogLevel, err = logLevel(raw.logLevel, fs.Changed("log-level"), o.Verbosity); err != nil {
		return nil, fmt.Errorf("invalid --log-level %q: %w", raw.logLevel, err)
	}
	if o.Manifests != "" && (o.Kubeconfig != "" || o.Master != "") {
		return nil, errors.New("--manifests cannot be combined with --kubeconfig or --master")
	}
	return o, nil
}

// logLevel picks the zerolog level: --log-level when given, otherwise the
// klog verbosity mapped as 0-2 info, 3-4 debug, 5+ trace (kube-proxy logs
// routine events at V(2) and per-object detail at V(4) and above).
func logLevel(s string, given bool, verbosity int) (zerolog.Level, error) {
	if given {
		switch s {
		case "trace", "debug", "info", "warn", "error":
			return zerolog.ParseLevel(s)
		}
		return zerolog.NoLevel, errors.New("must be one of trace, debug, info, warn, error")
	}
	switch {
	case verbosity >= 5:
		return zerolog.TraceLevel, nil
	case verbosity >= 3:
		return zerolog.DebugLevel, nil
	}
	return zerolog.InfoLevel, nil
}

// parseNodePortAddresses accepts a list of CIDRs or the single word
// "primary", as kube-proxy does.
func parseNodePortAddresses(ss []string) ([]netip.Prefix, bool, error) {
	if len(ss) == 1 && ss[0] == "primary" {
		return nil, true, nil
	}
	var out []netip.Prefix
	for _, s := range ss {
		if s == "primary" {
			return nil, false, errors.New("'primary' must be the only value")
		}
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, false, fmt.Errorf("%q is not a CIDR", s)
		}
		out = append(out, p.Masked())
	}
	return out, false, nil
}

// checkHostPort accepts "" (disabled) or IP:port with a numeric port
// (0 lets the kernel choose, which the tests use).
func checkHostPort(s string) error {
	if s == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("must be IP:port")
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("%q is not an IP address", host)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n > 65535 {
		return fmt.Errorf("%q is not a port number", port)
	}
	return nil
}
