package iptables

import (
	"context"
	"errors"
	"fmt"
	"os/exec"

	"github.com/rs/zerolog"
)

// Cleanup (--cleanup) removes every chain and jump uproxy or legacy
// userspace kube-proxy created, in both families: the jumps into
// KUBE-PORTALS-CONTAINER, KUBE-PORTALS-HOST, KUBE-NODEPORT-CONTAINER,
// KUBE-NODEPORT-HOST, KUBE-NODEPORT-NON-LOCAL, UPROXY-LB-FIREWALL and
// UPROXY-PORT-WAIT from any chain (whatever their comment), then the chains. It finds them with iptables-save and
// removes them with go-iptables, one rule at a time (cleanup is rare; the
// per-rule cost does not matter here). Running it again finds nothing and
// succeeds. A missing ip6tables is not an error; a missing iptables is.
func Cleanup(ctx context.Context, cfg Config, log zerolog.Logger) error {
	suffix := ""
	if cfg.Backend != "" {
		suffix = "-" + cfg.Backend
	}
	return cleanup(ctx, execRunner{netns: cfg.NetNS, suffix: suffix}, log.With().Str("component", "iptables").Logger())
}

func cleanup(ctx context.Context, r runner, log zerolog.Logger) error {
	var errs []error
	for _, f := range families {
		out, err := r.save(ctx, f)
		if err != nil {
			if f == v6 && errors.Is(err, exec.ErrNotFound) {
				log.Debug().Err(err).Msg("no ip6tables; nothing to clean up for IPv6")
				continue
			}
			errs = append(errs, fmt.Errorf("%s cleanup: %w", f, err))
			continue
		}
		rs := parseSave(out)
		removed := 0
		for _, j := range rs.strays {
			args, err := splitArgs(j.spec)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s cleanup: jump %q: %w", f, j.spec, err))
				continue
			}
			if err := r.deleteRule(ctx, f, j.table, j.from, args); err != nil {
				errs = append(errs, fmt.Errorf("%s cleanup: %w", f, err))
				continue
			}
			removed++
		}
		for _, c := range ourChains {
			if !rs.exists[c.name] {
				continue
			}
			if err := r.deleteChain(ctx, f, c.table, c.name); err != nil {
				errs = append(errs, fmt.Errorf("%s cleanup: %w", f, err))
				continue
			}
			removed++
		}
		if removed > 0 {
			log.Info().Stringer("family", f).Int("removed", removed).Msg("removed portal chains and jumps")
		}
	}
	return errors.Join(errs...)
}
