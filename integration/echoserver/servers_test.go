package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"
)

// query builds a DNS query for name with the given type and flags.
func query(name string, qtype uint16, flags uint16, arcount uint16) []byte {
	q := []byte{0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(q[2:4], flags)
	binary.BigEndian.PutUint16(q[10:12], arcount)
	start := 0
	for i := 0; i <= len(name); i++ {
		if i == len(name) || name[i] == '.' {
			if i > start {
				q = append(q, byte(i-start))
				q = append(q, name[start:i]...)
			}
			start = i + 1
		}
	}
	q = append(q, 0)
	q = binary.BigEndian.AppendUint16(q, qtype)
	q = binary.BigEndian.AppendUint16(q, 1)
	if arcount > 0 { // an EDNS OPT record, as dig sends
		q = append(q, 0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0)
	}
	return q
}

func TestDNSAnswer(t *testing.T) {
	ip := netip.MustParseAddr("10.244.0.7")
	cases := map[string]struct {
		in     []byte
		answer bool
	}{
		"A query":            {in: query("echo.example.", 1, 0x0100, 0), answer: true},
		"A query with EDNS":  {in: query("echo.example.", 1, 0x0120, 1), answer: true},
		"AAAA query is echo": {in: query("echo.example.", 28, 0x0100, 0)},
		"response is echo":   {in: query("echo.example.", 1, 0x8100, 0)},
		"short datagram":     {in: []byte("hello")},
		"truncated question": {in: query("echo.example.", 1, 0x0100, 0)[:20]},
		"plain text is echo": {in: []byte("hello-udp and some more text")},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			out, ok := dnsAnswer(tc.in, ip)
			if ok != tc.answer {
				t.Fatalf("answered=%v, want %v", ok, tc.answer)
			}
			if !ok {
				return
			}
			if out[2]&0x80 == 0 || binary.BigEndian.Uint16(out[6:8]) != 1 {
				t.Fatalf("not a response with one answer: % x", out)
			}
			if got := netip.AddrFrom4([4]byte(out[len(out)-4:])); got != ip {
				t.Fatalf("A record %v, want %v", got, ip)
			}
		})
	}
}

func TestTCPEchoAndDrain(t *testing.T) {
	var reset resetSwitch
	s, err := newTCPEcho("127.0.0.1:0", &reset)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.serve() }()
	addr := s.ln.Addr().String()

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	cases := map[string]struct{ in, want string }{
		"ping":      {"PING\r\n", "+PONG\r\n"},
		"echo line": {"SET k v\r\n", "SET k v\r\n"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := io.WriteString(c, tc.in); err != nil {
				t.Fatal(err)
			}
			got, err := r.ReadString('\n')
			if err != nil || got != tc.want {
				t.Fatalf("got %q (%v), want %q", got, err, tc.want)
			}
		})
	}

	// Shutdown stops accepting but the open connection keeps working until
	// the client is done.
	done := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.shutdown(ctx)
		close(done)
	}()
	time.Sleep(100 * time.Millisecond)
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("new connection accepted after shutdown")
	}
	if _, err := io.WriteString(c, "PING\n"); err != nil {
		t.Fatal(err)
	}
	if got, err := r.ReadString('\n'); err != nil || got != "+PONG\r\n" {
		t.Fatalf("in-flight connection after shutdown: %q %v", got, err)
	}
	c.Close()
	<-done
	if err := <-served; err != nil {
		t.Fatalf("serve: %v", err)
	}
}

func TestUnreadyHandler(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "hello") })
	for name, tc := range map[string]struct {
		unready bool
		want    int
	}{
		"serving":       {false, http.StatusOK},
		"shutting down": {true, http.StatusServiceUnavailable},
	} {
		t.Run(name, func(t *testing.T) {
			unready.Store(tc.unready)
			defer unready.Store(false)
			rec := httptest.NewRecorder()
			unreadyHandler(ok).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/catalogdetail", nil))
			if rec.Code != tc.want {
				t.Errorf("status %d, want %d", rec.Code, tc.want)
			}
		})
	}
}
