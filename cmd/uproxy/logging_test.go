package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"k8s.io/klog/v2"
)

// logLines decodes JSON log lines.
func logLines(t *testing.T, b *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if line == "" {
			continue
		}
		m := map[string]any{}
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func TestNewLogger(t *testing.T) {
	tests := map[string]struct {
		format string
		level  zerolog.Level
		log    func(zerolog.Logger)
		want   string // substring; "" = nothing written
	}{
		"json info":            {format: logFormatJSON, level: zerolog.InfoLevel, log: func(l zerolog.Logger) { l.Info().Str("k", "v").Msg("hello") }, want: `"level":"info","k":"v"`},
		"json debug filtered":  {format: logFormatJSON, level: zerolog.InfoLevel, log: func(l zerolog.Logger) { l.Debug().Msg("hidden") }},
		"json debug at debug":  {format: logFormatJSON, level: zerolog.DebugLevel, log: func(l zerolog.Logger) { l.Debug().Msg("shown") }, want: `"message":"shown"`},
		"console human":        {format: logFormatConsole, level: zerolog.InfoLevel, log: func(l zerolog.Logger) { l.Warn().Str("k", "v").Msg("careful") }, want: "WRN careful k=v"},
		"json has a timestamp": {format: logFormatJSON, level: zerolog.InfoLevel, log: func(l zerolog.Logger) { l.Info().Msg("t") }, want: `"time":"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			tc.log(newLogger(&b, tc.format, tc.level))
			if tc.want == "" {
				if b.Len() != 0 {
					t.Errorf("wrote %q, want nothing", b.String())
				}
				return
			}
			if !strings.Contains(b.String(), tc.want) {
				t.Errorf("wrote %q, want it to contain %q", b.String(), tc.want)
			}
		})
	}
}

func TestRouteKlog(t *testing.T) {
	tests := map[string]struct {
		verbosity int
		level     zerolog.Level
		log       func()
		want      map[string]any // fields of the one expected line; nil = no line
	}{
		"info": {
			level: zerolog.InfoLevel, log: func() { klog.InfoS("Starting reflector", "type", "*v1.Service") },
			want: map[string]any{"level": "info", "component": "klog", "message": "Starting reflector", "type": "*v1.Service"},
		},
		"printf style": {
			level: zerolog.InfoLevel, log: func() { klog.Infof("watch of %s closed", "services") },
			want: map[string]any{"level": "info", "message": "watch of services closed"},
		},
		"warning": {
			level: zerolog.InfoLevel, log: func() { klog.Warning("slow") },
			want: map[string]any{"level": "info", "message": "slow"},
		},
		"error with err": {
			level: zerolog.InfoLevel, log: func() { klog.ErrorS(errors.New("connection refused"), "Failed to watch", "odd") },
			want: map[string]any{"level": "error", "error": "connection refused", "message": "Failed to watch", "odd": "(MISSING)"},
		},
		"v4 hidden at v0": {
			level: zerolog.DebugLevel, log: func() { klog.V(4).InfoS("detail") },
		},
		"v4 shown at v4 as debug": {
			verbosity: 4, level: zerolog.DebugLevel, log: func() { klog.V(4).InfoS("detail", "n", 3) },
			want: map[string]any{"level": "debug", "message": "detail", "n": float64(3)},
		},
		"v4 dropped by info level": {
			verbosity: 4, level: zerolog.InfoLevel, log: func() { klog.V(4).InfoS("detail") },
		},
		"named logger with values": {
			level: zerolog.InfoLevel, log: func() { klog.Background().WithName("reflector").WithValues("gvr", "services").Info("listed") },
			want: map[string]any{"level": "info", "message": "listed", "logger": "reflector", "gvr": "services"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			restore := routeKlog(newLogger(&b, logFormatJSON, tc.level), tc.verbosity)
			t.Cleanup(restore)
			tc.log()
			klog.Flush()
			lines := logLines(t, &b)
			if tc.want == nil {
				if len(lines) != 0 {
					t.Fatalf("got %v, want no line", lines)
				}
				return
			}
			if len(lines) != 1 {
				t.Fatalf("got %d lines %v, want 1", len(lines), lines)
			}
			for k, v := range tc.want {
				if lines[0][k] != v {
					t.Errorf("field %s = %#v, want %#v (line %v)", k, lines[0][k], v, lines[0])
				}
			}
		})
	}
}
