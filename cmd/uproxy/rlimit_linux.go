//go:build linux

package main

import (
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// lowNofile is the fd limit under which start-up warns: every proxied TCP
// connection holds two fds and every UDP session one.
const lowNofile = 65536

// rlimiter reads and sets RLIMIT_NOFILE (a seam for tests).
type rlimiter interface {
	get() (unix.Rlimit, error)
	set(unix.Rlimit) error
}

type sysRlimit struct{}

func (sysRlimit) get() (unix.Rlimit, error) {
	var r unix.Rlimit
	err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r)
	return r, err
}

func (sysRlimit) set(r unix.Rlimit) error { return unix.Setrlimit(unix.RLIMIT_NOFILE, &r) }

// raiseNofile raises the soft RLIMIT_NOFILE to the hard limit, best effort:
// unlike legacy kube-proxy, which refused to start when it could not raise
// its limit, a failure is a warning and uproxy runs with what it has (the
// data plane sheds connections at the limit instead of dying). The hard
// limit is not raised: that needs CAP_SYS_RESOURCE, which the DaemonSet does
// not grant. (The Go runtime already raises the soft limit at start-up on
// Linux; this makes it explicit, reports it, and covers other runtimes.)
// It returns the soft limit in force afterwards (0 if unknown).
func raiseNofile(log zerolog.Logger) uint64 { return raiseNofileWith(sysRlimit{}, log) }

func raiseNofileWith(r rlimiter, log zerolog.Logger) uint64 {
	lim, err := r.get()
	if err != nil {
		log.Warn().Err(err).Msg("cannot read the open-file limit (RLIMIT_NOFILE); continuing")
		return 0
	}
	if lim.Cur < lim.Max {
		raised := unix.Rlimit{Cur: lim.Max, Max: lim.Max}
		if err := r.set(raised); err != nil {
			log.Warn().Err(err).Uint64("soft", lim.Cur).Uint64("hard", lim.Max).
				Msg("cannot raise the open-file limit (RLIMIT_NOFILE) to the hard limit; continuing with the soft limit")
		} else {
			lim = raised
		}
	}
	ev := log.Info()
	if lim.Cur < lowNofile {
		ev = log.Warn().Uint64("recommended", lowNofile)
	}
	ev.Uint64("soft", lim.Cur).Uint64("hard", lim.Max).Msg("open-file limit (RLIMIT_NOFILE)")
	return lim.Cur
}
