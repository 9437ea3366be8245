package main

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHealthSocket: the health server answers /healthz and /livez on a unix
// socket with the same JSON and codes as on TCP.
func TestHealthSocket(t *testing.T) {
	now := time.Now()
	tests := map[string]struct {
		state         syncState
		healthz, livz int
	}{
		"synced":       {state: syncState{Synced: true, LastUpdated: now}, healthz: 200, livz: 200},
		"not synced":   {state: syncState{}, healthz: 503, livz: 200},
		"stuck change": {state: syncState{Synced: true, QueuedSince: now.Add(-time.Hour)}, healthz: 503, livz: 503},
	}
	dir := t.TempDir()
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h := newHealthServer(func() syncState { return tc.state }, 30*time.Second)
			sock := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".sock")
			s := startTestServer(t, "health-socket", serverConfig{network: "unix", addr: sock, metrics: newServerMetrics()}, h.handler())
			if s.Addr() != sock {
				t.Fatalf("Addr() = %q, want %q", s.Addr(), sock)
			}
			code, body := getOn(t, "unix", sock, "/healthz")
			if code != tc.healthz {
				t.Errorf("/healthz = %d, want %d: %s", code, tc.healthz, body)
			}
			decodeHealth(t, []byte(body), "lastUpdated", "currentTime", "nodeEligible", "healthy")
			if code, body = getOn(t, "unix", sock, "/livez"); code != tc.livz {
				t.Errorf("/livez = %d, want %d: %s", code, tc.livz, body)
			}
		})
	}
}

// TestProbeCommand runs `uproxy probe` (through run, as the binary does)
// against real health servers on unix sockets.
func TestProbeCommand(t *testing.T) {
	dir := t.TempDir()
	serve := func(name string, state syncState) string {
		h := newHealthServer(func() syncState { return state }, 30*time.Second)
		sock := filepath.Join(dir, name+".sock")
		startTestServer(t, "health-socket", serverConfig{network: "unix", addr: sock, metrics: newServerMetrics()}, h.handler())
		return sock
	}
	ready := serve("ready", syncState{Synced: true, LastUpdated: time.Now()})
	starting := serve("starting", syncState{})

	// A socket that accepts and never answers: the probe must give up.
	mute := filepath.Join(dir, "mute.sock")
	ln, err := net.Listen("unix", mute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	stale := filepath.Join(dir, "stale.sock")
	staleSocket(t, stale)

	tests := map[string]struct {
		args   []string
		code   int
		stdout string // substring
		stderr string // substring; "" = empty
	}{
		"ready healthz":        {args: []string{"--socket", ready}, code: 0, stdout: `"healthy":true`},
		"ready livez":          {args: []string{"--socket=" + ready, "--path=/livez"}, code: 0, stdout: `"healthy":true`},
		"starting healthz":     {args: []string{"--socket", starting, "--path", "/healthz"}, code: 1, stderr: "uproxy probe: GET /healthz on " + starting + ": 503 Service Unavailable: waiting for the first sync\n"},
		"starting livez":       {args: []string{"--socket", starting, "--path", "/livez"}, code: 0, stdout: `"healthy":true`},
		"unknown path":         {args: []string{"--socket", ready, "--path", "/metrics"}, code: 1, stderr: "404 Not Found: 404 page not found\n"},
		"no socket":            {args: []string{"--socket", filepath.Join(dir, "none.sock")}, code: 1, stderr: "connect: no such file or directory\n"},
		"stale socket":         {args: []string{"--socket", stale}, code: 1, stderr: "connect: connection refused\n"},
		"no answer in time":    {args: []string{"--socket", mute, "--timeout", "100ms"}, code: 1, stderr: ": no answer within 100ms\n"},
		"socket missing":       {args: nil, code: 2, stderr: "uproxy probe: --socket is required\n"},
		"relative path":        {args: []string{"--socket", ready, "--path", "healthz"}, code: 2, stderr: `invalid --path "healthz": must start with /`},
		"zero timeout":         {args: []string{"--socket", ready, "--timeout", "0s"}, code: 2, stderr: "invalid --timeout 0s"},
		"abstract socket":      {args: []string{"--socket", "@uproxy"}, code: 2, stderr: "abstract sockets are shared"},
		"unknown flag":         {args: []string{"--url", "http://x"}, code: 2, stderr: "uproxy probe: unknown flag: --url\n"},
		"positional argument":  {args: []string{"--socket", ready, "now"}, code: 2, stderr: `unexpected argument "now"`},
		"help":                 {args: []string{"--help"}, code: 0, stdout: "uproxy probe --socket PATH"},
		"proxy flags rejected": {args: []string{"--socket", ready, "--v=2"}, code: 2, stderr: "unknown flag: --v"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			start := time.Now()
			code := run(append([]string{"probe"}, tc.args...), &stdout, &stderr)
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("probe took %s", took)
			}
			if code != tc.code {
				t.Errorf("exit code %d, want %d; stderr %q", code, tc.code, stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.stdout) {
				t.Errorf("stdout %q does not contain %q", stdout.String(), tc.stdout)
			}
			if tc.stderr == "" && stderr.Len() > 0 || !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("stderr %q, want it to contain %q", stderr.String(), tc.stderr)
			}
			if n := strings.Count(stderr.String(), "\n"); n > 1 {
				t.Errorf("stderr has %d lines, want at most one", n)
			}
		})
	}
}
