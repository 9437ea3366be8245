// Package healthcheck serves the health check node ports of LoadBalancer
// Services with externalTrafficPolicy Local, as kube-proxy's
// pkg/proxy/healthcheck/service_health.go does: one HTTP listener per
// Service on its spec.healthCheckNodePort, answering 200 while this node has
// a ready endpoint of the Service and the proxy is healthy, 503 otherwise,
// so cloud load balancers send such a Service's traffic only to nodes that
// can serve it without leaving the node.
//
// It learns Services and endpoints by wrapping the proxy's svc.Sink (Wrap):
// it sees exactly what the proxy is told, from the same single goroutine.
// It does not proxy anything and does not touch iptables.
package healthcheck

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Config configures a Server.
type Config struct {
	// NodeName is this node: endpoints on it count as local.
	NodeName string
	// BindIPs returns the addresses to listen on (kube-proxy: the node IPs
	// within --nodeport-addresses); nil, or an empty result, listens on
	// every address. It is called when a listener opens.
	BindIPs func() []netip.Addr
	// Healthy is the proxy's own health ("serviceProxyHealthy", kube-proxy's
	// healthz IsHealthy); nil means always healthy.
	Healthy func() bool
	// Listen opens a listener (nil: net.ListenConfig{}.Listen). uproxy
	// passes one that sets SO_REUSEPORT, so that an instance surging in
	// beside the old one can open the same ports.
	Listen func(ctx context.Context, network, addr string) (net.Listener, error)
}

// Service names a Service.
type Service struct{ Namespace, Name string }

func (s Service) String() string { return s.Namespace + "/" + s.Name }

// Server runs the health check listeners. Its Sync method is called from
// one goroutine (the Sink's caller); handlers read the published counts.
// Listen errors (a port another program holds) are logged and retried at
// the next Sync.
type Server struct {
	cfg Config
	log zerolog.Logger

	// mu guards open and closed. Sync runs on the sink's goroutine, Close
	// on main's at shutdown; binding a listener under it is a local syscall.
	mu     sync.Mutex
	open   map[Service]*instance
	closed bool
	// counts is the latest local ready endpoint count per Service, replaced
	// whole by Sync; handlers only load it.
	counts atomic.Pointer[map[Service]int]
}

// instance is one Service's listeners.
type instance struct {
	port    uint16
	servers []*http.Server
}

// New returns a Server with no listeners.
func New(cfg Config, log zerolog.Logger) *Server {
	s := &Server{cfg: cfg, log: log.With().Str("component", "healthcheck").Logger(), open: map[Service]*instance{}}
	s.counts.Store(&map[Service]int{})
	return s
}

// Sync opens a listener for every Service in ports (Service -> health check
// node port) not listening there yet, closes the others, and publishes the
// local ready endpoint counts. A listener that fails to open is logged and
// retried at the next Sync (as kube-proxy's SyncServices).
func (s *Server) Sync(ports map[Service]uint16, counts map[Service]int) {
	s.counts.Store(&counts)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	for name, in := range s.open {
		if p, ok := ports[name]; !ok || p != in.port {
			in.close()
			delete(s.open, name)
			s.log.Info().Stringer("service", name).Uint16("port", in.port).Msg("health check closed")
		}
	}
	for name, port := range ports {
		if s.open[name] != nil {
			continue
		}
		in, err := s.listen(name, port)
		if err != nil {
			s.log.Error().Err(err).Stringer("service", name).Uint16("port", port).Msg("cannot open health check node port; retrying at the next sync")
			continue
		}
		s.open[name] = in
		s.log.Info().Stringer("service", name).Uint16("port", port).Msg("health check listening")
	}
}

// listen opens the listeners of one Service; all or none.
func (s *Server) listen(name Service, port uint16) (*instance, error) {
	var ips []netip.Addr
	if s.cfg.BindIPs != nil {
		ips = s.cfg.BindIPs()
	}
	addrs := []string{":" + strconv.Itoa(int(port))}
	if len(ips) > 0 {
		addrs = addrs[:0]
		for _, ip := range ips {
			addrs = append(addrs, netip.AddrPortFrom(ip, port).String())
		}
	}
	in := &instance{port: port}
	h := handler{name: name, s: s}
	listen := s.cfg.Listen
	if listen == nil {
		listen = (&net.ListenConfig{}).Listen
	}
	for _, a := range addrs {
		ln, err := listen(context.Background(), "tcp", a)
		if err != nil {
			in.close()
			return nil, err
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
		in.servers = append(in.servers, srv)
		go s.serve(srv, ln, name)
	}
	return in, nil
}

// serve runs one listener until it is closed.
func (s *Server) serve(srv *http.Server, ln net.Listener, name Service) {
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error().Err(err).Stringer("service", name).Msg("health check server stopped")
	}
}

func (in *instance) close() {
	for _, srv := range in.servers {
		_ = srv.Close() // closes the listener; Serve returns ErrServerClosed
	}
}

// Close closes every listener; later Syncs open none. uproxy calls it
// when shutdown starts, so that the load balancers' checks reach a surging
// instance sharing the ports, or fail.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for name, in := range s.open {
		in.close()
		delete(s.open, name)
	}
}

// Count returns the published local endpoint count of a Service.
func (s *Server) Count(name Service) int { return (*s.counts.Load())[name] }

// handler answers one Service's health checks.
type handler struct {
	name Service
	s    *Server
}

// response is kube-proxy's body, field for field and in its order.
type response struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

// ServeHTTP answers as kube-proxy's hcHandler: 200 when the Service has a
// local ready endpoint and the proxy is healthy, else 503, with a JSON body
// laid out as kube-proxy's (tab-indented).
func (h handler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	var r response
	r.Service.Namespace, r.Service.Name = h.name.Namespace, h.name.Name
	r.LocalEndpoints = h.s.Count(h.name)
	r.ServiceProxyHealthy = h.s.cfg.Healthy == nil || h.s.cfg.Healthy()
	body, _ := json.MarshalIndent(r, "", "\t") // cannot fail: fixed types
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	// Older kube-proxy versions sent this; some load balancers weigh by it.
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(r.LocalEndpoints))
	if r.LocalEndpoints > 0 && r.ServiceProxyHealthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = w.Write(body) // a failed write means the prober left
}
