package version

import (
	"strings"
	"testing"
)

func TestGet(t *testing.T) {
	tests := map[string]struct {
		set  string
		want func(string) bool
	}{
		"set at link time": {set: "v1.2.3", want: func(s string) bool { return s == "v1.2.3" }},
		"unset falls back": {set: "", want: func(s string) bool { return s != "" }},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			old := Version
			t.Cleanup(func() { Version = old })
			Version = tc.set
			if got := Get(); !tc.want(got) {
				t.Errorf("Get() = %q", got)
			}
			if !strings.HasPrefix(String(), "uproxy "+Get()+" (go") {
				t.Errorf("String() = %q", String())
			}
		})
	}
}
