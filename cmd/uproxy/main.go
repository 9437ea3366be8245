// Command uproxy is a node-local Kubernetes service proxy: kube-proxy's legacy
// userspace mode, done right. It wires watch/ (desired state), proxy/ (the
// data plane) and iptables/ (portal rules) together and serves /healthz and
// /livez (--healthz-bind-address, --health-socket), /metrics, /debug/services
// and, with --profiling, /debug/pprof/ (--metrics-bind-address).
//
// It does not program iptables itself (iptables/ does), does not decide which
// endpoint gets a connection (proxy/ does) and does not convert API objects
// (watch/ does).
//
// Exit codes: 0 after --help, --version, --write-config-to, --cleanup or a SIGTERM/SIGINT
// shutdown; 1 when start-up or a component fails; 2 for bad flags.
//
// `uproxy probe` (probe.go) is the DaemonSet's exec probe: it asks the
// uproxy serving on --health-socket for /healthz or /livez.
//
// `uproxy fd-holder` (fdholder.go) keeps the proxy ports' sockets open while
// uproxy restarts (package fdhold, --fd-holder-socket).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/uproxy/uproxy/cmd/uproxy/version"
	"github.com/uproxy/uproxy/iptables"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without os.Exit: it returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == probeCommand {
		return runProbe(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == fdHolderCommand {
		return runFDHolder(args[1:], stdout, stderr)
	}
	opts, err := parseFlags(args)
	switch {
	case errors.Is(err, errHelp):
		usage(stdout)
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "uproxy: %v\n", err)
		return 2
	}
	if opts.Version {
		fmt.Fprintln(stdout, version.String())
		return 0
	}
	if opts.WriteConfigTo != "" {
		if err := os.WriteFile(opts.WriteConfigTo, opts.effectiveConfig, 0o644); err != nil {
			fmt.Fprintf(stderr, "uproxy: --write-config-to: %v\n", err)
			return 1
		}
		return 0
	}

	zerolog.TimeFieldFormat = time.RFC3339Nano
	log := newLogger(stderr, opts.LogFormat, opts.LogLevel)
	defer routeKlog(log, opts.Verbosity)()

	// The first SIGTERM/SIGINT starts the graceful shutdown; serve calls
	// stop then, so a second signal kills the process at once.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if opts.Cleanup {
		if err := iptables.Cleanup(ctx, iptables.Config{Backend: opts.IPTablesBackend}, log); err != nil {
			log.Error().Err(err).Msg("cleanup failed")
			return 1
		}
		log.Info().Msg("cleanup done: uproxy's and legacy userspace kube-proxy's chains removed")
		return 0
	}

	if len(opts.ConfigIgnored) > 0 {
		log.Warn().Strs("fields", opts.ConfigIgnored).
			Msg("--config: these KubeProxyConfiguration fields do not apply to uproxy and are ignored")
	}
	log.Info().Str("version", version.Get()).Str("portalMode", opts.PortalMode).Msg("starting uproxy")
	if err := serve(ctx, stop, opts, log); err != nil {
		log.Error().Err(err).Msg("uproxy stopped on error")
		return 1
	}
	log.Info().Msg("uproxy stopped")
	return 0
}
