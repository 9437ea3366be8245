// Package version holds uproxy's build version. The Makefile sets Version
// with -ldflags "-X github.com/uproxy/uproxy/cmd/uproxy/version.Version=...";
// a plain `go build` falls back to the module's VCS information.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is the release or `git describe` string; set at link time.
var Version = ""

// Get returns Version, or when it was not set at link time the VCS revision
// recorded by the Go toolchain (with "-dirty" for modified trees), or "dev".
func Get() string {
	if Version != "" {
		return Version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev == "" {
		return "dev"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	return rev + dirty
}

// String is the --version line: "uproxy <version> (<go version> <os>/<arch>)".
func String() string {
	return fmt.Sprintf("uproxy %s (%s %s/%s)", Get(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
