package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/uproxy/uproxy/watch"
)

// TestLoadCheckpointNeverFatal: whatever is at the path, start-up goes on
// (nil: no checkpoint) and says why in the log.
func TestLoadCheckpointNeverFatal(t *testing.T) {
	tests := map[string]struct {
		data    *string // nil: no file
		wantLog string
	}{
		"no file":         {wantLog: "no state checkpoint yet"},
		"corrupt":         {data: textPtr("{not json"), wantLog: "state checkpoint ignored"},
		"foreign version": {data: textPtr(`{"version":99,"checksum":"","state":{}}`), wantLog: "format version 99"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			if tc.data != nil {
				if err := os.WriteFile(path, []byte(*tc.data), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			var b strings.Builder
			if c := loadCheckpoint(watch.Options{CheckpointPath: path, NodeName: "node-1"}, zerolog.New(&b)); c != nil {
				t.Fatalf("loaded %+v", c)
			}
			if !strings.Contains(b.String(), tc.wantLog) {
				t.Fatalf("log %q, want %q", b.String(), tc.wantLog)
			}
		})
	}
}

func textPtr(s string) *string { return &s }
