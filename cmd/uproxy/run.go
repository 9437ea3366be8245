package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/uproxy/uproxy/fdhold"
	"github.com/uproxy/uproxy/iptables"
	"github.com/uproxy/uproxy/proxy"
	"github.com/uproxy/uproxy/svc"
	"github.com/uproxy/uproxy/watch"
)

// nodeIPWait bounds how long start-up waits for the Node object's addresses
// (iptables mode needs them for traffic the node sends itself) before it
// falls back to the state checkpoint's node IPs or the default route's
// source addresses. With a checkpoint the wait is short: it is served
// within a second of starting when the API server is unreachable.
const (
	nodeIPWaitKube       = 15 * time.Second
	nodeIPWaitManifests  = 2 * time.Second
	nodeIPWaitCheckpoint = 250 * time.Millisecond
)

// serve runs uproxy until ctx is cancelled (SIGTERM/SIGINT) or a component
// fails, then shuts down in this order:
//
//  1. /healthz answers 503 on every server; the healthz TCP server stops:
//     node health checks now reach a surging uproxy sharing the port, or
//     fail;
//  2. the sync loop and the source stop (no listener is opened again);
//  3. the proxier closes its listeners and drains established connections
//     for at most --shutdown-grace, then cuts what is left;
//  4. the metrics server and the health socket stop (they stay up during
//     the drain: to watch it, and so that the exec liveness probe still
//     finds /livez).
//
// The health check node ports (healthcheck/) close in step 1 too (they
// share their ports with SO_REUSEPORT, like the HTTP servers).
//
// Portal rules are left in place: a restarted uproxy reads its proxy ports
// back from them (iptables.InstalledProxyPorts) and listens on the same
// ports, so the rules never point at nothing for longer than the restart.
//
// stop is called when the shutdown starts, so a second signal kills the
// process with the default action.
func serve(ctx context.Context, stop func(), opts *options, log zerolog.Logger) error {
	raiseNofile(log)
	name, err := nodeName(opts.HostnameOverride)
	if err != nil {
		return err
	}
	wopts := watch.Options{
		NodeName:         name,
		ServiceProxyName: opts.ServiceProxyName,
		MinSyncPeriod:    opts.MinSyncPeriod,
		SyncPeriod:       opts.SyncPeriod,
		ConfigSyncPeriod: opts.ConfigSyncPeriod,
	}
	var checkpoint *watch.Checkpoint // the last run's state, served until the API's arrives
	if opts.CheckpointPath != "" && opts.Manifests == "" {
		wopts.CheckpointPath = opts.CheckpointPath
		checkpoint = loadCheckpoint(wopts, log)
	}

	// HTTP first: /livez answers while start-up waits for the API server.
	// A busy address is retried in the background (kube-proxy may hold
	// :10256); with --bind-address-hard-fail it fails start-up before any
	// rule or listener exists.
	var late lateBound
	health := newHealthServer(late.syncState, opts.SyncPeriod)
	health.requireAPIServer = opts.HealthzRequireAPIServer
	srvMetrics := newServerMetrics()
	reg, err := newRegistry(append(health.Collectors(), srvMetrics.Collectors()...)...)
	if err != nil {
		return err
	}
	httpServers := []struct {
		name, network, addr string // addr "" = off
		h                   http.Handler
	}{
		{"healthz", "tcp", opts.HealthzBindAddress, health.handler()},
		{"metrics", "tcp", opts.MetricsBindAddress, metricsHandler(reg, &late, opts.Profiling, log)},
		{"health-socket", "unix", opts.HealthSocket, health.handler()},
	}
	// Results of the source and the runner (each sends once) and, with
	// --bind-address-hard-fail, at most one failure per HTTP server.
	errc := make(chan error, 2+len(httpServers))
	var servers []*httpServer
	defer func() { // on start-up failure; after a shutdown this finds them stopped
		shutdownHTTP(servers, log)
	}()
	for _, hs := range httpServers {
		if hs.addr == "" {
			continue
		}
		cfg := serverConfig{network: hs.network, addr: hs.addr, hardFail: opts.BindAddressHardFail, fatal: errc, metrics: srvMetrics}
		s, err := startHTTP(hs.name, cfg, hs.h, log)
		if err != nil {
			return err
		}
		servers = append(servers, s)
	}

	// The source records into the tracker from now on; the runner applies
	// once the proxier exists. runCtx ends them, separately from the signal.
	runCtx, cancelRun := context.WithCancel(context.Background())
	defer cancelRun()
	tracker := watch.NewTracker(wopts, log)
	var source watch.Source
	if opts.Manifests != "" {
		source = watch.NewFileSource(opts.Manifests, log)
	} else {
		client, err := kubeClient(opts.Kubeconfig, opts.Master, log)
		if err != nil {
			return err
		}
		source = watch.NewKubeSource(client, wopts, log)
		go startingEvent(runCtx, client, name, log) // bounded by its own 10s timeout
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go runComponent(runCtx, &wg, errc, "source", func(ctx context.Context) error { return source.Run(ctx, tracker) })

	pcfg := proxy.Config{
		BindAddr:           opts.BindAddress,
		PortRange:          opts.ProxyPortRange,
		UDPIdleTimeout:     opts.UDPTimeout,
		UDPMaxSessions:     opts.UDPMaxSessions,
		DisableEjection:    opts.DisableEjection,
		NoEarlyResetReplay: !opts.EarlyResetReplay,
		EjectAfterResets:   ejectAfterResets(opts.EjectAfterResets),
		ReusePort:          true, // a surging or restarted instance can take the same ports
		NodeName:           name,
	}
	// The fd keeper runs until the proxier has shut down, so that the
	// holder releases every socket the shutdown closes.
	keeperCtx, stopKeeper := context.WithCancel(context.Background())
	keeperDone := make(chan struct{})
	if opts.FDHolderSocket != "" {
		// Before the proxier opens a listener: the sockets a previous run
		// left with the holder are taken back instead of bound anew.
		keeper := fdhold.Load(ctx, opts.FDHolderSocket, fdHolderWait, log)
		pcfg.Sockets = keeper
		go func() { _ = keeper.Run(keeperCtx); close(keeperDone) }()
	} else {
		close(keeperDone)
	}
	defer func() { stopKeeper(); <-keeperDone }()
	var portals svc.PortalSyncer // stays a nil interface in direct mode
	var stopErr error
	switch opts.PortalMode {
	case portalModeDirect:
		pcfg.Mode = proxy.ModeDirect
	default:
		pcfg.Mode = proxy.ModeIPTables
		wait := nodeIPWaitKube
		var fallback []netip.Addr
		switch {
		case opts.Manifests != "":
			wait = nodeIPWaitManifests
		case checkpoint != nil:
			wait, fallback = nodeIPWaitCheckpoint, checkpoint.NodeIPs
		}
		ips, err := waitNodeIPs(ctx, tracker, wait, fallback, log)
		if err != nil {
			stopErr = err
			break
		}
		prog, err := newPortalProgrammer(ctx, opts, ips, &pcfg, log)
		if err != nil {
			stopErr = err
			break
		}
		portals = prog
		if err := registerAll(reg, prog.Collectors()...); err != nil {
			stopErr = err
		}
	}
	var proxier *proxy.Proxier
	var runner *watch.Runner
	svcHealth := newServiceHealth(opts, name, tracker, health, log) // health check node ports
	if stopErr == nil {
		if proxier, stopErr = proxy.New(pcfg, portals, log); stopErr == nil {
			runner = watch.NewRunner(tracker, svcHealth.Wrap(proxier), wopts, log)
			runner.StartFrom(checkpoint)
			late.set(runner, proxier)
			stopErr = registerAll(reg, append(runner.Collectors(), proxier.Collector())...)
		}
	}
	if stopErr == nil {
		wg.Add(1)
		go runComponent(runCtx, &wg, errc, "sync loop", runner.Run)
		log.Info().Str("node", name).Msg("uproxy running")
		stopErr = waitForStop(ctx, errc)
	}

	// Shutdown, in the order documented above.
	stop()
	log.Info().AnErr("cause", stopErr).Dur("grace", opts.ShutdownGrace).Msg("shutting down: draining connections, portal rules stay")
	health.shuttingDown.Store(true)
	svcHealth.Close()
	for i, srv := range servers {
		if srv.name == "healthz" { // not the health socket: only this pod answers there
			shutdownHTTP(servers[i:i+1], log)
		}
	}
	cancelRun()
	wg.Wait()
	if proxier != nil {
		drainCtx, cancel := context.WithTimeout(context.Background(), opts.ShutdownGrace)
		start := time.Now()
		if err := proxier.Shutdown(drainCtx); err != nil {
			log.Warn().Err(err).Msg("drain bound reached")
		} else {
			log.Info().Dur("took", time.Since(start)).Msg("connections drained")
		}
		cancel()
	}
	return stopErr
}

// runComponent runs fn until ctx ends and reports its result on errc: a
// component that returns nil before ctx ends is reported as stopped early.
// fdHolderWait is how long start-up waits for the fd holder's socket to
// appear: in a new pod both containers start at once; a restarted uproxy
// finds the holder running.
const fdHolderWait = 2 * time.Second

func runComponent(ctx context.Context, wg *sync.WaitGroup, errc chan<- error, name string, fn func(context.Context) error) {
	defer wg.Done()
	err := fn(ctx)
	switch {
	case err != nil:
		errc <- fmt.Errorf("%s: %w", name, err)
	case ctx.Err() == nil:
		errc <- fmt.Errorf("%s stopped unexpectedly", name)
	default:
		errc <- nil
	}
}

// waitForStop blocks until a signal (nil) or a component failure (its
// error; an HTTP server's only with --bind-address-hard-fail).
func waitForStop(ctx context.Context, errc <-chan error) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		if err == nil {
			err = errors.New("component stopped unexpectedly")
		}
		return err
	}
}

// shutdownHTTP stops the servers, waiting up to 5s for in-flight requests.
func shutdownHTTP(servers []*httpServer, log zerolog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		if err := s.Shutdown(ctx); err != nil {
			log.Warn().Err(err).Msg("HTTP shutdown")
		}
	}
}

// waitNodeIPs waits up to wait for the Node object's addresses in the
// tracker, then falls back to fallback (the checkpoint's) when not empty,
// else to the default route's source addresses.
func waitNodeIPs(ctx context.Context, t *watch.Tracker, wait time.Duration, fallback []netip.Addr, log zerolog.Logger) ([]netip.Addr, error) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if n := t.Node(); len(n.Addresses) > 0 {
			log.Info().Str("node", n.Name).Interface("ips", n.Addresses).Msg("node IPs from the Node object")
			return n.Addresses, nil
		}
		select {
		case <-ctx.Done():
			return nil, errors.New("interrupted while waiting for the node's addresses")
		case <-tick.C:
			continue
		case <-deadline.C:
		}
		if len(fallback) > 0 {
			log.Info().Interface("ips", fallback).Dur("waited", wait).Msg("node IPs from the state checkpoint (no Node object yet)")
			return fallback, nil
		}
		ips := defaultRouteIPs()
		if len(ips) == 0 {
			return nil, fmt.Errorf("no node IP: the Node object has no addresses after %s and there is no default route", wait)
		}
		log.Warn().Interface("ips", ips).Dur("waited", wait).Msg("node IPs from the default route (no addresses from a Node object)")
		return ips, nil
	}
}

// newPortalProgrammer sets up the iptables programmer and reads back the
// proxy ports of a previous run into pcfg.PreferredPorts, so the first sync
// reuses them and the installed rules are never flushed at start.
func newPortalProgrammer(ctx context.Context, opts *options, nodeIPs []netip.Addr, pcfg *proxy.Config, log zerolog.Logger) (*iptables.Programmer, error) {
	icfg := iptables.Config{
		BindAddr:          opts.BindAddress,
		NodeIPs:           nodeIPs,
		NodePortAddresses: opts.NodePortAddresses,
		CheckPeriod:       opts.SyncPeriod,
		Backend:           opts.IPTablesBackend,
	}
	if opts.NodePortPrimary {
		for _, a := range nodeIPs {
			icfg.NodePortAddresses = append(icfg.NodePortAddresses, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	setupHandover(opts, &icfg, pcfg, log)
	prog, err := iptables.New(icfg, log)
	if err != nil {
		return nil, fmt.Errorf("iptables: %w", err)
	}
	if err := prog.TakeOwnership(ctx); err != nil {
		log.Warn().Err(err).Msg("writing portal rules without agreeing with another uproxy instance on who writes them")
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ports, err := prog.InstalledProxyPorts(rctx)
	if err != nil {
		log.Warn().Err(err).Msg("cannot read proxy ports of a previous run; new ports will be chosen")
	} else if len(ports) > 0 {
		log.Info().Int("ports", len(ports)).Msg("taking back the proxy ports of the installed portal rules")
	}
	pcfg.PreferredPorts = ports
	return prog, nil
}

func registerAll(reg *prometheus.Registry, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("registering metrics: %w", err)
		}
	}
	return nil
}

// ejectAfterResets maps the flag (0: off) to proxy.Config (negative: off).
func ejectAfterResets(n int) int {
	if n == 0 {
		return -1
	}
	return n
}
