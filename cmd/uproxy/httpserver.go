package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// bindRetry is how long a server waits before it binds again after a failed
// bind or serve, as kube-proxy (wait.Until(serve, 5*time.Second)).
const bindRetry = 5 * time.Second

// serverConfig says where an HTTP server listens and what happens when it
// cannot.
type serverConfig struct {
	network string // "tcp" (addr is IP:port, bound with SO_REUSEPORT) or "unix" (addr is a socket path)
	addr    string

	// hardFail (--bind-address-hard-fail) makes a failed bind or serve
	// fatal: the first bind's error is returned by startHTTP, a later
	// failure goes to fatal. Otherwise the server binds again every retry
	// and the proxy keeps running without it.
	hardFail bool
	fatal    chan<- error // at most one send per server; must have room for it
	retry    time.Duration
	metrics  *serverMetrics
}

// serverMetrics count the HTTP servers' binds, labelled by server name.
type serverMetrics struct {
	bindFailures *prometheus.CounterVec // uproxy_http_bind_failures_total{server}
	listening    *prometheus.GaugeVec   // uproxy_http_listening{server}
}

func newServerMetrics() *serverMetrics {
	return &serverMetrics{
		bindFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "uproxy_http_bind_failures_total",
			Help: "Failed binds of an HTTP server's address (healthz, metrics, health-socket); retried every 5s, the proxy keeps running.",
		}, []string{"server"}),
		listening: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "uproxy_http_listening",
			Help: "1 while the HTTP server (healthz, metrics, health-socket) has its address bound, 0 while it retries.",
		}, []string{"server"}),
	}
}

// Collectors are the bind metrics, for the metrics registry.
func (m *serverMetrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.bindFailures, m.listening}
}

// httpServer is one of uproxy's HTTP servers (healthz, metrics, the health
// socket). A bind that fails (kube-proxy already holds :10256 and binds it
// without SO_REUSEPORT) is logged once per failure streak, counted and
// retried; the data plane does not depend on these servers.
type httpServer struct {
	name string
	cfg  serverConfig
	srv  *http.Server
	log  zerolog.Logger

	bound    atomic.Pointer[string] // the listening address; nil while unbound
	stop     chan struct{}          // closed by Shutdown
	stopOnce sync.Once
	done     chan struct{} // closed when serveLoop returns
}

// startHTTP binds cfg.addr once now, so that port 0 gives the chosen port in
// Addr at once and, with hardFail, a busy address fails start-up. Without
// hardFail a failed bind is retried in the background and startHTTP
// returns the server anyway. h is served until Shutdown.
func startHTTP(name string, cfg serverConfig, h http.Handler, log zerolog.Logger) (*httpServer, error) {
	if cfg.retry <= 0 {
		cfg.retry = bindRetry
	}
	s := &httpServer{
		name: name,
		cfg:  cfg,
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 5 * time.Second,
			IdleTimeout:       60 * time.Second,
		},
		log:  log,
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	cfg.metrics.bindFailures.WithLabelValues(name) // exported as 0 from the start
	cfg.metrics.listening.WithLabelValues(name).Set(0)
	ln, err := s.listen()
	streak := 0
	switch {
	case err == nil:
		s.listening(ln, 0)
	case cfg.hardFail:
		return nil, fmt.Errorf("%s server: %w", name, err)
	default:
		streak = 1
		s.bindFailed(err, streak)
	}
	go s.serveLoop(ln, streak)
	return s, nil
}

// listen binds the server's address.
func (s *httpServer) listen() (net.Listener, error) {
	if s.cfg.network == "unix" {
		return listenHealthSocket(s.cfg.addr)
	}
	// SO_REUSEPORT: a second uproxy (DaemonSet surge, restart) shares it.
	lc := net.ListenConfig{Control: reusePort}
	return lc.Listen(context.Background(), "tcp", s.cfg.addr)
}

// serveLoop serves on ln (nil when the first bind failed) and, whenever
// there is no listener, binds again every retry until Shutdown. streak is
// the number of failed binds since the server last listened.
func (s *httpServer) serveLoop(ln net.Listener, streak int) {
	defer close(s.done)
	for {
		if ln != nil {
			err := s.srv.Serve(ln) // closes ln
			s.bound.Store(nil)
			s.cfg.metrics.listening.WithLabelValues(s.name).Set(0)
			if errors.Is(err, http.ErrServerClosed) {
				return
			}
			if s.cfg.hardFail {
				s.cfg.fatal <- fmt.Errorf("%s server: %w", s.name, err)
				return
			}
			s.log.Error().Err(err).Str("server", s.name).Dur("retry", s.cfg.retry).Msg("HTTP server failed; binding it again")
			ln = nil
		}
		select {
		case <-s.stop:
			return
		case <-time.After(s.cfg.retry):
		}
		var err error
		if ln, err = s.listen(); err != nil {
			streak++
			s.bindFailed(err, streak)
			continue
		}
		s.listening(ln, streak)
		streak = 0
	}
}

// listening records a successful bind. The log line's "server" and "addr"
// fields, in this order, are what the end-to-end tests read.
func (s *httpServer) listening(ln net.Listener, failedBinds int) {
	addr := ln.Addr().String()
	s.bound.Store(&addr)
	s.cfg.metrics.listening.WithLabelValues(s.name).Set(1)
	ev := s.log.Info().Str("server", s.name).Str("addr", addr)
	if failedBinds > 0 {
		ev = ev.Int("failedBinds", failedBinds)
	}
	ev.Msg("serving HTTP")
}

// bindFailed counts a failed bind and logs the first of a streak at warn,
// the others at debug: a port held for hours must not fill the log.
func (s *httpServer) bindFailed(err error, streak int) {
	s.cfg.metrics.bindFailures.WithLabelValues(s.name).Inc()
	if streak == 1 {
		s.log.Warn().Err(err).Str("server", s.name).Str("bindAddress", s.cfg.addr).Dur("retry", s.cfg.retry).
			Msg("cannot bind the HTTP server; retrying until it binds (the proxy keeps running; counted in uproxy_http_bind_failures_total)")
		return
	}
	s.log.Debug().Err(err).Str("server", s.name).Int("failedBinds", streak).Msg("HTTP server bind failed again")
}

// Addr is the bound address, or "" while the server is not listening.
func (s *httpServer) Addr() string {
	if a := s.bound.Load(); a != nil {
		return *a
	}
	return ""
}

// Done is closed when the server has stopped for good: after Shutdown, or
// after a hard-fail error went to cfg.fatal.
func (s *httpServer) Done() <-chan struct{} { return s.done }

// Shutdown stops the server (and its bind retries), waiting for in-flight
// requests until ctx ends. It is safe to call more than once.
func (s *httpServer) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() { close(s.stop) })
	if err := s.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("%s server shutdown: %w", s.name, err)
	}
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s server shutdown: %w", s.name, ctx.Err())
	}
}
