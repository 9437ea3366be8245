package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// httpServer answers like the seed's nginx echo.
type httpServer struct {
	ln  net.Listener
	srv *http.Server
}

// unready is set while a SIGTERMed server keeps accepting but answers every
// HTTP request 503 (--unready-503), as web frameworks do while they shut down.
var unready atomic.Bool

// unreadyHandler answers 503 while unready is set, else passes to next.
func unreadyHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if unready.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func newHTTPServer(addr string, id identity, reset *resetSwitch) (*httpServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http listen %s: %w", addr, err)
	}
	hello := fmt.Sprintf("Hello! I am Pod: %s %s\n", id.name, id.ip)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, hello)
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "n must be a non-negative integer", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		w.Header().Set("X-Pod-Name", id.name)
		_, _ = io.CopyN(w, zeroReader{}, n)
	})
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		d, err := time.ParseDuration(r.URL.Query().Get("d"))
		if err != nil {
			http.Error(w, "d must be a duration", http.StatusBadRequest)
			return
		}
		time.Sleep(d)
		_, _ = io.WriteString(w, hello)
	})
	srv := &http.Server{Handler: unreadyHandler(mux), ReadHeaderTimeout: 10 * time.Second}
	return &httpServer{ln: resetListener{Listener: ln, reset: reset}, srv: srv}, nil
}

func (s *httpServer) serve() error {
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (s *httpServer) shutdown(ctx context.Context) {
	if err := s.srv.Shutdown(ctx); err != nil {
		_ = s.srv.Close()
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// tcpEcho is the redis-like line echo. mu guards conns and closed.
type tcpEcho struct {
	ln     net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func newTCPEcho(addr string, reset *resetSwitch) (*tcpEcho, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("tcp-echo listen %s: %w", addr, err)
	}
	return &tcpEcho{ln: resetListener{Listener: ln, reset: reset}, conns: map[net.Conn]struct{}{}}, nil
}

func (s *tcpEcho) serve() error {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			return err
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go s.echoConn(c)
	}
}

// echoConn owns c and closes it when the peer is done.
func (s *tcpEcho) echoConn(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		_ = c.Close()
	}()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if len(line) > 0 {
			out := line
			if line == "PING\r\n" || line == "PING\n" {
				out = "+PONG\r\n"
			}
			if _, werr := io.WriteString(c, out); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (s *tcpEcho) shutdown(ctx context.Context) {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	_ = s.ln.Close()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		<-done
	}
}

// udpEcho echoes datagrams; DNS A queries get a minimal answer with the pod IP.
type udpEcho struct {
	pc net.PacketConn
	ip netip.Addr
	mu sync.Mutex // mu guards closed
	// closed is set by shutdown so serve can tell a close from a failure.
	closed bool
}

func newUDPEcho(addr string, id identity) (*udpEcho, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("udp-echo listen %s: %w", addr, err)
	}
	ip, _ := netip.ParseAddr(id.ip)
	return &udpEcho{pc: pc, ip: ip}, nil
}

func (s *udpEcho) serve() error {
	buf := make([]byte, 65535)
	for {
		n, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			return err
		}
		out := buf[:n]
		if ans, ok := dnsAnswer(out, s.ip); ok {
			out = ans
		}
		_, _ = s.pc.WriteTo(out, from)
	}
}

func (s *udpEcho) shutdown(context.Context) {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	_ = s.pc.Close()
}

// dnsAnswer builds a reply to a standard query with one question of type A,
// class IN: the question copied, one A record (TTL 0) with ip. Anything else
// is not a DNS A query and gets plain echo.
func dnsAnswer(q []byte, ip netip.Addr) ([]byte, bool) {
	if len(q) < 12 || !ip.Is4() {
		return nil, false
	}
	flags := binary.BigEndian.Uint16(q[2:4])
	if flags&0x8000 != 0 || (flags>>11)&0xf != 0 { // a response, or not QUERY
		return nil, false
	}
	if binary.BigEndian.Uint16(q[4:6]) != 1 || binary.BigEndian.Uint16(q[6:8]) != 0 {
		return nil, false
	}
	i := 12
	for {
		if i >= len(q) {
			return nil, false
		}
		l := int(q[i])
		if l == 0 {
			i++
			break
		}
		if l > 63 {
			return nil, false
		}
		i += 1 + l
	}
	if i+4 > len(q) {
		return nil, false
	}
	qtype, qclass := binary.BigEndian.Uint16(q[i:i+2]), binary.BigEndian.Uint16(q[i+2:i+4])
	if qtype != 1 || qclass != 1 {
		return nil, false
	}
	end := i + 4
	out := make([]byte, 0, end+16)
	out = append(out, q[:end]...)
	// QR=1, opcode 0, AA=1, keep RD, RA=1, rcode 0.
	binary.BigEndian.PutUint16(out[2:4], 0x8400|(flags&0x0100)|0x0080)
	binary.BigEndian.PutUint16(out[6:8], 1)   // ANCOUNT
	binary.BigEndian.PutUint16(out[10:12], 0) // ARCOUNT (EDNS dropped)
	out = append(out, 0xc0, 0x0c, 0, 1, 0, 1) // name ptr, A, IN
	out = append(out, 0, 0, 0, 0, 0, 4)       // TTL 0, RDLENGTH 4
	a := ip.As4()
	out = append(out, a[:]...)
	return out, true
}
