package iptables

import (
	"bufio"
	"bytes"
	"slices"
	"strings"
)

// parseSave reads our chains, their rules and the jumps into them from
// iptables-save output (all tables; only *nat and *filter are looked at).
// The result is normalized (see normalize).
func parseSave(out []byte) ruleSet {
	rs := newRuleSet()
	table := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case !slices.Contains(tables, table):
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if c, ok := chainIn(table, name); ok {
				rs.exists[c.name] = true
			}
		case strings.HasPrefix(line, "-A "):
			chain, spec, _ := strings.Cut(line[3:], " ")
			if c, ok := chainIn(table, chain); ok {
				rs.rules[c.name] = append(rs.rules[c.name], spec)
				continue
			}
			if target, ok := jumpTarget(spec); ok {
				if c, ok := chainIn(table, target); ok {
					rs.strays = append(rs.strays, stray{table, chain, spec})
					if slices.Contains(c.builtins, chain) {
						rs.jumps[c.name] = append(rs.jumps[c.name], chain+" "+spec)
					}
				}
			}
		}
	}
	normalize(rs)
	return rs
}

// jumpTarget returns the chain a rule jumps (-j) or goes (-g) to.
func jumpTarget(spec string) (string, bool) {
	i := max(strings.LastIndex(spec, "-j "), strings.LastIndex(spec, "-g "))
	if i < 0 {
		return "", false
	}
	t, _, _ := strings.Cut(spec[i+3:], " ")
	return t, t != ""
}

// chainIn finds one of our chains by table and name.
func chainIn(table, name string) (ourChain, bool) {
	for _, c := range ourChains {
		if c.table == table && c.name == name {
			return c, true
		}
	}
	return ourChain{}, false
}

// normalize sorts each chain's rules: rule order inside our chains carries
// no meaning (render drops rules whose matches collide), so sets compare
// and diff as sorted lists. Ordered chains keep their order.
func normalize(rs ruleSet) {
	for name, v := range rs.rules {
		if !isOrdered(name) {
			slices.Sort(v)
		}
	}
	for _, v := range rs.jumps {
		slices.Sort(v)
	}
}

// sameRules reports whether installed (have) equals desired (want).
func sameRules(have, want ruleSet) bool {
	for _, c := range ourChains {
		if have.exists[c.name] != want.exists[c.name] ||
			!slices.Equal(have.rules[c.name], want.rules[c.name]) ||
			!slices.Equal(have.jumps[c.name], want.jumps[c.name]) {
			return false
		}
	}
	return true
}

// diffSorted returns what to add to and remove from have (sorted, may hold
// duplicates) to get want (sorted, unique).
func diffSorted(have, want []string) (add, del []string) {
	i, j := 0, 0
	for i < len(have) || j < len(want) {
		switch {
		case j == len(want) || (i < len(have) && have[i] < want[j]):
			del = append(del, have[i])
			i++
		case i == len(have) || want[j] < have[i]:
			add = append(add, want[j])
			j++
		default: // equal: keep one, delete further copies
			v := want[j]
			i++
			j++
			for i < len(have) && have[i] == v {
				del = append(del, have[i])
				i++
			}
		}
	}
	return add, del
}

// jumpFix says how to turn the jumps found into exactly the canonical ones
// (want, one per built-in chain). Both hold "BUILTIN spec" lines.
func jumpFix(have, want []string) (del, add []string) {
	found := make(map[string]bool, len(want))
	for _, h := range have {
		if slices.Contains(want, h) && !found[h] {
			found[h] = true
			continue
		}
		del = append(del, h)
	}
	for _, w := range want {
		if !found[w] {
			add = append(add, w)
		}
	}
	return del, add
}

// countDiff counts the rule and jump lines that differ between two sets.
func countDiff(have, want ruleSet) int {
	n := 0
	for _, c := range ourChains {
		h, w := have.rules[c.name], want.rules[c.name]
		if c.ordered && !slices.Equal(h, w) {
			h, w = slices.Sorted(slices.Values(h)), slices.Sorted(slices.Values(w))
			n++ // at least the order differs
		}
		a, d := diffSorted(h, w)
		n += len(a) + len(d)
		if !have.exists[c.name] && want.exists[c.name] && len(want.rules[c.name]) == 0 {
			n++ // an empty chain that was deleted
		}
		del, add := jumpFix(have.jumps[c.name], c.jumps())
		if len(want.jumps[c.name]) == 0 { // want no jump (never in practice)
			del, add = have.jumps[c.name], nil
		}
		n += len(del) + len(add)
	}
	return n
}

// fullRewriteFraction: a chain whose changes exceed this share of its
// desired size is redeclared and rewritten instead of patched line by line.
const fullRewriteFraction = 0.5

// restoreText renders the iptables-restore --noflush input that turns have
// into want. Unchanged chains are not mentioned; with full set, every chain
// that differs is redeclared (flushed) and rewritten. It returns nil when
// nothing differs.
func restoreText(have, want ruleSet, full bool) []byte {
	var b bytes.Buffer
	for _, table := range tables {
		var decl, lines []string
		for _, c := range ourChains {
			if c.table != table {
				continue
			}
			w := want.rules[c.name]
			var add, del []string
			changes := 0
			if c.ordered {
				if !slices.Equal(have.rules[c.name], w) {
					changes = len(w) + 1 // rewrite it whole: order matters
				}
			} else {
				add, del = diffSorted(have.rules[c.name], w)
				changes = len(add) + len(del)
			}
			switch {
			case !have.exists[c.name] || (changes > 0 && (c.ordered || full || float64(changes) > fullRewriteFraction*float64(len(w)))):
				decl = append(decl, ":"+c.name+" - [0:0]")
				for _, r := range w {
					lines = append(lines, "-A "+c.name+" "+r)
				}
			default:
				for _, r := range del {
					lines = append(lines, "-D "+c.name+" "+r)
				}
				for _, r := range add {
					lines = append(lines, "-A "+c.name+" "+r)
				}
			}
			jdel, jadd := jumpFix(have.jumps[c.name], c.jumps())
			for _, j := range jdel {
				lines = append(lines, "-D "+j)
			}
			for _, j := range jadd {
				if c.first {
					builtin, spec, _ := strings.Cut(j, " ")
					lines = append(lines, "-I "+builtin+" 1 "+spec)
				} else {
					lines = append(lines, "-A "+j)
				}
			}
		}
		if len(decl)+len(lines) == 0 {
			continue
		}
		b.WriteString("*" + table + "\n")
		for _, l := range decl {
			b.WriteString(l + "\n")
		}
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
		b.WriteString("COMMIT\n")
	}
	if b.Len() == 0 {
		return nil
	}
	return b.Bytes()
}

// cloneRuleSet deep-copies a set so the model never aliases render output.
func cloneRuleSet(rs ruleSet) ruleSet {
	out := newRuleSet()
	for k, v := range rs.rules {
		out.rules[k] = slices.Clone(v)
	}
	for k, v := range rs.exists {
		out.exists[k] = v
	}
	for k, v := range rs.jumps {
		out.jumps[k] = slices.Clone(v)
	}
	return out
}
