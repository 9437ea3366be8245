package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

// logBuffer collects log lines written from several goroutines.
type logBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// count is the number of lines containing every string in all.
func (b *logBuffer) count(all ...string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, line := range strings.Split(b.buf.String(), "\n") {
		match := line != ""
		for _, s := range all {
			match = match && strings.Contains(line, s)
		}
		if match {
			n++
		}
	}
	return n
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls cond every 5ms until it holds or within passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// getOn GETs path from a server listening on addr over network and returns
// the status code and body.
func getOn(t *testing.T, network, addr, path string) (int, string) {
	t.Helper()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("http://uproxy" + path)
	if err != nil {
		t.Fatalf("GET %s on %s %s: %v", path, network, addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// staleSocket leaves a socket file at path that nothing listens on, as a
// killed uproxy does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
}

// TestHTTPServerBind: a server whose address is taken keeps retrying (one
// warning per streak, every failure counted) and serves once the address
// is free; with hardFail the first failure is returned instead.
func TestHTTPServerBind(t *testing.T) {
	// Each obstacle prepares the address the server binds and returns a
	// function that frees it (nil: nothing to free).
	type obstacle func(t *testing.T) (addr string, free func())
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	holdTCP := func(t *testing.T) (string, func()) { // another program, no SO_REUSEPORT (kube-proxy)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln.Addr().String(), func() { ln.Close() }
	}
	tests := map[string]struct {
		network  string
		obstacle obstacle
		hardFail bool
		wantErr  string // startHTTP's error with hardFail
		failures int    // failed binds to wait for before freeing the address; 0: binds at once
		never    bool   // the address is never freed: Shutdown while retrying
	}{
		"tcp free": {
			network:  "tcp",
			obstacle: func(*testing.T) (string, func()) { return "127.0.0.1:0", nil },
		},
		"tcp shared with another uproxy": {
			network: "tcp",
			obstacle: func(t *testing.T) (string, func()) { // a surging pod: SO_REUSEPORT on both, both answer
				other := startTestServer(t, "healthz", serverConfig{network: "tcp", addr: "127.0.0.1:0", metrics: newServerMetrics()}, ok)
				return other.Addr(), nil
			},
		},
		"tcp held by kube-proxy, hard fail":  {network: "tcp", obstacle: holdTCP, hardFail: true, wantErr: "address already in use"},
		"tcp held by kube-proxy until freed": {network: "tcp", obstacle: holdTCP, failures: 3},
		"tcp held for good, shut down":       {network: "tcp", obstacle: holdTCP, failures: 2, never: true},
		"unix free": {
			network:  "unix",
			obstacle: func(t *testing.T) (string, func()) { return filepath.Join(t.TempDir(), "h.sock"), nil },
		},
		"unix stale socket of a dead process": {
			network: "unix",
			obstacle: func(t *testing.T) (string, func()) {
				p := filepath.Join(t.TempDir(), "h.sock")
				staleSocket(t, p)
				return p, nil
			},
		},
		"unix served by another process until it stops": {
			network: "unix",
			obstacle: func(t *testing.T) (string, func()) {
				p := filepath.Join(t.TempDir(), "h.sock")
				ln, err := net.Listen("unix", p)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ln.Close() })
				return p, func() { ln.Close() } // removes the file
			},
			failures: 3,
		},
		"unix path is a regular file": {
			network: "unix",
			obstacle: func(t *testing.T) (string, func()) {
				p := filepath.Join(t.TempDir(), "h.sock")
				if err := os.WriteFile(p, nil, 0o600); err != nil {
					t.Fatal(err)
				}
				return p, nil
			},
			hardFail: true, wantErr: "exists and is not a socket",
		},
		"unix directory missing": {
			network: "unix",
			obstacle: func(t *testing.T) (string, func()) {
				return filepath.Join(t.TempDir(), "missing", "h.sock"), nil
			},
			hardFail: true, wantErr: "no such file or directory",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			addr, free := tc.obstacle(t)
			var logs logBuffer
			log := zerolog.New(io.MultiWriter(&logs, zerolog.NewTestWriter(t))).Level(zerolog.DebugLevel)
			m := newServerMetrics()
			fatal := make(chan error, 1)
			cfg := serverConfig{network: tc.network, addr: addr, hardFail: tc.hardFail, fatal: fatal, retry: 10 * time.Millisecond, metrics: m}
			s, err := startHTTP("healthz", cfg, ok, log)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "healthz server") {
					t.Fatalf("startHTTP = %v, want an error naming the server and containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("startHTTP: %v", err)
			}
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := s.Shutdown(ctx); err != nil {
					t.Error(err)
				}
			})
			failures := func() float64 { return testutil.ToFloat64(m.bindFailures.WithLabelValues("healthz")) }
			listening := func() float64 { return testutil.ToFloat64(m.listening.WithLabelValues("healthz")) }

			if tc.failures > 0 {
				if s.Addr() != "" || listening() != 0 {
					t.Fatalf("bound %q (listening %v) while the address is taken", s.Addr(), listening())
				}
				waitFor(t, 10*time.Second, "failed binds", func() bool { return failures() >= float64(tc.failures) })
				if tc.never {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					if err := s.Shutdown(ctx); err != nil {
						t.Fatal(err)
					}
					select {
					case <-s.Done():
					default:
						t.Fatal("Shutdown returned before the retry loop ended")
					}
				} else {
					free()
				}
			}
			if !tc.never {
				waitFor(t, 10*time.Second, "the server listens", func() bool { return s.Addr() != "" })
				if code, body := getOn(t, tc.network, s.Addr(), "/"); code != 200 || body != "ok" {
					t.Errorf("GET = %d %q, want 200 ok", code, body)
				}
				if listening() != 1 {
					t.Errorf("uproxy_http_listening = %v, want 1", listening())
				}
			}

			n := int(failures())
			if n < tc.failures || (tc.failures == 0 && n != 0) {
				t.Errorf("uproxy_http_bind_failures_total = %d, want >= %d", n, tc.failures)
			}
			warn := logs.count(`"level":"warn"`, "cannot bind the HTTP server", `"server":"healthz"`)
			again := logs.count(`"level":"debug"`, "bind failed again")
			if wantWarn := min(n, 1); warn != wantWarn || again != n-wantWarn {
				t.Errorf("%d failed binds logged %d warnings and %d debug lines, want %d and %d", n, warn, again, wantWarn, n-wantWarn)
			}
			if !tc.never {
				served := `"failedBinds":` + itoa(n)
				if n == 0 {
					served = `"addr":"` + s.Addr() + `"`
				}
				if logs.count(`"message":"serving HTTP"`, `"server":"healthz"`, served) != 1 {
					t.Errorf("no serving line with %s:\n%s", served, logs.String())
				}
			}
			select {
			case err := <-fatal:
				t.Errorf("fatal error without hard fail: %v", err)
			default:
			}
		})
	}
}

// TestHTTPServerShutdownTwice: Shutdown is safe twice, and a unix socket's
// file is gone after it.
func TestHTTPServerShutdownTwice(t *testing.T) {
	p := filepath.Join(t.TempDir(), "h.sock")
	s, err := startHTTP("health-socket", serverConfig{network: "unix", addr: p, metrics: newServerMetrics()},
		http.NotFoundHandler(), zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 2 {
		if err := s.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Lstat(p); !os.IsNotExist(err) {
		t.Errorf("socket file after shutdown: %v", err)
	}
}
