#!/usr/bin/env bash
# failure-digest.sh LOG: after a failed `go test -v` run, prints for each
# "--- FAIL" line the messages its test wrote before it (t.Errorf/t.Logf
# lines "file_test.go:N: ..." and a few of their continuation lines, each
# once, not the uproxy log lines the tests dump), so that the end of CI's output says
# why a test failed: make test-integration filters the full log down to
# RUN/PASS/FAIL and SUMMARY lines.
set -euo pipefail
log="${1:?usage: failure-digest.sh LOG}"
[ -f "$log" ] || exit 0
echo "=== failure digest: the test messages before each --- FAIL in $log ==="
awk -v keep="${DIGEST_WINDOW:-600}" -v max="${DIGEST_LINES:-24}" -v width="${DIGEST_WIDTH:-300}" '
	{ buf[NR % keep] = $0 }
	/^[[:space:]]*--- FAIL: / {
		print "----- " $0
		n = 0; cont = 0
		for (i = NR - keep + 1; i < NR && n < max; i++) {
			if (i < 1) continue
			l = buf[i % keep]
			if (l ~ /^[[:space:]]*(=== |--- )/) { cont = 0; continue }
			if (l ~ /^[[:space:]]+[A-Za-z0-9_]+_test\.go:[0-9]+: /) {
				cont = 0
				if (l ~ /log tail [(]|uproxy log: / || seen[l]++) continue
				print "  | " substr(l, 1, width); n++; cont = 3
			} else if (cont > 0 && l !~ /^[[:space:]]*\{"level"/) {
				print "  | " substr(l, 1, width); n++; cont--
			} else {
				cont = 0
			}
		}
	}
' "$log"
