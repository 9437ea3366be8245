//go:build linux

package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// fakeRlimit records sets; errors are injected.
type fakeRlimit struct {
	cur, max uint64
	getErr   error
	setErr   error
	sets     int
}

func (f *fakeRlimit) get() (unix.Rlimit, error) { return unix.Rlimit{Cur: f.cur, Max: f.max}, f.getErr }

func (f *fakeRlimit) set(r unix.Rlimit) error {
	f.sets++
	if f.setErr != nil {
		return f.setErr
	}
	f.cur, f.max = r.Cur, r.Max
	return nil
}

func TestRaiseNofile(t *testing.T) {
	tests := map[string]struct {
		lim      fakeRlimit
		wantCur  uint64
		wantSets int
		wantLog  string // substring
	}{
		"raised to hard":  {lim: fakeRlimit{cur: 1024, max: 1 << 20}, wantCur: 1 << 20, wantSets: 1, wantLog: `"level":"info","soft":1048576,"hard":1048576`},
		"already at hard": {lim: fakeRlimit{cur: 1 << 20, max: 1 << 20}, wantCur: 1 << 20, wantSets: 0, wantLog: `"soft":1048576`},
		"low hard limit warns": {
			lim: fakeRlimit{cur: 1024, max: 20000}, wantCur: 20000, wantSets: 1,
			wantLog: `"level":"warn","recommended":65536,"soft":20000,"hard":20000`,
		},
		"set fails: warn and continue": {
			lim: fakeRlimit{cur: 1024, max: 4096, setErr: unix.EPERM}, wantCur: 1024, wantSets: 1,
			wantLog: "cannot raise the open-file limit",
		},
		"get fails: warn and continue": {
			lim: fakeRlimit{getErr: errors.New("no /proc")}, wantCur: 0, wantSets: 0,
			wantLog: "cannot read the open-file limit",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			got := raiseNofileWith(&tc.lim, zerolog.New(&b))
			if got != tc.wantCur || tc.lim.sets != tc.wantSets {
				t.Errorf("raiseNofile = %d after %d sets, want %d after %d", got, tc.lim.sets, tc.wantCur, tc.wantSets)
			}
			if !strings.Contains(b.String(), tc.wantLog) {
				t.Errorf("log %q does not contain %q", b.String(), tc.wantLog)
			}
		})
	}
}

// TestRaiseNofileReal runs against the real process: on this machine the
// hard limit (20000) cannot be raised, which must not be an error.
func TestRaiseNofileReal(t *testing.T) {
	var before unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &before); err != nil {
		t.Fatal(err)
	}
	if got := raiseNofile(zerolog.New(zerolog.NewTestWriter(t))); got != before.Max {
		t.Errorf("soft limit %d after raise, want the hard limit %d", got, before.Max)
	}
}
