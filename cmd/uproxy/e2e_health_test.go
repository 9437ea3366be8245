package main

import (
	"errors"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// End-to-end tests of the health surfaces: the health socket and
// `uproxy probe` (the DaemonSet's exec probes), and a healthz port held by
// another program (kube-proxy beside uproxy).

// probe runs `uproxy probe` on the world's health socket, as the
// DaemonSet's exec probes do, and returns its exit code and output.
func (w *e2eWorld) probe(t *testing.T, path string) (int, string) {
	t.Helper()
	cmd := exec.Command(uproxyBinary(t), "probe", "--socket", w.socket, "--path", path)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("uproxy probe: %v", err)
	return -1, ""
}

// TestE2EHealthzPortTaken: beside a kube-proxy that holds the healthz port
// (no SO_REUSEPORT), uproxy proxies anyway, warns once, counts the failed
// binds, answers its probes on the socket and binds the port once it is
// free.
func TestE2EHealthzPortTaken(t *testing.T) {
	kubeProxy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer kubeProxy.Close()
	w := newE2EWorld(t, kubeProxy.Addr().String()) // ready through the socket

	if _, err := readName(w.tcpAddr); err != nil {
		t.Fatalf("connection through %s: %v", w.tcpAddr, err)
	}
	_, _, body := get(t, w.metrics+"/metrics")
	for _, want := range []string{`uproxy_http_bind_failures_total\{server="healthz"\} [1-9]`, `uproxy_http_listening\{server="healthz"\} 0`,
		`uproxy_http_listening\{server="metrics"\} 1`, `uproxy_http_listening\{server="health-socket"\} 1`} {
		if !regexp.MustCompile(want).Match(body) {
			t.Errorf("/metrics has no %s:\n%s", want, grepLines(string(body), "uproxy_http_"))
		}
	}

	kubeProxy.Close() // the next try, within 5s, binds
	healthz := w.p.addr(t, "healthz")
	if code, _, body := get(t, healthz+"/healthz"); code != 200 {
		t.Errorf("TCP /healthz after the port was freed = %d: %s", code, body)
	}
	if n := strings.Count(w.p.logText(), "cannot bind the HTTP server"); n != 1 {
		t.Errorf("%d bind warnings, want 1", n)
	}
	w.p.waitLog(t, time.Second, `"message":"serving HTTP"`, `"server":"healthz"`, `"failedBinds":`)
}
