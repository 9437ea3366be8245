package iptables

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// fakeRunner simulates the kernel's tables well enough for the rule logic:
// it applies restore input atomically (failing like iptables-restore on a -D
// of a missing rule or a rule in a missing chain), prints iptables-save
// output, and records every call.
type fakeRunner struct {
	mu         sync.Mutex
	state      [2]*fakeTables
	restores   []fakeCall // every restore call, with its input
	saves      int
	deletes    []string // deleteRule/deleteChain calls
	detectErr  [2]error
	restoreErr error // when set, restore fails without applying
	// refuse: a restore whose input contains it fails (a missing match).
	refuse string
}

type fakeCall struct {
	f     family
	input string
}

// fakeTables: table -> chain -> rules (specs); chain order as created.
type fakeTables struct {
	chains map[string]map[string][]string
	order  map[string][]string
}

func newFakeTables() *fakeTables {
	t := &fakeTables{chains: map[string]map[string][]string{}, order: map[string][]string{}}
	for table, builtins := range map[string][]string{
		tableNAT:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
		tableFilter: {"INPUT", "FORWARD", "OUTPUT"},
		tableMangle: {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	} {
		t.chains[table] = map[string][]string{}
		for _, c := range builtins {
			t.chains[table][c] = nil
			t.order[table] = append(t.order[table], c)
		}
	}
	return t
}

func (t *fakeTables) clone() *fakeTables {
	c := &fakeTables{chains: map[string]map[string][]string{}, order: map[string][]string{}}
	for table, chains := range t.chains {
		c.chains[table] = map[string][]string{}
		for name, rules := range chains {
			c.chains[table][name] = slices.Clone(rules)
		}
		c.order[table] = slices.Clone(t.order[table])
	}
	return c
}

func newFakeRunner() *fakeRunner {
	return &fakeRunner{state: [2]*fakeTables{newFakeTables(), newFakeTables()}}
}

func (r *fakeRunner) detect(_ context.Context, f family) (backend, error) {
	if err := r.detectErr[f]; err != nil {
		return backend{}, err
	}
	return backend{path: f.listCmd(""), mode: "fake", version: "0.0.0"}, nil
}

func (r *fakeRunner) restore(_ context.Context, f family, input []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.restores = append(r.restores, fakeCall{f, string(input)})
	if r.refuse != "" && strings.Contains(string(input), r.refuse) {
		return errors.New("fake iptables-restore: line 1 failed: No such file or directory")
	}
	if r.restoreErr != nil {
		return r.restoreErr
	}
	next := r.state[f].clone()
	table := ""
	for i, line := range strings.Split(strings.TrimSuffix(string(input), "\n"), "\n") {
		fail := func(msg string) error {
			return fmt.Errorf("fake %s: line %d failed: %s: %q", f.restoreCmd(""), i+1, msg, line)
		}
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
			if next.chains[table] == nil {
				return fail("no such table")
			}
		case line == "COMMIT":
			table = ""
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if _, ok := next.chains[table][name]; !ok {
				next.order[table] = append(next.order[table], name)
			}
			next.chains[table][name] = nil
		case strings.HasPrefix(line, "-A "), strings.HasPrefix(line, "-D "), strings.HasPrefix(line, "-I "):
			chain, spec, _ := strings.Cut(line[3:], " ")
			rules, ok := next.chains[table][chain]
			if !ok {
				return fail("no chain")
			}
			if err := checkQuotes(spec); err != nil {
				return fail(err.Error())
			}
			switch line[:2] {
			case "-A":
				next.chains[table][chain] = append(rules, spec)
			case "-I":
				pos, rest, _ := strings.Cut(spec, " ")
				if pos != "1" {
					return fail("fake supports -I CHAIN 1 only")
				}
				next.chains[table][chain] = append([]string{rest}, rules...)
			case "-D":
				i := slices.Index(rules, spec)
				if i < 0 {
					return fail("Bad rule (does a matching rule exist in that chain?)")
				}
				next.chains[table][chain] = slices.Delete(rules, i, i+1)
			}
		default:
			return fail("unknown line")
		}
	}
	r.state[f] = next
	return nil
}

// checkQuotes rejects what iptables-restore's tokenizer would choke on.
func checkQuotes(spec string) error {
	if strings.ContainsAny(spec, "\n\r") {
		return errors.New("newline in rule")
	}
	_, err := splitArgs(spec)
	return err
}

func (r *fakeRunner) save(_ context.Context, f family) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.saves++
	return []byte(r.state[f].save()), nil
}

func (t *fakeTables) save() string {
	var b strings.Builder
	for _, table := range []string{tableFilter, tableNAT, tableMangle} {
		b.WriteString("*" + table + "\n")
		names := slices.Clone(t.order[table])
		for _, c := range names {
			b.WriteString(":" + c + " - [0:0]\n")
		}
		for _, c := range names {
			for _, r := range t.chains[table][c] {
				b.WriteString("-A " + c + " " + r + "\n")
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

func (r *fakeRunner) deleteRule(_ context.Context, f family, table, chain string, args []string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deletes = append(r.deletes, fmt.Sprintf("%s -t %s -D %s %q", f, table, chain, args))
	rules := r.state[f].chains[table][chain]
	for i, spec := range rules {
		if a, _ := splitArgs(spec); slices.Equal(a, args) {
			r.state[f].chains[table][chain] = slices.Delete(rules, i, i+1)
			return nil
		}
	}
	return nil
}

func (r *fakeRunner) deleteChain(_ context.Context, f family, table, chain string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deletes = append(r.deletes, fmt.Sprintf("%s -t %s -X %s", f, table, chain))
	t := r.state[f]
	for name, rules := range t.chains[table] {
		for _, spec := range rules {
			if tgt, _ := jumpTarget(spec); tgt == chain && name != chain {
				return fmt.Errorf("chain %s still referenced from %s", chain, name)
			}
		}
	}
	delete(t.chains[table], chain)
	t.order[table] = slices.DeleteFunc(t.order[table], func(c string) bool { return c == chain })
	return nil
}

// edit changes the fake kernel state directly ("someone else" tampering).
func (r *fakeRunner) edit(f family, fn func(t *fakeTables)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fn(r.state[f])
}

func (r *fakeRunner) counts() (restores, saves int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.restores), r.saves
}

func (r *fakeRunner) lastRestore() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.restores) == 0 {
		return ""
	}
	return r.restores[len(r.restores)-1].input
}

// lastRestoreOf is the last restore input of family f.
func (r *fakeRunner) lastRestoreOf(f family) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.restores) - 1; i >= 0; i-- {
		if r.restores[i].f == f {
			return r.restores[i].input
		}
	}
	return ""
}

// fakeConntrack records the flows it was asked to delete.
type fakeConntrack struct {
	mu    sync.Mutex
	calls [][]ctFlow
	err   error
}

func (c *fakeConntrack) deleteUDP(_ context.Context, flows []ctFlow) (uint, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, slices.Clone(flows))
	if c.err != nil {
		return 0, c.err
	}
	return uint(len(flows)), nil
}

func (r *fakeRunner) restoresSnapshot() []fakeCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.restores)
}
