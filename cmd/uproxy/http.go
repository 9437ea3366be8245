package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"runtime"

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
