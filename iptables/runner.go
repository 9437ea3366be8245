package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"
)

// runner is the seam between the rule logic and the iptables tools, one
// call per tool invocation. The real one (execRunner) runs binaries, inside
// Config.NetNS when set; unit tests use a fake that records restore input.
type runner interface {
	// detect finds the family's binaries and reports their backend and
	// version; it fails when a binary is missing or the nat table is not
	// available in the kernel.
	detect(ctx context.Context, f family) (backend, error)
	// restore feeds input to `iptables-restore --noflush` (ip6tables-restore).
	restore(ctx context.Context, f family, input []byte) error
	// save returns `iptables-save` output (all tables).
	save(ctx context.Context, f family) ([]byte, error)
	// deleteRule deletes one rule given as arguments; a missing rule is fine.
	deleteRule(ctx context.Context, f family, table, chain string, args []string) error
	// deleteChain flushes and deletes a chain; a missing chain is fine.
	deleteChain(ctx context.Context, f family, table, chain string) error
}

// backend describes the iptables flavour found for a family.
type backend struct {
	path    string // e.g. /usr/sbin/iptables
	mode    string // "nf_tables" or "legacy"
	version string // e.g. "1.8.9"
}

func (b backend) String() string { return fmt.Sprintf("%s v%s (%s)", b.path, b.version, b.mode) }

// execRunner runs the real binaries. go-iptables handles detection and the
// one-rule-at-a-time calls of --cleanup; bulk writes go through
// iptables-restore with the rule text on stdin (argument vectors only, no
// shell anywhere).
type execRunner struct {
	netns  string // run inside /run/netns/<netns>; "" = current namespace
	suffix string // binary suffix: "" (system default), "-nft" or "-legacy"
}

var _ runner = execRunner{}

// cmdTimeout bounds one iptables invocation when the caller's context has
// no deadline; --wait makes the tools block on the xtables lock otherwise.
const cmdTimeout = 2 * time.Minute

func (r execRunner) goipt(f family) (*goipt.IPTables, error) {
	proto := goipt.ProtocolIPv4
	if f == v6 {
		proto = goipt.ProtocolIPv6
	}
	cmd := f.listCmd(r.suffix)
	ipt, err := goipt.New(goipt.IPFamily(proto), goipt.Path(cmd), goipt.Timeout(5))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	return ipt, nil
}

var versionRE = regexp.MustCompile(`v(\d+\.\d+\.\d+)(?:\s+\((\w+)\))?`)

func (r execRunner) detect(ctx context.Context, f family) (backend, error) {
	var b backend
	err := inNetNS(r.netns, func() error {
		ipt, err := r.goipt(f)
		if err != nil {
			return err
		}
		cmd := f.listCmd(r.suffix)
		for _, c := range []string{f.restoreCmd(r.suffix), f.saveCmd(r.suffix)} {
			if _, err := exec.LookPath(c); err != nil {
				return fmt.Errorf("%s: %w", c, err)
			}
		}
		out, err := exec.CommandContext(ctx, cmd, "--version").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s --version: %w: %s", cmd, err, bytes.TrimSpace(out))
		}
		m := versionRE.FindStringSubmatch(string(out))
		if m == nil {
			return fmt.Errorf("%s --version: no version in %q", cmd, bytes.TrimSpace(out))
		}
		b = backend{path: cmd, version: m[1], mode: m[2]}
		if b.mode == "" {
			b.mode = "legacy"
		}
		// The nat table must exist: a kernel without it fails here with
		// the tool's own message instead of on the first sync.
		ok, err := ipt.ChainExists(tableNAT, "PREROUTING")
		if err == nil && !ok {
			err = errors.New("no PREROUTING chain")
		}
		if err != nil {
			return fmt.Errorf("%s -t nat: nat table unavailable: %w", cmd, err)
		}
		return nil
	})
	return b, err
}

// lineRE finds the failing line in iptables-restore's error output:
// legacy says "Error occurred at line: 3", nft "line 3 failed".
var lineRE = regexp.MustCompile(`line:? (\d+)`)

func (r execRunner) restore(ctx context.Context, f family, input []byte) error {
	cmd := f.restoreCmd(r.suffix)
	var stderr bytes.Buffer
	err := inNetNS(r.netns, func() error {
		ctx, cancel := withDefaultTimeout(ctx)
		defer cancel()
		c := exec.CommandContext(ctx, cmd, "--noflush", "--wait=5")
		c.Stdin = bytes.NewReader(input)
		c.Stderr = &stderr
		return c.Run()
	})
	if err == nil {
		return nil
	}
	msg := oneLine(stderr.String())
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		if n, _ := strconv.Atoi(m[1]); n > 0 {
			if lines := strings.Split(string(input), "\n"); n <= len(lines) {
				msg += fmt.Sprintf(" (input line %d: %q)", n, lines[n-1])
			}
		}
	}
	return fmt.Errorf("%s --noflush: %w: %s", cmd, err, msg)
}

func (r execRunner) save(ctx context.Context, f family) ([]byte, error) {
	cmd := f.saveCmd(r.suffix)
	var out, stderr bytes.Buffer
	err := inNetNS(r.netns, func() error {
		ctx, cancel := withDefaultTimeout(ctx)
		defer cancel()
		c := exec.CommandContext(ctx, cmd)
		c.Stdout = &out
		c.Stderr = &stderr
		return c.Run()
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %s", cmd, err, oneLine(stderr.String()))
	}
	return out.Bytes(), nil
}

func (r execRunner) deleteRule(_ context.Context, f family, table, chain string, args []string) error {
	return inNetNS(r.netns, func() error {
		ipt, err := r.goipt(f)
		if err != nil {
			return err
		}
		if err := ipt.DeleteIfExists(table, chain, args...); err != nil {
			return fmt.Errorf("%s -t %s -D %s %s: %w", f.listCmd(r.suffix), table, chain, strings.Join(args, " "), err)
		}
		return nil
	})
}

func (r execRunner) deleteChain(_ context.Context, f family, table, chain string) error {
	return inNetNS(r.netns, func() error {
		ipt, err := r.goipt(f)
		if err != nil {
			return err
		}
		if err := ipt.ClearAndDeleteChain(table, chain); err != nil {
			var e *goipt.Error
			if errors.As(err, &e) && e.IsNotExist() {
				return nil
			}
			return fmt.Errorf("%s -t %s -X %s: %w", f.listCmd(r.suffix), table, chain, err)
		}
		return nil
	})
}

func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, cmdTimeout)
}

// oneLine joins a tool's stderr lines with "; ", dropping the usage hint.
func oneLine(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "Try `") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "; ")
}
