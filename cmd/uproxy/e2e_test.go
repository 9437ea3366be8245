package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The end-to-end tests run the real binary (built once per test run into a
// temporary directory) from manifests in direct portal mode: no root, no
// iptables, traffic only on 127.0.0.0/8.

const e2eManifest = `apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: default
spec:
  clusterIP: 127.0.0.77
  ports:
  - {name: tcp, port: %[1]d, protocol: TCP}
  - {name: udp, port: %[2]d, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-abc
  namespace: default
  labels: {kubernetes.io/service-name: echo}
addressType: IPv4
ports:
- {name: tcp, port: %[3]d, protocol: TCP}
endpoints:
- addresses: ["127.0.0.1"]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: echo-a}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-def
  namespace: default
  labels: {kubernetes.io/service-name: echo}
addressType: IPv4
ports:
- {name: tcp, port: %[4]d, protocol: TCP}
endpoints:
- addresses: ["127.0.0.1"]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: echo-b}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-ghi
  namespace: default
  labels: {kubernetes.io/service-name: echo}
addressType: IPv4
ports:
- {name: tcp, port: %[5]d, protocol: TCP}
endpoints:
- addresses: ["127.0.0.1"]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: echo-c}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-udp
  namespace: default
  labels: {kubernetes.io/service-name: echo}
addressType: IPv4
ports:
- {name: udp, port: %[6]d, protocol: UDP}
endpoints:
- addresses: ["127.0.0.1"]
  conditions: {ready: true}
`

// e2eWorld is a running uproxy in front of three TCP echo backends and one
// UDP echo backend, ready (`uproxy probe` on its health socket says 200).
type e2eWorld struct {
	p                *process
	healthz, metrics string // http://addr; healthz "" when its address was taken
	socket           string // --health-socket
	tcpAddr, udpAddr string // the service's portal addresses
}

// newE2EWorld starts the world; healthzAddr "" is 127.0.0.1:0.
func newE2EWorld(t *testing.T, healthzAddr string) *e2eWorld {
	t.Helper()
	backends := []*net.TCPAddr{echoServer(t, "echo-a"), echoServer(t, "echo-b"), echoServer(t, "echo-c")}
	udpBackend := udpEcho(t)
	tcpPort, udpPort := freePort(t, "tcp", "127.0.0.77"), freePort(t, "udp", "127.0.0.77")
	dir := t.TempDir()
	manifest := fmt.Sprintf(e2eManifest, tcpPort, udpPort, backends[0].Port, backends[1].Port, backends[2].Port, udpBackend.Port)
	if err := os.WriteFile(filepath.Join(dir, "echo.yaml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}

	socket := filepath.Join(t.TempDir(), "health.sock") // not in dir: the source watches it
	given := healthzAddr != ""
	if !given {
		healthzAddr = "127.0.0.1:0"
	}
	p := startUproxy(t, "--manifests", dir, "--portal-mode", "direct", "--hostname-override", "e2e-node",
		"--healthz-bind-address", healthzAddr, "--metrics-bind-address", "127.0.0.1:0", "--health-socket", socket,
		"--shutdown-grace", "20s")
	w := &e2eWorld{
		p: p, metrics: p.addr(t, "metrics"), socket: socket,
		tcpAddr: fmt.Sprintf("127.0.0.77:%d", tcpPort), udpAddr: fmt.Sprintf("127.0.0.77:%d", udpPort),
	}
	if !given {
		w.healthz = p.addr(t, "healthz")
	}

	// Ready: the DaemonSet's readiness probe passes once the manifests are
	// applied.
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, out := w.probe(t, "/healthz")
		if code == 0 {
			decodeHealth(t, []byte(out), "lastUpdated", "currentTime", "nodeEligible", "healthy")
			return w
		}
		if time.Now().After(deadline) {
			t.Fatalf("uproxy probe still %d: %s", code, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// holdConnection opens a connection through the service and reads the
// backend's greeting.
func holdConnection(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := bufio.NewReader(c)
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	return c, r
}

func TestE2EManifestsDirect(t *testing.T) {
	w := newE2EWorld(t, "")
	p, metrics, svcAddr := w.p, w.metrics, w.tcpAddr

	// The TCP healthz (node health checks) agrees with the socket.
	code, _, body := get(t, w.healthz+"/healthz")
	if code != 200 {
		t.Errorf("TCP /healthz = %d: %s", code, body)
	}
	decodeHealth(t, body, "lastUpdated", "currentTime", "nodeEligible", "healthy")
	if code, out := w.probe(t, "/livez"); code != 0 {
		t.Errorf("uproxy probe --path /livez = %d: %s", code, out)
	}

	// Round robin over TCP: 30 sequential connections, 10 per backend.
	counts := map[string]int{}
	for range 30 {
		name, err := readName(svcAddr)
		if err != nil {
			t.Fatalf("connection through %s: %v", svcAddr, err)
		}
		counts[name]++
	}
	if want := map[string]int{"echo-a": 10, "echo-b": 10, "echo-c": 10}; !mapsEqual(counts, want) {
		t.Errorf("round robin over 30 connections = %v, want %v", counts, want)
	}

	// UDP: an answer through the portal.
	uc, err := net.Dial("udp", w.udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	if _, err := uc.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	_ = uc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 100)
	n, err := uc.Read(buf)
	if err != nil || string(buf[:n]) != "udp-echo:ping" {
		t.Errorf("UDP answer = %q, %v; want udp-echo:ping", buf[:n], err)
	}

	// /debug/services, text and JSON.
	code, _, text := get(t, metrics+"/debug/services")
	if code != 200 || !strings.Contains(string(text), "default/echo:tcp") || !strings.Contains(string(text), svcAddr) {
		t.Errorf("/debug/services = %d:\n%s", code, text)
	}
	t.Logf("/debug/services:\n%s", text)
	code, _, js := get(t, metrics+"/debug/services?format=json")
	var ports []struct {
		Name             string            `json:"name"`
		Protocol         string            `json:"protocol"`
		Portals          []string          `json:"portals"`
		TotalConnections uint64            `json:"totalConnections"`
		Endpoints        []json.RawMessage `json:"endpoints"`
	}
	if err := json.Unmarshal(js, &ports); code != 200 || err != nil {
		t.Fatalf("/debug/services?format=json = %d, %v:\n%s", code, err, js)
	}
	i := slices.IndexFunc(ports, func(p struct {
		Name             string            `json:"name"`
		Protocol         string            `json:"protocol"`
		Portals          []string          `json:"portals"`
		TotalConnections uint64            `json:"totalConnections"`
		Endpoints        []json.RawMessage `json:"endpoints"`
	}) bool {
		return p.Name == "default/echo:tcp"
	})
	if i < 0 || ports[i].Protocol != "TCP" || len(ports[i].Endpoints) != 3 || ports[i].TotalConnections != 30 ||
		!slices.Contains(ports[i].Portals, svcAddr) {
		t.Errorf("default/echo:tcp in JSON = %+v", ports)
	}

	// Metrics after traffic.
	code, _, body = get(t, metrics+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	names := metricNames(string(body))
	for _, want := range []string{"uproxy_connections_total", "uproxy_connections_active", "uproxy_bytes_total",
		"uproxy_udp_sessions_total", "uproxy_listeners", "uproxy_endpoint_connections_total", "uproxy_build_info",
		"kubeproxy_sync_proxy_rules_duration_seconds", "kubeproxy_network_programming_duration_seconds",
		"kubeproxy_proxy_healthz_total", "process_open_fds", "go_goroutines"} {
		if !slices.Contains(names, want) {
			t.Errorf("/metrics has no %s", want)
		}
	}
	if !regexp.MustCompile(`uproxy_connections_total\{[^}]*service_port="default/echo:tcp"[^}]*\} 30`).Match(body) {
		t.Errorf("uproxy_connections_total for default/echo:tcp is not 30:\n%s", grepLines(string(body), "uproxy_connections_total"))
	}
	var ours []string
	for _, n := range names {
		if strings.HasPrefix(n, "uproxy_") || strings.HasPrefix(n, "kubeproxy_") {
			ours = append(ours, n)
		}
	}
	t.Logf("metric names: %s", strings.Join(ours, " "))

	// SIGTERM with a connection open: the listener closes, the open
	// connection keeps working until it ends, then uproxy exits 0.
	held, hr := holdConnection(t, svcAddr)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, 10*time.Second, `"message":"stopped listening"`, `"service":"default/echo:tcp"`)
	if c, err := net.DialTimeout("tcp", svcAddr, time.Second); err == nil {
		c.Close()
		t.Errorf("new connection to %s accepted after SIGTERM", svcAddr)
	}
	if _, err := fmt.Fprintf(held, "still here\n"); err != nil {
		t.Fatalf("write on the draining connection: %v", err)
	}
	if line, err := hr.ReadString('\n'); err != nil || line != "still here\n" {
		t.Fatalf("echo on the draining connection = %q, %v", line, err)
	}
	held.Close()
	if code := p.waitExit(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0", code)
	}
	if !strings.Contains(p.logText(), "uproxy stopped") {
		t.Errorf("no clean stop in the log")
	}
}

// TestE2ESecondSignal: a second SIGTERM during the drain ends uproxy at once
// (the default signal action), without waiting for --shutdown-grace.
func TestE2ESecondSignal(t *testing.T) {
	w := newE2EWorld(t, "")
	holdConnection(t, w.tcpAddr) // keeps the drain waiting
	if err := w.p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	w.p.waitLog(t, 10*time.Second, `"message":"stopped listening"`, `"service":"default/echo:tcp"`)
	select {
	case <-w.p.exited:
		t.Fatalf("uproxy exited during the drain with a connection open: %v", w.p.err)
	case <-time.After(200 * time.Millisecond):
	}
	// During the drain the health socket still answers: not ready, alive
	// (the exec liveness probe must not kill a draining uproxy).
	if code, out := w.probe(t, "/healthz"); code != 1 || !strings.Contains(out, "503 Service Unavailable: shutting down") {
		t.Errorf("readiness probe during the drain = %d %q, want 1 shutting down", code, out)
	}
	if code, out := w.probe(t, "/livez"); code != 0 {
		t.Errorf("liveness probe during the drain = %d %q, want 0", code, out)
	}
	if err := w.p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	w.p.waitExit(t, 10*time.Second) // well under the 20s grace
	ee, ok := w.p.err.(*exec.ExitError)
	if !ok {
		t.Fatalf("exit %v, want killed by SIGTERM", w.p.err)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("exit status %v, want killed by SIGTERM", ee)
	}
}

func TestE2ECommandLine(t *testing.T) {
	bin := uproxyBinary(t)
	held, err := net.Listen("tcp", "127.0.0.1:0") // as kube-proxy holds :10256
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	tests := map[string]struct {
		args     []string
		code     int
		stdout   string // substring
		stderr   string // exact, "" = anything
		logHas   string // substring of stderr
		oneLine  bool
		noStderr bool
	}{
		"version":      {args: []string{"--version"}, code: 0, stdout: "uproxy e2e-test (go"},
		"help":         {args: []string{"--help"}, code: 0, stdout: "--portal-mode string"},
		"unknown flag": {args: []string{"--proxy-mode=ipvs"}, code: 2, stderr: "uproxy: unknown flag: --proxy-mode\n"},
		"bad value": {
			args: []string{"--udp-timeout=0s"}, code: 2,
			stderr: "uproxy: invalid --udp-timeout 0s: must be greater than 0\n",
		},
		"bad port range": {
			args: []string{"--proxy-port-range=9-1"}, code: 2,
			stderr: "uproxy: invalid --proxy-port-range: port range \"9-1\": last port 1 is below first port 9\n",
		},
		"bind hard fail": {
			args: []string{"--manifests=/nonexistent/uproxy", "--portal-mode=direct", "--bind-address-hard-fail",
				"--healthz-bind-address=" + held.Addr().String(), "--metrics-bind-address="},
			code: 1, logHas: `"error":"healthz server: listen tcp ` + held.Addr().String() + `: bind: address already in use"`,
		},
		"probe without socket": {args: []string{"probe"}, code: 2, stderr: "uproxy probe: --socket is required\n"},
		"missing manifests": {
			args: []string{"--manifests=/nonexistent/uproxy", "--portal-mode=direct", "--healthz-bind-address=", "--metrics-bind-address="},
			code: 1,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, tc.args...)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.code {
				t.Errorf("exit code %d, want %d; stderr %s", code, tc.code, stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.stdout) {
				t.Errorf("stdout %q does not contain %q", stdout.String(), tc.stdout)
			}
			if tc.stderr != "" && stderr.String() != tc.stderr {
				t.Errorf("stderr %q, want %q", stderr.String(), tc.stderr)
			}
			if !strings.Contains(stderr.String(), tc.logHas) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tc.logHas)
			}
		})
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// metricNames lists the metric family names in a text exposition.
func metricNames(body string) []string {
	var out []string
	for _, line := range strings.Split(body, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			out = append(out, f[2])
		}
	}
	return out
}

func grepLines(body, s string) string {
	var out []string
	for _, line := range strings.Split(body, "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
