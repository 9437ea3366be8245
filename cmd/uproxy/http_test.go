package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// fakeTable stands in for the proxier's /debug/services view.
type fakeTable struct{}

func (fakeTable) Describe(w io.Writer) {
	fmt.Fprintln(w, "default/echo:tcp  TCP  127.0.0.77:8080 -> :40001")
}

func (fakeTable) SnapshotJSON() any {
	return []map[string]any{{"name": "default/echo:tcp", "proxyPort": 40001}}
}

func TestMetricsServer(t *testing.T) {
	fake := prometheus.NewCounter(prometheus.CounterOpts{Name: "uproxy_fake_total", Help: "test"})
	fake.Add(3)
	reg, err := newRegistry(fake)
	if err != nil {
		t.Fatal(err)
	}
	log := zerolog.New(zerolog.NewTestWriter(t))
	plain := startTestHTTP(t, "metrics", metricsHandler(reg, fakeTable{}, false, log))
	profiled := startTestHTTP(t, "metrics", metricsHandler(reg, fakeTable{}, true, log))

	tests := map[string]struct {
		base     string
		path     string
		code     int
		ctype    string   // prefix
		contains []string // substrings of the body
	}{
		"metrics": {
			base: plain, path: "/metrics", code: 200, ctype: "text/plain",
			contains: []string{"uproxy_fake_total 3", "go_goroutines ", "process_open_fds ", `uproxy_build_info{goversion="go`},
		},
		"services text": {
			base: plain, path: "/debug/services", code: 200, ctype: "text/plain",
			contains: []string{"default/echo:tcp  TCP  127.0.0.77:8080 -> :40001"},
		},
		"services json": {
			base: plain, path: "/debug/services?format=json", code: 200, ctype: "application/json",
			contains: []string{`"name": "default/echo:tcp"`, `"proxyPort": 40001`},
		},
		"services bad format":      {base: plain, path: "/debug/services?format=xml", code: 400},
		"pprof absent by default":  {base: plain, path: "/debug/pprof/", code: 404},
		"pprof heap absent":        {base: plain, path: "/debug/pprof/heap", code: 404},
		"pprof cmdline absent":     {base: plain, path: "/debug/pprof/cmdline", code: 404},
		"pprof index with profile": {base: profiled, path: "/debug/pprof/", code: 200, contains: []string{"goroutine"}},
		"pprof goroutines":         {base: profiled, path: "/debug/pprof/goroutine?debug=1", code: 200, contains: []string{"goroutine profile:"}},
		"pprof cmdline":            {base: profiled, path: "/debug/pprof/cmdline", code: 200},
		"unknown path":             {base: plain, path: "/healthz", code: 404},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			code, ctype, body := get(t, tc.base+tc.path)
			if code != tc.code {
				t.Fatalf("GET %s = %d, want %d; body %.200s", tc.path, code, tc.code, body)
			}
			if !strings.HasPrefix(ctype, tc.ctype) {
				t.Errorf("Content-Type %q, want %q", ctype, tc.ctype)
			}
			for _, s := range tc.contains {
				if !strings.Contains(string(body), s) {
					t.Errorf("body does not contain %q:\n%.2000s", s, body)
				}
			}
			if strings.HasSuffix(tc.path, "format=json") {
				var v []map[string]any
				if err := json.Unmarshal(body, &v); err != nil || len(v) != 1 {
					t.Errorf("JSON body %s: %v", body, err)
				}
			}
		})
	}
}

func TestNewRegistryRejectsDuplicates(t *testing.T) {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "uproxy_dup_total", Help: "test"})
	if _, err := newRegistry(c, c); err == nil {
		t.Fatal("registering a collector twice succeeded")
	}
}
