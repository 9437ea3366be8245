package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

// get fetches url and returns the status code, content type and body.
func get(t *testing.T, url string) (int, string, []byte) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), b
}

// startTestHTTP serves h on a real 127.0.0.1 listener for the test's life
// and returns its URL.
func startTestHTTP(t *testing.T, name string, h http.Handler) string {
	t.Helper()
	cfg := serverConfig{network: "tcp", addr: "127.0.0.1:0", metrics: newServerMetrics()}
	return "http://" + startTestServer(t, name, cfg, h).Addr()
}

// startTestServer starts a server with cfg and shuts it down at the test's
// end.
func startTestServer(t *testing.T, name string, cfg serverConfig, h http.Handler) *httpServer {
	t.Helper()
	s, err := startHTTP(name, cfg, h, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return s
}

func TestHealthServer(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	synced := syncState{Synced: true, LastUpdated: now.Add(-5 * time.Second), NodeName: "node-1"}
	tests := map[string]struct {
		state        syncState
		requireAPI   bool // --healthz-require-apiserver
		shuttingDown bool
		healthz      int
		livez        int
		reason       string // substring of /healthz's reason
		apiServer    string // /healthz's "apiServer"
		eligible     bool
	}{
		"before first sync": {state: syncState{NodeName: "node-1"}, healthz: 503, livez: 200, reason: "waiting for the first sync", eligible: true},
		"synced":            {state: synced, healthz: 200, livez: 200, eligible: true},
		"queued recently": {
			state:   syncState{Synced: true, LastUpdated: now.Add(-time.Minute), QueuedSince: now.Add(-59 * time.Second)},
			healthz: 200, livez: 200, eligible: true,
		},
		"queued longer than twice the sync period": {
			state:   syncState{Synced: true, LastUpdated: now.Add(-2 * time.Minute), QueuedSince: now.Add(-61 * time.Second)},
			healthz: 503, livez: 503, reason: "a queued change has waited 1m1s (limit 1m0s)", eligible: true,
		},
		"stale before first sync": {
			state:   syncState{QueuedSince: now.Add(-time.Hour)},
			healthz: 503, livez: 200, reason: "waiting for the first sync", eligible: true,
		},
		"node being deleted": {
			state:   syncState{Synced: true, LastUpdated: now, NodeDeleting: true, NodeName: "node-1"},
			healthz: 503, livez: 200, reason: `node "node-1" is being deleted`,
		},
		"node tainted ToBeDeletedByClusterAutoscaler": {
			state:   syncState{Synced: true, LastUpdated: now, NodeTainted: true, NodeName: "node-1"},
			healthz: 503, livez: 200, reason: `node "node-1" has the ToBeDeletedByClusterAutoscaler taint`,
		},
		"node tainted and stale": {
			state:   syncState{Synced: true, LastUpdated: now.Add(-2 * time.Minute), QueuedSince: now.Add(-61 * time.Second), NodeTainted: true},
			healthz: 503, livez: 503, reason: "a queued change has waited 1m1s",
		},
		"API server unreachable within the bound": {
			state:   syncState{Synced: true, LastUpdated: now, UnreachableSince: now.Add(-59 * time.Second), UnreachableErr: "connection refused"},
			healthz: 200, livez: 200, eligible: true,
			apiServer: "unreachable for 59s, serving the last known state: connection refused",
		},
		"API server unreachable beyond the bound, kube-proxy semantics": {
			state:   syncState{Synced: true, LastUpdated: now, UnreachableSince: now.Add(-time.Hour), UnreachableErr: "connection refused"},
			healthz: 200, livez: 200, eligible: true,
			apiServer: "unreachable for 1h0m0s, serving the last known state: connection refused",
		},
		"API server unreachable and a stale queued change": {
			state: syncState{Synced: true, LastUpdated: now.Add(-2 * time.Minute), QueuedSince: now.Add(-61 * time.Second),
				UnreachableSince: now.Add(-2 * time.Minute), UnreachableErr: "connection refused"},
			healthz: 503, livez: 503, reason: "a queued change has waited 1m1s", eligible: true,
			apiServer: "unreachable for 2m0s",
		},
		"API server unreachable within the bound, require-apiserver": {
			state:      syncState{Synced: true, LastUpdated: now, UnreachableSince: now.Add(-59 * time.Second), UnreachableErr: "connection refused"},
			requireAPI: true, healthz: 200, livez: 200, eligible: true,
			apiServer: "unreachable for 59s",
		},
		"API server unreachable beyond the bound, require-apiserver": {
			state:      syncState{Synced: true, LastUpdated: now, UnreachableSince: now.Add(-61 * time.Second), UnreachableErr: "connection refused"},
			requireAPI: true, healthz: 503, livez: 200, eligible: true,
			reason:    "API server unreachable for 1m1s (limit 1m0s, --healthz-require-apiserver), serving the last known state: connection refused",
			apiServer: "unreachable for 1m1s",
		},
		"API server answering, require-apiserver": {state: synced, requireAPI: true, healthz: 200, livez: 200, eligible: true},
		"before first sync, API server unreachable": {
			state:   syncState{NodeName: "node-1", UnreachableSince: now.Add(-time.Minute), UnreachableErr: "connection refused"},
			healthz: 503, livez: 200, reason: "waiting for the first sync", eligible: true, apiServer: "unreachable for 1m0s",
		},
		"shutting down": {state: synced, shuttingDown: true, healthz: 503, livez: 200, reason: "shutting down", eligible: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h := newHealthServer(func() syncState { return tc.state }, 30*time.Second)
			h.now = func() time.Time { return now }
			h.requireAPIServer = tc.requireAPI
			h.shuttingDown.Store(tc.shuttingDown)
			base := startTestHTTP(t, "healthz", h.handler())

			code, ctype, body := get(t, base+"/healthz")
			if code != tc.healthz || ctype != "application/json" {
				t.Errorf("/healthz = %d %s, want %d application/json; body %s", code, ctype, tc.healthz, body)
			}
			keys := []string{"lastUpdated", "currentTime", "nodeEligible", "healthy"}
			if tc.apiServer != "" {
				keys = append(keys, "apiServer")
			}
			m := decodeHealth(t, body, keys...)
			if a, _ := m["apiServer"].(string); !strings.Contains(a, tc.apiServer) {
				t.Errorf("apiServer = %q, want %q", a, tc.apiServer)
			}
			if m["healthy"] != (code == 200) || m["nodeEligible"] != tc.eligible {
				t.Errorf("/healthz body %s: healthy/nodeEligible wrong", body)
			}
			if m["currentTime"] != now.Format(time.RFC3339) {
				t.Errorf("currentTime = %v, want %s", m["currentTime"], now.Format(time.RFC3339))
			}
			if code == 200 && m["lastUpdated"] != m["currentTime"] {
				t.Errorf("healthy lastUpdated = %v, want currentTime as kube-proxy", m["lastUpdated"])
			}
			if code != 200 && m["lastUpdated"] != tc.state.LastUpdated.Format(time.RFC3339) {
				t.Errorf("unhealthy lastUpdated = %v, want %s", m["lastUpdated"], tc.state.LastUpdated.Format(time.RFC3339))
			}
			if r, _ := m["reason"].(string); !strings.Contains(r, tc.reason) || (tc.reason == "") != (r == "") {
				t.Errorf("reason = %q, want %q", r, tc.reason)
			}

			code, _, body = get(t, base+"/livez")
			if code != tc.livez {
				t.Errorf("/livez = %d, want %d; body %s", code, tc.livez, body)
			}
			if m := decodeHealth(t, body, "lastUpdated", "currentTime", "healthy"); m["healthy"] != (code == 200) {
				t.Errorf("/livez body %s", body)
			}

			if got := testutil.ToFloat64(h.healthzTotal.WithLabelValues(itoa(tc.healthz))); got != 1 {
				t.Errorf("kubeproxy_proxy_healthz_total{code=%d} = %v, want 1", tc.healthz, got)
			}
			if got := testutil.ToFloat64(h.livezTotal.WithLabelValues(itoa(tc.livez))); got != 1 {
				t.Errorf("kubeproxy_proxy_livez_total{code=%d} = %v, want 1", tc.livez, got)
			}
		})
	}
}

// decodeHealth decodes a health body and checks it has exactly the keys
// want (plus "reason" when unhealthy).
func decodeHealth(t *testing.T, body []byte, want ...string) map[string]any {
	t.Helper()
	m := map[string]any{}
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("body %q is not JSON: %v", body, err)
	}
	if m["healthy"] == false {
		want = append(want, "reason")
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	slices.Sort(want)
	if !slices.Equal(keys, want) {
		t.Errorf("keys %v, want %v", keys, want)
	}
	return m
}

func itoa(code int) string {
	b, _ := json.Marshal(code)
	return string(b)
}
