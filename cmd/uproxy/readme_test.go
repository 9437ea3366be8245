package main

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// TestREADMEFlagTable: the README's flag table lists every flag uproxy has
// (its long name, or -v with --v) and no flag it lacks, so the table cannot
// drift from --help.
func TestREADMEFlagTable(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start := strings.Index(text, "\n## Flags\n")
	if start < 0 {
		t.Fatal("README has no \"## Flags\" section")
	}
	section := text[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	row := regexp.MustCompile("(?m)^\\| `(-[^`]*)`")
	documented := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(section, -1) {
		documented[strings.TrimLeft(m[1], "-")] = true
	}
	var raw rawFlags
	var have []string
	flagSet(&raw).VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		have = append(have, f.Name)
		if !documented[f.Name] {
			t.Errorf("flag --%s is not in the README's flag table", f.Name)
		}
	})
	for name := range documented {
		if !slices.Contains(have, name) {
			t.Errorf("the README's flag table lists --%s, which uproxy does not have", name)
		}
	}
}
