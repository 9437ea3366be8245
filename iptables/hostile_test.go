package iptables

import (
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/uproxy/uproxy/svc"
)

var safeComment = regexp.MustCompile(`^[A-Za-z0-9._/:-]*$`)

// checkRestoreInput asserts the invariants that make restore input safe:
// every line is a table header, COMMIT, one of our chain declarations, or a
// rule in one of our chains (or a jump into one) with exactly one -j and a
// sanitized comment.
func checkRestoreInput(t *testing.T, in string) {
	t.Helper()
	for i, line := range strings.Split(strings.TrimSuffix(in, "\n"), "\n") {
		switch {
		case line == "*nat" || line == "*filter" || line == "*mangle" || line == "COMMIT":
			continue
		case strings.HasPrefix(line, ":"):
			name, rest, _ := strings.Cut(line[1:], " ")
			if !isOurChain(name) || rest != "- [0:0]" {
				t.Errorf("line %d: unexpected declaration %q", i+1, line)
			}
			continue
		}
		args, err := splitArgs(line)
		if err != nil {
			t.Errorf("line %d: %v: %q", i+1, err, line)
			continue
		}
		if len(args) < 2 || (args[0] != "-A" && args[0] != "-D" && args[0] != "-I") {
			t.Errorf("line %d: not a rule: %q", i+1, line)
			continue
		}
		jumps := 0
		target := ""
		for j, a := range args {
			if a == "-j" && j+1 < len(args) {
				jumps++
				target = args[j+1]
			}
		}
		if jumps != 1 {
			t.Errorf("line %d: %d jumps in %q", i+1, jumps, line)
		}
		if !isOurChain(args[1]) && !isOurChain(target) {
			t.Errorf("line %d: rule outside our chains: %q", i+1, line)
		}
		if c := argAfter(args, "--comment"); isOurChain(args[1]) && !safeComment.MatchString(c) {
			t.Errorf("line %d: unsafe comment %q", i+1, c)
		}
	}
}

var hostileNames = map[string]svc.PortName{
	"double quote":          {Namespace: `de"fault`, Name: "web", Port: "http"},
	"quote closes and adds": {Namespace: "default", Name: `x" -j ACCEPT -m comment --comment "y`, Port: "p"},
	"newline injects rules": {Namespace: "default", Name: "evil\nCOMMIT\n*filter\n-I INPUT 1 -j DROP\nCOMMIT", Port: "p"},
	"spaces":                {Namespace: "default", Name: "my web", Port: "h t t p"},
	"backslash quote":       {Namespace: `a\`, Name: `\"`, Port: `\`},
	"shell metacharacters":  {Namespace: "$(reboot)", Name: "`id`;rm -rf /", Port: "|&>"},
	"non-ASCII":             {Namespace: "défaut", Name: "wëb", Port: "ħttp"},
	"very long":             {Namespace: strings.Repeat("n", 300), Name: strings.Repeat("m", 300), Port: "p"},
	"empty":                 {},
}

func TestHostileCommentText(t *testing.T) {
	for name, pn := range hostileNames {
		t.Run(name, func(t *testing.T) {
			p, r, _ := newTestProgrammer(t, baseConfig())
			portal := web(30001, func(p *svc.Port) { p.Name = pn; p.NodePort = 30080 })
			if err := p.SyncPortals(context.Background(), []svc.Portal{portal}); err != nil {
				t.Fatalf("SyncPortals: %v", err)
			}
			checkRestoreInput(t, r.lastRestore())
			// Six rules plus nine jumps, nothing else, and the filter
			// INPUT chain holds only our two jumps (no injected DROP).
			if got := ourLines(r.state[v4].save()); len(got) != 15 {
				t.Errorf("installed %d lines, want 15:\n%s", len(got), strings.Join(got, "\n"))
			}
			if in := r.state[v4].chains[tableFilter]["INPUT"]; len(in) != 2 {
				t.Errorf("filter INPUT = %q", in)
			}
			if c := sanitizeComment(pn.String()); len(c) > maxCommentLen {
				t.Errorf("comment %d bytes long", len(c))
			}
		})
	}
}

func FuzzRestoreInputIsSafe(f *testing.F) {
	for _, pn := range hostileNames {
		f.Add(pn.Namespace, pn.Name, pn.Port)
	}
	f.Fuzz(func(t *testing.T, ns, name, port string) {
		p, r, _ := newTestProgrammer(t, baseConfig())
		portal := web(30001, func(p *svc.Port) {
			p.Name = svc.PortName{Namespace: ns, Name: name, Port: port}
			p.NodePort = 30080
		})
		if err := p.SyncPortals(context.Background(), []svc.Portal{portal}); err != nil {
			t.Fatalf("SyncPortals: %v", err)
		}
		checkRestoreInput(t, r.lastRestore())
	})
}

func FuzzSplitArgs(f *testing.F) {
	f.Add(`-d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j REDIRECT --to-ports 30001`)
	f.Add(`-m comment --comment "a \"b\" c" -j X`)
	f.Add(`"unterminated`)
	f.Fuzz(func(t *testing.T, s string) {
		args, err := splitArgs(s)
		if err != nil {
			return
		}
		for _, a := range args {
			_ = a
		}
		proxyPortOf(s) // must not panic
	})
}

func TestParsePortName(t *testing.T) {
	tests := map[string]struct {
		in   string
		want svc.PortName
		ok   bool
	}{
		"named":         {"ns/name:port", svc.PortName{Namespace: "ns", Name: "name", Port: "port"}, true},
		"unnamed":       {"ns/name", svc.PortName{Namespace: "ns", Name: "name"}, true},
		"no namespace":  {"/name:port", svc.PortName{}, false},
		"no slash":      {"handle ClusterIPs", svc.PortName{}, false},
		"empty name":    {"ns/:port", svc.PortName{}, false},
		"legacy jump":   {"Ensure that non-local NodePort traffic can flow", svc.PortName{}, false},
		"colon in port": {"ns/name:a:b", svc.PortName{Namespace: "ns", Name: "name", Port: "a:b"}, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := parsePortName(tc.in)
			if ok != tc.ok || got != tc.want {
				t.Errorf("parsePortName(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
			}
		})
	}
}
