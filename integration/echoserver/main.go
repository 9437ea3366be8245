// Command echoserver is the backend the integration bed runs in every pod
// network namespace. It plays the seeds' workloads:
//
//   - --http: the seed's nginx echo, answering "Hello! I am Pod: <POD_NAME> <POD_IP>\n";
//     /bytes?n=N streams N bytes (bulk transfer), /sleep?d=DURATION answers after
//     a delay (an in-flight request for drain tests);
//   - --tcp-echo: a redis-like line echo ("PING\r\n" gets "+PONG\r\n", any other
//     line is echoed back);
//   - --udp-echo: datagram echo; a datagram that parses as a DNS A query gets a
//     minimal answer carrying POD_IP, so dig shows which pod answered.
//
// Every flag takes a comma-separated list of listen addresses. When all
// listeners are bound it prints "READY" on stdout (the node agent's readiness
// signal). SIGTERM stops accepting, lets in-flight requests and connections
// finish for at most --drain-timeout, then exits 0 (with --unready-503=D it first
// keeps accepting for D and answers every HTTP request 503, as web frameworks do
// while they shut down). SIGUSR1 toggles reset mode:
// new TCP connections are accepted and closed at once with RST (a fault the bed
// injects: "accepts and resets while staying ready").
//
// It is a test fixture, not a product: no TLS, no configuration files.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "echoserver:", err)
		os.Exit(1)
	}
}

// identity is what the server says about itself.
type identity struct {
	name string
	ip   string
}

func run() error {
	var (
		httpAddrs  = pflag.StringSlice("http", nil, "HTTP listen addresses (e.g. :80)")
		tcpAddrs   = pflag.StringSlice("tcp-echo", nil, "raw TCP line-echo listen addresses (e.g. :6379)")
		udpAddrs   = pflag.StringSlice("udp-echo", nil, "UDP echo listen addresses (e.g. :53)")
		drain      = pflag.Duration("drain-timeout", 10*time.Second, "how long SIGTERM waits for in-flight work")
		lingerDone = pflag.Duration("close-linger", 0, "after draining, wait this long before exiting")
		unready503 = pflag.Duration("unready-503", 0, "on SIGTERM, keep accepting this long answering HTTP 503, then drain")
	)
	pflag.Parse()
	id := identity{name: os.Getenv("POD_NAME"), ip: os.Getenv("POD_IP")}
	if id.name == "" {
		id.name, _ = os.Hostname()
	}
	if len(*httpAddrs)+len(*tcpAddrs)+len(*udpAddrs) == 0 {
		return errors.New("no listener: give --http, --tcp-echo or --udp-echo")
	}

	var reset resetSwitch
	var servers []server
	for _, a := range *httpAddrs {
		s, err := newHTTPServer(a, id, &reset)
		if err != nil {
			return err
		}
		servers = append(servers, s)
	}
	for _, a := range *tcpAddrs {
		s, err := newTCPEcho(a, &reset)
		if err != nil {
			return err
		}
		servers = append(servers, s)
	}
	for _, a := range *udpAddrs {
		s, err := newUDPEcho(a, id)
		if err != nil {
			return err
		}
		servers = append(servers, s)
	}

	errc := make(chan error, len(servers))
	for _, s := range servers {
		go func() { errc <- s.serve() }()
	}
	fmt.Println("READY")

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1)
	for {
		select {
		case err := <-errc:
			return fmt.Errorf("listener stopped: %w", err)
		case sig := <-sigs:
			if sig == syscall.SIGUSR1 {
				on := reset.toggle()
				fmt.Fprintf(os.Stderr, "reset mode %v\n", on)
				continue
			}
			if *unready503 > 0 {
				fmt.Fprintf(os.Stderr, "%v: answering 503 for %v\n", sig, *unready503)
				unready.Store(true)
				time.Sleep(*unready503)
			}
			fmt.Fprintf(os.Stderr, "%v: draining (at most %v)\n", sig, *drain)
			ctx, cancel := context.WithTimeout(context.Background(), *drain)
			var wg sync.WaitGroup
			for _, s := range servers {
				wg.Add(1)
				go func() { defer wg.Done(); s.shutdown(ctx) }()
			}
			wg.Wait()
			cancel()
			time.Sleep(*lingerDone)
			fmt.Fprintln(os.Stderr, "drained, exiting")
			return nil
		}
	}
}

// server is one listener of any kind.
type server interface {
	// serve runs until shutdown; it returns nil after shutdown.
	serve() error
	// shutdown stops accepting and waits for in-flight work until ctx ends,
	// then closes what is left.
	shutdown(ctx context.Context)
}

// resetSwitch turns reset mode on and off. mu guards on.
type resetSwitch struct {
	mu sync.Mutex
	on bool
}

func (r *resetSwitch) toggle() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.on = !r.on
	return r.on
}

func (r *resetSwitch) enabled() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.on
}

// resetListener wraps a TCP listener: in reset mode every accepted connection
// is closed with RST (SO_LINGER 0) and never handed to the server.
type resetListener struct {
	net.Listener
	reset *resetSwitch
}

func (l resetListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if !l.reset.enabled() {
			return c, nil
		}
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
}
