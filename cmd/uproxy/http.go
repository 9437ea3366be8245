package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/uproxy/uproxy/cmd/uproxy/version"
)

// serviceTable is the proxy's live view for /debug/services
// (proxy.Proxier.Describe and Snapshot, adapted in run.go).
type serviceTable interface {
	Describe(w io.Writer)
	SnapshotJSON() any
}

// newRegistry returns a registry with the Go runtime, process and build-info
// collectors plus cs.
func newRegistry(cs ...prometheus.Collector) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "uproxy_build_info",
		Help: "A metric with a constant '1' value labeled by the uproxy version and the Go version it was built with.",
	}, []string{"version", "goversion"})
	build.WithLabelValues(version.Get(), runtime.Version()).Set(1)
	all := append([]prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		build,
	}, cs...)
	for _, c := range all {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering metrics: %w", err)
		}
	}
	return reg, nil
}

// metricsHandler serves /metrics, /debug/services and, with profiling,
// /debug/pprof/. Everything else is 404.
func metricsHandler(reg *prometheus.Registry, table serviceTable, profiling bool, log zerolog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:          promLogger{log},
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	}))
	mux.HandleFunc("/debug/services", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("format") {
		case "", "text":
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			table.Describe(w)
		case "json":
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			_ = enc.Encode(table.SnapshotJSON()) // a failed write means the client left
		default:
			http.Error(w, "format must be text or json", http.StatusBadRequest)
		}
	})
	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index) // also heap, goroutine, allocs, block, mutex, threadcreate
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// promLogger adapts zerolog to promhttp's error logger.
type promLogger struct{ log zerolog.Logger }

func (l promLogger) Println(v ...any) { l.log.Error().Msg(fmt.Sprint(v...)) }

// httpServer is one of the two HTTP servers (healthz, metrics).
type httpServer struct {
	name string
	srv  *http.Server
	ln   net.Listener
	done chan error // Serve's result, buffered
}

// startHTTP binds addr now (so a bad or busy address fails start-up, and
// port 0 gives the chosen port in Addr) and serves h until shutdown. The
// socket has SO_REUSEPORT: a second uproxy (DaemonSet surge) shares it.
func startHTTP(name, addr string, h http.Handler, log zerolog.Logger) (*httpServer, error) {
	lc := net.ListenConfig{Control: reusePort}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s server: %w", name, err)
	}
	s := &httpServer{
		name: name,
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 5 * time.Second,
			IdleTimeout:       60 * time.Second,
		},
		ln:   ln,
		done: make(chan error, 1),
	}
	log.Info().Str("server", name).Str("addr", ln.Addr().String()).Msg("serving HTTP")
	go s.serve()
	return s, nil
}

// serve runs the server until shutdown; its error goes to done.
func (s *httpServer) serve() {
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	s.done <- err
}

// Addr is the bound address.
func (s *httpServer) Addr() string { return s.ln.Addr().String() }

// Done delivers Serve's error (nil after a clean shutdown) once.
func (s *httpServer) Done() <-chan error { return s.done }

// Shutdown stops the server, waiting for in-flight requests until ctx ends.
func (s *httpServer) Shutdown(ctx context.Context) error {
	if err := s.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("%s server shutdown: %w", s.name, err)
	}
	return nil
}
