#!/usr/bin/env bash
# failure-digest.sh LOG: after a failed `go test -v` run, prints for each
# failed test the last messages it wrote (t.Errorf/t.Logf lines
# "file_test.go:N: ..." and up to 3 continuation lines each, not the uproxy
# log lines the tests dump; a test reports its verdicts at the end), so that
# the end of CI's output says why a test failed: make test-integration
# filters the full log down to RUN/PASS/FAIL and SUMMARY lines.
set -euo pipefail
log="${1:?usage: failure-digest.sh LOG}"
[ -f "$log" ] || exit 0
echo "=== failure digest: the last messages of each failed test in $log ==="
awk -v max="${DIGEST_LINES:-20}" -v width="${DIGEST_WIDTH:-300}" '
	# go test -v heads each test'"'"'s output with "=== RUN|NAME|CONT   name".
	/^=== (RUN|NAME|CONT|PAUSE) +/ { cur = $3; cont = 0; next }
	/^[[:space:]]*--- FAIL: / {
		name = $3
		if (!(name in failed)) { failed[name] = 1; order[nf++] = name }
		cont = 0; next
	}
	/^[[:space:]]*--- (PASS|SKIP): / { cont = 0; next }
	{
		keep = 0
		if ($0 ~ /^[[:space:]]+[A-Za-z0-9_]+\.go:[0-9]+: /) {
			cont = 0
			if ($0 !~ /log tail [(]|uproxy log: /) { keep = 1; cont = 3 }
		} else if (cont > 0 && $0 !~ /^[[:space:]]*\{"level"/) {
			keep = 1; cont--
		} else {
			cont = 0
		}
		if (keep && cur != "") { k = cnt[cur]++; msg[cur, k % max] = $0 }
	}
	END {
		for (i = 0; i < nf; i++) {
			name = order[i]
			print "----- --- FAIL: " name
			n = cnt[name]
			for (k = (n > max ? n - max : 0); k < n; k++) print "  | " substr(msg[name, k % max], 1, width)
		}
	}
' "$log"
