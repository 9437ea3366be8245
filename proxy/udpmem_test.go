package proxy

import (
	"testing"
	"time"
)

func TestUDPMemDue(t *testing.T) {
	tests := map[string]struct {
		peak, open int64
		sinceLast  time.Duration
		never      bool
		want       bool
	}{
		"burst ended, first release":         {peak: 4096, open: 0, never: true, want: true},
		"burst down to an eighth":            {peak: 4096, open: 512, sinceLast: time.Minute, want: true},
		"burst still above an eighth":        {peak: 4096, open: 513, sinceLast: time.Minute, want: false},
		"small burst: never":                 {peak: udpMemBurst - 1, open: 0, never: true, want: false},
		"smallest burst":                     {peak: udpMemBurst, open: 0, never: true, want: true},
		"too soon after the last release":    {peak: 4096, open: 0, sinceLast: udpMemGap - time.Millisecond, want: false},
		"exactly the gap after the last":     {peak: 4096, open: 0, sinceLast: udpMemGap, want: true},
		"steady load at the peak: never due": {peak: 4096, open: 4096, sinceLast: time.Hour, want: false},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := udpMemDue(tt.peak, tt.open, tt.sinceLast, tt.never); got != tt.want {
				t.Fatalf("udpMemDue(%d, %d, %v, %v) = %v, want %v", tt.peak, tt.open, tt.sinceLast, tt.never, got, tt.want)
			}
		})
	}
}
