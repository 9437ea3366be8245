package iptables

import (
	"errors"
	"strings"

	"github.com/uproxy/uproxy/svc"
)

// maxCommentLen is below xt_comment's limit of 256 bytes including the NUL.
const maxCommentLen = 240

// commentArg renders a port name as the quoted argument of --comment:
// kube-proxy's "ns/name:port" without the family, which is the table's
// (iptables or ip6tables; parsePortName's caller puts it back).
//
// Names come from the API server (validated DNS labels) or from manifest
// files (not validated), so the text is sanitized, not escaped: every byte
// outside [A-Za-z0-9._/:-] becomes '_'. A name with quotes, spaces, newlines
// or "-j ACCEPT" in it therefore cannot end the quoted string, start a new
// restore line or add options: it stays one harmless token. The result is
// exactly what iptables-save prints back, which the tamper check relies on.
func commentArg(n svc.PortName) string {
	return `"` + sanitizeComment(n.KubeString()) + `"`
}

func sanitizeComment(s string) string {
	if len(s) > maxCommentLen {
		s = s[:maxCommentLen]
	}
	b := []byte(s)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '.', c == '_', c == '/', c == ':', c == '-':
		default:
			b[i] = '_'
		}
	}
	return string(b)
}

// parsePortName turns a comment back into a port name: "ns/name:port" or
// "ns/name", either followed by svc.ExternalSuffix for an External name, of
// family IPv4 (the caller sets the family of the rule's table). Namespaces
// and names cannot contain '/' or ':' (DNS labels), so the first '/' and the
// first ':' after it split it unambiguously.
func parsePortName(c string) (svc.PortName, bool) {
	ns, rest, ok := strings.Cut(c, "/")
	if !ok || ns == "" || rest == "" {
		return svc.PortName{}, false
	}
	name, port, _ := strings.Cut(rest, ":")
	if name == "" {
		return svc.PortName{}, false
	}
	port, external := strings.CutSuffix(port, svc.ExternalSuffix)
	return svc.PortName{Namespace: ns, Name: name, Port: port, External: external}, true
}

var errUnterminated = errors.New("unterminated quote")

// splitArgs splits one iptables-save rule line into arguments the way
// iptables-restore does: whitespace separates, double quotes group, and a
// backslash inside quotes escapes the next character.
func splitArgs(line string) ([]string, error) {
	var (
		args  []string
		cur   strings.Builder
		inArg bool
		quote bool
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			quote = !quote
			inArg = true
		case !quote && (c == ' ' || c == '\t'):
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if quote {
		return nil, errUnterminated
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, nil
}

// argAfter returns the argument following flag, or "".
func argAfter(args []string, flag string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			return args[i+1]
		}
	}
	return ""
}
