package reliability

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/uproxy/uproxy/integration/bed"
)

// shells are the names a program uses to run a command line through a
// shell; none may appear as a string in uproxy's production code or in the
// iptables library it runs.
var shells = map[string]bool{
	"sh": true, "bash": true, "dash": true, "zsh": true, "ash": true, "ksh": true, "busybox": true,
	"/bin/sh": true, "/bin/bash": true, "/bin/dash": true, "/usr/bin/sh": true, "/usr/bin/bash": true,
	"/usr/bin/env": true, "SHELL": true,
}

// execFuncs are the ways Go starts a process.
var execFuncs = map[string]bool{
	"exec.Command": true, "exec.CommandContext": true, "os.StartProcess": true,
	"syscall.Exec": true, "syscall.ForkExec": true, "syscall.StartProcess": true, "unix.Exec": true,
}

// TestNoShellRunsIPTables scans the production sources (every non-test Go
// file outside integration/, plus github.com/coreos/go-iptables) for process
// starts and shell names: iptables runs from argument vectors only, so no
// rule text or service name can reach a shell parser. The exec sites found
// are listed in the log. TestShellScannerCatchesShell proves the scanner
// flags a shell when there is one.
func TestNoShellRunsIPTables(t *testing.T) {
	root, err := bed.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dirs := []string{root}
	if out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/coreos/go-iptables").Output(); err == nil {
		dirs = append(dirs, filepath.Join(strings.TrimSpace(string(out)), "iptables"))
	} else {
		t.Errorf("go-iptables source not found (go list -m): %v", err)
	}
	var sites, violations []string
	files := 0
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, path)
			if d.IsDir() {
				if dir == root && (rel == "integration" || rel == ".git" || rel == "bin" || strings.HasPrefix(d.Name(), ".")) && rel != "." {
					return filepath.SkipDir
				}
				return nil
			}
			if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			src, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			files++
			s, v := scanExec(path, src)
			sites = append(sites, s...)
			violations = append(violations, v...)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d production files scanned; process starts (argument vectors):\n  %s", files, strings.Join(sites, "\n  "))
	summary("no-shell", "%d files scanned, %d process-start sites, %d shell references", files, len(sites), len(violations))
	if files < 20 || len(sites) == 0 {
		t.Fatalf("scanned %d files and found %d exec sites: the scan did not cover the sources", files, len(sites))
	}
	for _, v := range violations {
		t.Errorf("shell reference in production code: %s", v)
	}
}

// TestShellScannerCatchesShell feeds the scanner code that runs iptables
// through a shell, in the three shapes it could take.
func TestShellScannerCatchesShell(t *testing.T) {
	tests := map[string]string{
		"exec.Command sh -c": `package x
import "os/exec"
func f(rule string) { exec.Command("sh", "-c", "iptables -A "+rule).Run() }`,
		"exec.Cmd literal with bash": `package x
import "os/exec"
func f() { c := exec.Cmd{Path: "/bin/bash", Args: []string{"bash", "-c", "iptables-restore"}}; _ = c }`,
		"shell name in a constant": `package x
const shell = "/bin/sh"`,
	}
	for name, src := range tests {
		t.Run(name, func(t *testing.T) {
			if _, v := scanExec("x.go", []byte(src)); len(v) == 0 {
				t.Errorf("scanner missed the shell in:\n%s", src)
			}
		})
	}
	if _, v := scanExec("x.go", []byte(`package x
import "os/exec"
func f(rule string) { exec.Command("iptables-restore", "--noflush").Run() }`)); len(v) != 0 {
		t.Errorf("argument vector flagged: %v", v)
	}
}

// scanExec returns the process-start sites of a Go file and its shell
// references (string literals naming a shell), as "file:line: text".
func scanExec(path string, src []byte) (sites, violations []string) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, src, 0)
	if err != nil {
		return nil, []string{path + ": does not parse: " + err.Error()}
	}
	at := func(n ast.Node) string { return fset.Position(n.Pos()).String() }
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CallExpr:
			if sel, ok := n.Fun.(*ast.SelectorExpr); ok {
				if id, ok := sel.X.(*ast.Ident); ok && execFuncs[id.Name+"."+sel.Sel.Name] {
					sites = append(sites, at(n)+": "+id.Name+"."+sel.Sel.Name)
				}
			}
		case *ast.CompositeLit:
			if sel, ok := n.Type.(*ast.SelectorExpr); ok {
				if id, ok := sel.X.(*ast.Ident); ok && id.Name == "exec" && sel.Sel.Name == "Cmd" {
					sites = append(sites, at(n)+": exec.Cmd{}")
				}
			}
		case *ast.BasicLit:
			if n.Kind == token.STRING {
				if s, err := strconv.Unquote(n.Value); err == nil && shells[strings.TrimSpace(s)] {
					violations = append(violations, at(n)+": "+n.Value)
				}
			}
		}
		return true
	})
	return sites, violations
}
